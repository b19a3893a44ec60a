"""SPMD agreement: every rank of a group reaches the same verdict before anyone runs a collective that
could hang. In SPMD mode (torchrun) each rank calls the same API with inputs it built itself; a rank
that rejects its input, or inputs that differ between ranks, must raise the same error on every rank
rather than leave the others waiting. The model adapter (generation/spmd.py) and the loading pipeline
(assembly.py) call these; the parallel layers do not.

  fingerprint               a 63-bit digest of what a rank was given
  check_same_on_all_ranks   one small all-gather: same digest everywhere, and nobody rejected its inputs
  fail_together             a block whose exception on any rank is raised on every rank
  validate_token_ids        ids inside the vocabulary (a vocab-parallel embedding would embed others as zeros)
  guard_embedding           the same check for calls that bypass the model (model.model(ids), the embedding)
"""

from __future__ import annotations

import hashlib
import traceback
from contextlib import contextmanager

import torch
import torch.distributed as dist

from .parallel.comm import TPGroup


def fingerprint(*objects) -> int:
    """A 63-bit digest of tensors and plain values, to check that ranks were given the same thing."""
    digest = hashlib.sha256()

    def feed(obj):
        if isinstance(obj, torch.Tensor):
            cpu = obj.detach().to("cpu").contiguous()
            digest.update(repr((tuple(cpu.shape), str(cpu.dtype))).encode())
            digest.update(cpu.reshape(-1).view(torch.uint8).numpy().tobytes() if cpu.numel() else b"")
        elif isinstance(obj, dict):
            for key in sorted(obj, key=str):
                digest.update(str(key).encode())
                feed(obj[key])
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                feed(item)
        elif obj is None or isinstance(obj, (bool, int, float, str, torch.dtype)):
            digest.update(repr(obj).encode())
        elif hasattr(obj, "to_dict"):  # GenerationConfig and similar
            feed(obj.to_dict())
        else:
            # Objects such as streamers or logits processors differ by identity on each rank;
            # only their type is compared.
            digest.update(type(obj).__qualname__.encode())

    for obj in objects:
        feed(obj)
    return int.from_bytes(digest.digest()[:8], "little") >> 1


def check_same_on_all_ranks(value: int, tp: TPGroup, what: str, local_error: str | None = None) -> None:
    """Raise the same ValueError on every rank if ``value`` differs between ranks, or if any rank
    found its own inputs invalid (``local_error``). One small all-gather when all is well."""
    if tp.alone:
        if local_error:
            raise ValueError(local_error)
        return
    mine = torch.tensor([int(local_error is not None), value], dtype=torch.int64, device=tp.device)
    parts = [torch.empty_like(mine) for _ in range(tp.tp_size)]
    dist.all_gather(parts, mine, group=tp.group)
    flags = [int(p[0].item()) for p in parts]
    values = [int(p[1].item()) for p in parts]
    if any(flags):
        # Every rank saw the flags, so every rank joins this second gather of the messages.
        messages: list = [None] * tp.tp_size
        dist.all_gather_object(messages, local_error, group=tp.group)
        rank = flags.index(1)
        raise ValueError(local_error if local_error else f"tp rank {rank} rejected its inputs: {messages[rank]}")
    differing = [r for r, v in enumerate(values) if v != values[0]]
    if differing:
        raise ValueError(
            f"{what} differ across ranks (tp ranks {differing} differ from tp rank 0). In SPMD mode "
            "(torchrun, accelerate launch) every rank must pass the same inputs and arguments; "
            "build them identically on every rank, or broadcast them from rank 0."
        )


class RemoteRankError(RuntimeError):
    """Another rank failed with an exception that cannot be rebuilt here from its message."""


@contextmanager
def fail_together(tp: TPGroup, stage: str):
    """Run a block on every rank and, if it failed on any rank, raise on all of them.

    Without this, a rank whose file is missing raises while the others block forever in
    the next collective. The rank that failed re-raises its own exception; the others raise an
    exception of the same type carrying the failed rank's message and traceback.
    """
    error: BaseException | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
        error = exc
    if not tp.alone:
        report = None if error is None else (type(error), str(error), traceback.format_exc())
        reports: list = [None] * tp.tp_size
        dist.all_gather_object(reports, report, group=tp.group)
        failures = [(rank, r) for rank, r in enumerate(reports) if r is not None]
        if failures and error is None:
            rank, (cls, message, trace) = failures[0]
            text = f"tp rank {rank} failed while {stage}: {message}\n--- traceback from tp rank {rank} ---\n{trace}"
            # The same exception type on every rank, so one except clause works everywhere.
            try:
                remote = cls(text)
            except Exception:  # an exception type whose constructor wants more than a message
                remote = RemoteRankError(f"{cls.__name__}: {text}")
            raise remote
    if error is not None:
        raise error


def validate_token_ids(input_ids, vocab_size: int) -> None:
    if input_ids is None or not torch.is_tensor(input_ids) or input_ids.numel() == 0:
        return
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(
            f"input_ids contains token id {bad}, outside the model's vocabulary [0, {vocab_size}). "
            "Use the tokenizer that belongs to this checkpoint."
        )


def guard_embedding(embedding, tp: TPGroup) -> None:
    """Validate the ids of every call of a vocab-parallel ``embedding``, on every rank together, unless its
    ``check_ids`` is off: the model's forward and generate validate once per call and turn it off meanwhile
    (a check per decode step would cost a host sync per token); calls that bypass them
    (``model.model(ids)``, ``get_input_embeddings()(ids)``) are checked here."""

    def check(module, args):
        # is_compiling first: a compiled step never checks, and does not guard on check_ids
        if torch.compiler.is_compiling() or not module.check_ids or tp.alone or not args:
            return None
        input_ids, error = args[0], None
        try:
            validate_token_ids(input_ids, module.num_embeddings)
        except ValueError as exc:
            error = str(exc)
        check_same_on_all_ranks(fingerprint(input_ids), tp, "The token ids given to the embedding", local_error=error)
        return None

    embedding.register_forward_pre_hook(check)
