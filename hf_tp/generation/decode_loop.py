"""hf_tp's own decode loop: one CUDA-graph replay per token, no host work per token.

Transformers' ``generate`` spends about 2 ms per token on the host around the compiled forward
(logits processors, stopping criteria, cache bookkeeping), a quarter of a token's time for an 8B
model on one H100 (benchmarks/RESULTS.md), and a larger share at tp 2, where the GEMMs halve. For the
requests people send most (greedy or sampling with temperature / top-k / top-p, eos, min and max
new tokens, padded batches, a streamer, repetition penalty, min_p, best-of-n sampling, stop strings,
scores and logits, sliding-window and hybrid models) this module runs the decode itself:

- a Transformers ``StaticCache`` preallocated per (batch, length bucket) and reused (sliding-window layers as
  full-length static ones, masked by the model: compat.static_cache);
- the prompt prefilled eagerly (its shape changes every call);
- the decode step = the model's forward compiled by Inductor (fused kernels; the parallel layers'
  collectives traced as functional collectives) *plus* token selection, eos bookkeeping and the
  buffer updates for the next step, all captured in one CUDA graph; a step is one ``replay()``;
- the host looks at the results only every ``CHECK_EVERY`` steps (to stop once every sequence has
  finished, and to feed a streamer), so up to ``CHECK_EVERY - 1`` steps may run past the end; their
  tokens are discarded and the output equals what ``generate`` returns.

Everything else (beams, custom processors, constraints, flash attention, ...) goes to
Transformers' ``generate`` on the same parallel model; ``plan_request`` returns the reason, which the
caller logs once. docs/generation.md lists both sides. On CPU the same loop runs without compile or
graphs (that is what the CPU tests check against Transformers' generate).
"""

from __future__ import annotations

import contextlib
import logging
import random
import types
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist

from ..compat import (cache_argument_name, default_generation_params, flash_attention, generate_output,
                      logits_process, prepare_generation_config, repetition_penalty_ignores_left_padding,
                      link_shared_length, rewind_static_cache, static_cache, unlink_shared_length,
                      unsupported_cache)
from ..faults import injected_fault
from ..kernels import pdl, persistent_norms, prologue_pass, sampling_topk
from ..kernels.decode_gemm import decode_loop_calls
from . import sort_free

logger = logging.getLogger("hf_tp")

CHECK_EVERY = 8  # steps between host checks: bounds both the overshoot and the streamer's burst size
# At an eos check of a captured loop the host queues the next step before it waits for the "any row unfinished" flag
# (copied to pinned memory), so that the GPU runs that step while the host reads the flag and queues the one after:
# reading it after a full sync left the GPU idle for the read and the next graph launch at every check. The step queued
# ahead is one more past the last eos, as the steps between checks already are. False: the sync at every check.
CHECK_AHEAD = True
LENGTH_BUCKET = 256  # cache lengths are rounded up to this, so nearby requests reuse a captured graph
MAX_SESSIONS = 3  # captured (batch, length) shapes kept; each holds a KV cache and a graph pool
MAX_EOS_IDS = 8  # eos ids live in a fixed-size tensor of the captured graph
SCORE_ROWS = 64  # scores/logits buffers hold max_new_tokens rounded up to this many steps

# A row's argmax over a whole vocabulary is taken in ARGMAX_CHUNKS pieces, then over the pieces' maxima: PyTorch ran
# the one-row argmax over a 128k vocabulary as a single reduce kernel of 27.8 µs per token on an H200 (1 % of a
# tp-2 rank's step; benchmarks/RESULTS.md, 2026-12-04 third session), where the pieces spread over the GPU.
ARGMAX_CHUNKS = 64

# Each step's selection and bookkeeping compiled with the forward's backend (StaticDecoder.advance): greedy
# steps and sampling steps (their random draw kept eager's). On an H200 the compiled sampling selection kept
# 0.91-0.96 of greedy's tok/s at the 1B shape's rank of tp 2, the eager one 0.73-0.86 (benchmarks/RESULTS.md,
# 2026-12-05). Benchmarks flip them to measure the eager forms.
COMPILE_ADVANCE = True
COMPILE_SAMPLING = True
# Sampling over the whole vocabulary (top_k 0 or above the largest candidate count) finds its top-k and top-p
# thresholds by radix select (generation/sort_free.py) instead of sorting the vocabulary. Off: on an H200 it was
# slower than the sort (0.59 against 0.94 of greedy's tok/s, compiled; 2026-12-05), and Inductor 2.11 could not
# compile its selection alone (select_cost.py); the CPU tests check it against Transformers' warpers.
SORT_FREE_SAMPLING = False


def inductor_config_patch(options: dict):
    """A block with ``options`` set in Inductor's config (none: nothing). Inductor reads its config when it
    compiles, and the compiled step's FX-graph cache key includes it, so a block with other options compiles
    its own code."""
    if not options:
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config

    @contextlib.contextmanager
    def block():
        # The reduction choices are installed too: Inductor reads their config entry only once per thread.
        with inductor_config.patch(options), persistent_norms.choosing(options):
            yield

    return block()


def first_argmax(values: torch.Tensor) -> torch.Tensor:
    """``values.argmax(-1)`` for (rows, n): the index of each row's first maximum (a NaN counts as the maximum, as
    in torch.argmax), computed in two steps when ``n`` splits into ARGMAX_CHUNKS pieces of at least 16. Both steps
    keep the first maximum: within a piece (torch.max's index) and among pieces (argmax of their maxima), so the
    result is argmax's, ties and NaNs included."""
    rows, n = values.shape
    if n % ARGMAX_CHUNKS or n < 16 * ARGMAX_CHUNKS:
        return values.argmax(-1)
    piece = n // ARGMAX_CHUNKS
    maxima, inner = values.reshape(rows, ARGMAX_CHUNKS, piece).max(-1)
    best = maxima.argmax(-1, keepdim=True)
    return (best * piece + inner.gather(-1, best)).squeeze(-1)


# Generation-config fields this loop implements; every other field must be at its default.
_HANDLED_FIELDS = {
    "max_length", "max_new_tokens", "min_length", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p",
    "eos_token_id", "pad_token_id", "bos_token_id", "decoder_start_token_id", "use_cache", "num_beams",
    "num_return_sequences", "early_stopping", "length_penalty", "cache_implementation", "compile_config",
    "disable_compile", "transformers_version", "_from_model_config", "cache_config", "max_cache_len",
    "return_dict_in_generate",  # sequences, the cache, and scores / logits when asked; attentions fall back
    "repetition_penalty", "min_p", "output_scores", "output_logits", "stop_strings",
}
# generate() arguments that are not generation-config fields and that this loop handles itself.
_HANDLED_ARGS = {"inputs", "input_ids", "attention_mask", "streamer", "generation_config", "synced_gpus", "tokenizer"}


class Variant(NamedTuple):
    """What the captured step computes besides the forward; one CUDA graph per variant and shape, so a
    plain greedy request runs none of the extra work the others need."""

    do_sample: bool
    penalty: bool  # repetition_penalty != 1: a (batch, vocab) mask of the tokens seen so far
    scores: bool  # output_scores: the processed logits of every step kept in a (steps, batch, vocab) buffer
    logits: bool  # output_logits: the raw logits, likewise
    min_p: bool = False  # sampling with min_p > 0: one more softmax over the vocabulary per step
    # Sampling with 0 < top_k < candidates: the warpers run on the `candidates` largest logits (torch.topk)
    # instead of a sort of the whole vocabulary; 0 = the full sort (top_k off, or too large).
    candidates: int = 0
    # Sampling over the whole vocabulary with a top_k (one above the largest candidate count): the sort-free
    # selection (SORT_FREE_SAMPLING) runs its top-k pass only then.
    whole_top_k: bool = False


# The candidate counts a top-k sampling step may use (one captured graph each). Top-k keeps every token whose
# logit equals the k-th largest, so the count must exceed top_k: the spare room holds such ties, and a tie
# larger than it is detected and reported (_Session.cut_ties).
SAMPLING_CANDIDATES = (64, 256, 1024)
# With TOPK_KERNEL, a CUDA row's top-k candidates come from two Triton launches (hf_tp/kernels/sampling_topk.py:
# the largest of each piece of the vocabulary by radix select, then of those) instead of torch.topk's 28-kernel
# radix select. The same values; equal logits in position order. On an H100 the compiled top_k 50 selection
# took 36 µs of GPU time with them, 66 with torch.topk (benchmarks/RESULTS.md, 2026-12-05 fifteenth session;
# `benchmarks/select_cost.py --topk-kernel 0,1 --profile`).
TOPK_KERNEL = True


def top_candidates(logits: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` largest logits of each row, descending, and their vocabulary positions: ``logits.topk(count)``
    (equal logits may come in another order), by sampling_topk's kernels on CUDA with TOPK_KERNEL."""
    if (TOPK_KERNEL and logits.is_cuda and sampling_topk.plan(logits.shape[-1], count) is not None
            and sampling_topk.available()):
        return torch.ops.hf_tp.sampling_top(logits.float(), count)
    return logits.topk(count, dim=-1)


def sampling_candidates(do_sample: bool, top_k: int) -> int:
    """How many of the largest logits a sampling step with this top_k needs (0: the whole vocabulary)."""
    if not do_sample or top_k <= 0:
        return 0
    return next((count for count in SAMPLING_CANDIDATES if count > top_k), 0)


@dataclass
class DecodeRequest:
    input_ids: torch.Tensor  # (batch, prompt)
    attention_mask: torch.Tensor  # (batch, prompt), 1 = real token
    max_new_tokens: int
    min_new_tokens: int
    eos_token_ids: list[int]
    pad_token_id: int
    do_sample: bool
    temperature: float
    top_k: int  # 0 = off
    top_p: float  # 1.0 = off
    streamer: object | None
    return_dict: bool = False  # return_dict_in_generate: Transformers' output object, not the bare tensor
    repetition_penalty: float = 1.0  # 1.0 = off
    prompt_ignore: torch.Tensor | None = None  # (batch,) left-padding length: those prompt positions are not penalized
    min_p: float = 0.0  # 0.0 = off (sampling only)
    output_scores: bool = False  # only with return_dict
    output_logits: bool = False
    stop_criteria: object | None = None  # Transformers' StopStringCriteria, checked on the host (see generate)

    @property
    def variant(self) -> Variant:
        candidates = sampling_candidates(self.do_sample, self.top_k)
        return Variant(self.do_sample, self.repetition_penalty != 1.0, self.output_scores, self.output_logits,
                       self.do_sample and self.min_p > 0, candidates, self.do_sample and self.top_k > 0 and not candidates)


def _is_default(value, default) -> bool:
    # An empty list or dict is not a default: Transformers raises on bad_words_ids=[], sequence_bias={} and
    # stop_strings=[] (without a tokenizer), and the requests that are no-ops there lose only speed here.
    return value is None or value is False or value == default


def plan_request(model, args: tuple, kwargs: dict) -> tuple[DecodeRequest | None, str | None]:
    """(request, None) when this loop can serve ``generate(*args, **kwargs)`` exactly, else (None, reason).

    Any surprise while reading the request is a reason to leave it to Transformers' generate."""
    try:
        return _plan_request(model, args, kwargs)
    except Exception as exc:  # noqa: BLE001 - a request we do not understand is not ours to serve
        return None, f"request not understood by the loop ({type(exc).__name__}: {exc})"


def _plan_request(model, args: tuple, kwargs: dict) -> tuple[DecodeRequest | None, str | None]:
    if len(args) > 1:
        return None, "positional generate() arguments after the inputs"
    input_ids = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs"))
    if not torch.is_tensor(input_ids) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        return None, "inputs other than a 2-D tensor of token ids"
    reason = unsupported_cache(model)
    if reason:
        return None, reason
    if flash_attention(model):
        # Its mask would not say which static-cache positions are filled yet (compat.flash_attention).
        return None, "flash attention over the loop's static cache"
    # Explicit None values count: generate(eos_token_id=None) overrides the model's eos in Transformers.
    others = {k: v for k, v in kwargs.items() if k not in _HANDLED_ARGS}
    user_config = kwargs.get("generation_config")
    config, model_kwargs = prepare_generation_config(model, user_config, others)
    # hf_tp's own per-step hooks (the handle's cancel criterion under beam search) are not the user's request
    extra = sorted(k for k, v in model_kwargs.items() if v is not None and k not in _HANDLED_ARGS
                   and not (k == "stopping_criteria" and all(getattr(c, "hf_tp_internal", False) for c in v)))
    defaults = default_generation_params(config)
    unhandled = extra + sorted(field for field, value in config.to_dict().items()
                               if field not in _HANDLED_FIELDS and not _is_default(value, defaults.get(field)))
    if config.num_beams not in (None, 1):
        unhandled.append(f"num_beams={config.num_beams}")
    copies = config.num_return_sequences or 1
    if copies != 1 and not config.do_sample:
        unhandled.append(f"num_return_sequences={copies} without sampling")  # Transformers' generate raises
    if config.use_cache is False:
        unhandled.append("use_cache=False")
    if config.cache_implementation not in (None, "static"):
        unhandled.append(f"cache_implementation={config.cache_implementation}")
    if config.do_sample and not (config.temperature or 0) > 0:
        unhandled.append(f"temperature={config.temperature}")
    eos = [] if config.eos_token_id is None else [int(e) for e in torch.as_tensor(config.eos_token_id).flatten()]
    if len(eos) > MAX_EOS_IDS:
        unhandled.append(f"{len(eos)} eos ids (the loop takes up to {MAX_EOS_IDS})")
    stop_criteria = None
    if config.stop_strings is not None:
        tokenizer = kwargs.get("tokenizer")
        if tokenizer is None:
            unhandled.append("stop_strings without tokenizer")  # Transformers' generate raises
        else:
            stop_criteria = _stop_string_criteria(tokenizer, config.stop_strings)
    want_scores = bool(config.return_dict_in_generate and config.output_scores)
    want_logits = bool(config.return_dict_in_generate and config.output_logits)
    if stop_criteria is not None and (want_scores or want_logits) and input_ids.shape[0] * copies > 1:
        # A row that meets a stop string runs on for up to CHECK_EVERY - 1 steps before the host sees it:
        # its tokens are then replaced, but its scores would not be Transformers' (which fed it padding).
        unhandled.append("stop_strings with output_scores/output_logits and more than one row")
    if unhandled:
        return None, ",".join(unhandled)

    prompt = input_ids.shape[1]
    new_tokens = _new_tokens(model, config, kwargs, user_config, prompt)
    if new_tokens <= 0 or prompt == 0:
        return None, "no tokens to generate"  # Transformers' generate says what is wrong
    pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else 0)
    mask = kwargs.get("attention_mask")
    if mask is None:
        if config.pad_token_id is not None and bool((input_ids == config.pad_token_id).any()):
            return None, "padded inputs without attention_mask"  # Transformers infers the mask; leave it to it
        mask = torch.ones_like(input_ids)
    min_new = config.min_new_tokens if config.min_new_tokens is not None else max(0, (config.min_length or 0) - prompt)
    invalid = _rejected_by_transformers(config, prompt, eos)
    if invalid:
        return None, invalid  # Transformers' generate raises it
    mask = mask.to(input_ids.device, torch.long)
    if copies > 1:  # best-of-n: each prompt repeated n times in a row, as Transformers expands its inputs
        input_ids, mask = input_ids.repeat_interleave(copies, dim=0), mask.repeat_interleave(copies, dim=0)
    penalty = 1.0 if config.repetition_penalty is None else float(config.repetition_penalty)
    return DecodeRequest(
        input_ids=input_ids, attention_mask=mask, max_new_tokens=int(new_tokens),
        min_new_tokens=int(min_new), eos_token_ids=eos, pad_token_id=int(pad), do_sample=bool(config.do_sample),
        temperature=float(config.temperature or 1.0), top_k=int(config.top_k or 0),
        top_p=1.0 if config.top_p is None else float(config.top_p),  # 0.0 is a setting (keep only the best), not "off"
        streamer=kwargs.get("streamer"), return_dict=bool(config.return_dict_in_generate),
        repetition_penalty=penalty,
        # Transformers' RepetitionPenaltyLogitsProcessor(prompt_ignore_length=...): the positions before each
        # row's first attended token (its left padding) do not count as seen, in the releases that pass it.
        prompt_ignore=_prompt_ignore(mask) if penalty != 1.0 else None,
        min_p=float(config.min_p) if config.do_sample and config.min_p is not None else 0.0,
        output_scores=want_scores, output_logits=want_logits, stop_criteria=stop_criteria,
    ), None


# (tokenizer key, size, stop strings) -> (tokenizer, criteria); the tokenizer is held so that an id() key
# cannot be reused by another object while its entry lives.
_STOP_CRITERIA: OrderedDict = OrderedDict()


def _prompt_ignore(mask: torch.Tensor) -> torch.Tensor:
    """Per row, how many leading prompt positions the repetition penalty leaves out: the left padding where the
    installed Transformers does so, else none."""
    if repetition_penalty_ignores_left_padding():
        return (mask != 0).int().argmax(dim=1)
    return torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device)


def _stop_string_criteria(tokenizer, stop_strings):
    """Transformers' StopStringCriteria, kept across calls: building one reads the whole vocabulary (0.6 to 0.8 s
    for a 128k vocabulary on the 2-core development host; generate pays it at every call), and a chat sends the
    same stop strings every turn. Keyed on the tokenizer's class, name_or_path and size (added tokens make a new
    one), not on the object: the handle's workers get a fresh copy of the tokenizer with every call. A tokenizer
    with no name_or_path is keyed on the object itself."""
    from transformers import StopStringCriteria

    strings = (stop_strings,) if isinstance(stop_strings, str) else tuple(stop_strings)
    name = getattr(tokenizer, "name_or_path", "") or ""
    who = (type(tokenizer).__name__, name) if name else id(tokenizer)
    key = (who, len(tokenizer), strings)
    if key not in _STOP_CRITERIA:
        if len(_STOP_CRITERIA) >= 8:
            _STOP_CRITERIA.popitem(last=False)
        _STOP_CRITERIA[key] = (tokenizer, StopStringCriteria(stop_strings=stop_strings, tokenizer=tokenizer))
    _STOP_CRITERIA.move_to_end(key)
    return _STOP_CRITERIA[key][1]


def _rejected_by_transformers(config, prompt: int, eos: list[int]) -> str | None:
    """The error Transformers' generate raises for these settings, or None. Built the way its
    _get_logits_processor builds the processors this loop replaces, so their own checks run
    (top_k=-1, top_k=2.0, temperature=2 (an int), top_p<0, min_new_tokens=3.0, ...): a request
    Transformers refuses must not get an answer here."""
    lp = logits_process()

    try:
        if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
            lp.RepetitionPenaltyLogitsProcessor(config.repetition_penalty)
        if eos:
            eos_ids = torch.tensor(eos)
            min_length = config.min_new_tokens + prompt if config.min_new_tokens is not None else config.min_length
            if min_length is not None and min_length > 0:
                lp.MinLengthLogitsProcessor(min_length, eos_ids)
            if config.min_new_tokens is not None and config.min_new_tokens > 0:
                lp.MinNewTokensLengthLogitsProcessor(prompt, config.min_new_tokens, eos_ids)
        if config.do_sample:
            if config.temperature is not None and config.temperature != 1.0:
                lp.TemperatureLogitsWarper(config.temperature)
            if config.top_k is not None and config.top_k != 0:
                lp.TopKLogitsWarper(top_k=config.top_k)
            if config.top_p is not None and config.top_p < 1.0:
                lp.TopPLogitsWarper(top_p=config.top_p)
            if config.min_p is not None:
                lp.MinPLogitsWarper(min_p=config.min_p)
    except ValueError as exc:
        return f"invalid setting ({exc})"
    return None


def _new_tokens(model, config, kwargs: dict, user_config, prompt: int) -> int:
    """How many tokens Transformers' generate would produce at most (its _prepare_generated_length)."""
    if config.max_new_tokens is not None:
        return config.max_new_tokens
    default_length = (kwargs.get("max_length") is None and getattr(user_config, "max_length", None) is None
                      and model.generation_config.max_length is None)
    if not default_length:
        return config.max_length - prompt
    # Nobody set a length: 20 new tokens, within the model's context.
    length = config.max_length + prompt
    limit = getattr(model.config, "max_position_embeddings", None)
    return (min(length, limit) if limit is not None else length) - prompt


class _Session:
    """Static buffers, KV cache and (on CUDA) the captured decode steps for one (batch, length) shape."""

    def __init__(self, decoder: "StaticDecoder", batch: int, length: int):
        device = decoder.device
        self.decoder, self.length, self.batch = decoder, length, batch
        long = dict(dtype=torch.long, device=device)
        # The positions the cache holds, one tensor for every layer, advanced here once per forward (with
        # Transformers' layers each layer advances its own: one more kernel per layer per step; compat.static_cache)
        self.cache_length = torch.zeros((), **long)
        self.cache = static_cache(decoder.model.config.get_text_config(decoder=True), length, self.cache_length)
        self.shared_length = link_shared_length(self.cache, self.cache_length)
        fp32 = dict(dtype=torch.float32, device=device)
        self.tokens = torch.zeros(batch, 1, **long)
        self.position_ids = torch.zeros(batch, 1, **long)
        self.attention_mask = torch.ones(batch, length, **long)
        self.out = torch.zeros(batch, length, **long)  # generated tokens, column = step
        self.step = torch.zeros((), **long)
        self.unfinished = torch.ones(batch, dtype=torch.bool, device=device)
        # Per-request settings live in tensors so one captured graph serves every request of this shape.
        self.min_new = torch.zeros((), **long)
        self.pad = torch.zeros((), **long)
        self.eos = torch.full((MAX_EOS_IDS,), -1, **long)  # -1 never matches a token
        self.temperature = torch.ones((), **fp32)
        self.top_k = torch.zeros((), **long)
        self.top_p_rest = torch.full((), -1.0, **fp32)  # 1 - top_p as Transformers rounds it; -1 = top-p off
        self.min_p = torch.zeros((), **fp32)  # 0 = off: no probability is below 0 x the best one
        self.penalty = torch.ones((), **fp32)
        # Sized from the first logits (the gathered vocabulary): token ids, and which of them are eos.
        self.vocab_positions: torch.Tensor | None = None
        self.eos_in_vocab: torch.Tensor | None = None
        # Allocated on the first request that needs them, then kept (the graphs that use them point at them).
        self.seen: torch.Tensor | None = None  # (batch, vocab) bool: in the prompt or generated so far
        self.scores: torch.Tensor | None = None  # (rows, batch, vocab) fp32, row = step
        self.raw_logits: torch.Tensor | None = None
        self.variant = Variant(False, False, False, False)
        # Set by a top-k sampling step whose candidates ended inside a tie at the k-th logit (see _select).
        self.cut_ties = torch.zeros((), dtype=torch.bool, device=device)
        self._last_candidate: dict[int, torch.Tensor] = {}  # width -> mask of its last position
        # One per Variant; None: warmed up but nothing captured (CPU, where only tests warm up).
        self.graphs: dict[Variant, torch.cuda.CUDAGraph | None] = {}
        self._unfinished_host: tuple[torch.Tensor, torch.cuda.Event] | None = None  # see unfinished_ahead

    def unfinished_ahead(self) -> bool:
        """Whether any row is unfinished after the steps queued so far, read while one more step runs (CHECK_AHEAD):
        the flag goes to pinned host memory behind an event, the next step is queued, then the host waits for the event
        only. The caller counts the step it queued."""
        if self._unfinished_host is None:
            self._unfinished_host = (torch.empty(1, dtype=torch.bool, pin_memory=True), torch.cuda.Event())
        flag, ready = self._unfinished_host
        flag.copy_(self.unfinished.any().view(1), non_blocking=True)
        ready.record()
        self.run_step()
        ready.synchronize()
        return bool(flag[0])

    # -- the step: forward + selection + bookkeeping; captured whole on CUDA -------------------
    def _keep(self, buffer: torch.Tensor, values: torch.Tensor) -> None:
        # Past the buffer's last row (only warm-up and capture steps go there) the last row is overwritten.
        row = self.step.clamp(max=buffer.shape[0] - 1).view(1)
        buffer.index_copy_(0, row, values.unsqueeze(0))

    def _select(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token from the last position's logits, with Transformers' processors in Transformers'
        order (its _get_logits_processor): repetition penalty, min length, then for sampling temperature,
        top-k, top-p, min-p. No host syncs, no data-dependent shapes."""
        logits = logits.float()
        variant = self.variant
        if variant.logits:
            self._keep(self.raw_logits, logits)
        if variant.penalty:  # RepetitionPenaltyLogitsProcessor: seen tokens' logits divided (>= 0) or multiplied (< 0)
            penalized = torch.where(logits < 0, logits * self.penalty, logits / self.penalty)
            logits = torch.where(self.seen, penalized, logits)
        # min_new_tokens: eos may not be chosen before that many tokens exist (Transformers' MinNewTokens).
        logits = logits.masked_fill(self.eos_in_vocab & (self.step < self.min_new), float("-inf"))
        if not variant.do_sample:
            if variant.scores:
                self._keep(self.scores, logits)
            return first_argmax(logits)
        # The warpers on one ascending order, with Transformers' formulas (its TopPLogitsWarper sorts ascending
        # too): the whole vocabulary sorted, or, under top-k, only the largest logits (a 128k-entry sort costs
        # ~100 us of GPU time per step; topk of 64 a fraction of it). Tokens outside the candidates are the
        # ones top-k removes, so both give the same distribution.
        logits = logits / self.temperature
        if SORT_FREE_SAMPLING and not (variant.candidates and variant.candidates < logits.shape[-1]):
            return self._sample_sort_free(logits)
        if variant.candidates and variant.candidates < logits.shape[-1]:
            values, order = top_candidates(logits, variant.candidates)  # descending
            sorted_logits, order = values.flip(-1), order.flip(-1)
        else:
            sorted_logits, order = logits.sort(dim=-1)
        width = sorted_logits.shape[-1]
        last = self._last_position(width)  # after the ascending order the best token is last: every filter keeps it
        # Top-k by value, as TopKLogitsWarper: every token tied with the k-th largest logit stays (ties are
        # common with bf16 logits; a cut by rank would drop some of them).
        kth = (width - self.top_k.clamp(1, width)).view(1, 1).expand(logits.shape[0], 1)
        kth_value = sorted_logits.gather(-1, kth)
        if width < logits.shape[-1]:
            # The smallest candidate ties with the k-th logit: more tokens of that value may lie outside the
            # candidates, and top-k would have kept them. Reported after the call (StaticDecoder.generate).
            self.cut_ties |= (sorted_logits[..., 0:1] >= kth_value).any()
        remove = (sorted_logits < kth_value) & (self.top_k > 0)
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        # Every softmax below is exp(x - best) over a sum: in ascending order the best logit is the last, so
        # softmax's max is read, not reduced, and the top-p cumulative sum ends with softmax's sum. Over a whole
        # vocabulary this saves the GPU up to six reductions of the row per step (three softmaxes, two each).
        weights = (sorted_logits - sorted_logits[..., -1:]).exp()
        mass = weights.cumsum(-1)
        # Top-p: drop the tokens whose mass, with every worse token's, is at most 1 - top_p.
        remove = (mass / mass[..., -1:] <= self.top_p_rest) & ~last
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        weights = weights.masked_fill(remove, 0.0)
        if variant.min_p:
            # MinPLogitsWarper: drop the tokens less likely than min_p x the best one (the last, weight 1): the
            # probability ratio is the weight ratio, whatever the sum.
            remove = (weights < self.min_p) & ~last
            sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
            weights = weights.masked_fill(remove, 0.0)
        if variant.scores:  # the warped logits, back in vocabulary order (-inf outside the candidates)
            self._keep(self.scores, torch.full_like(logits, float("-inf")).scatter_(-1, order, sorted_logits))
        # Exponential race (Gumbel-max): argmax(p / E), E ~ Exp(1), is a sample of p, and p's sum does not
        # change the argmax; unlike torch.multinomial it needs no host sync and records into a CUDA graph.
        choice = first_argmax(weights / torch.empty_like(weights).exponential_())
        return order.gather(-1, choice.unsqueeze(-1)).squeeze(-1)

    def _sample_sort_free(self, logits: torch.Tensor) -> torch.Tensor:
        """_select's warpers and draw over the whole vocabulary in vocabulary order: top-k and top-p thresholds
        by radix select (sort_free.py), then min-p, then the exponential race; the same distribution as the
        sorted form (a seed draws other tokens: the race runs over another order)."""
        if self.variant.whole_top_k:
            logits = logits.masked_fill(~sort_free.top_k_mask(logits, self.top_k), float("-inf"))
        logits = logits.masked_fill(~sort_free.top_p_mask(logits, self.top_p_rest), float("-inf"))
        if self.variant.min_p:  # MinPLogitsWarper: drop the tokens less likely than min_p x the best one
            probs = logits.softmax(-1)
            logits = logits.masked_fill(probs < self.min_p * probs.amax(-1, keepdim=True), float("-inf"))
        if self.variant.scores:
            self._keep(self.scores, logits)
        probs = logits.softmax(-1)
        return first_argmax(probs / torch.empty_like(probs).exponential_())

    def _last_position(self, width: int) -> torch.Tensor:
        """(width,) mask of the last position; made on the first (uncaptured) step of a shape, then reused."""
        if width == self.vocab_positions.numel():
            return self.best_position
        if width not in self._last_candidate:
            self._last_candidate[width] = torch.arange(width, device=self.vocab_positions.device) == width - 1
        return self._last_candidate[width]

    def _advance(self, logits: torch.Tensor) -> None:
        """Record the token chosen from ``logits`` (batch, vocab) and set up the next step's inputs."""
        chosen = torch.where(self.unfinished, self._select(logits), self.pad)
        self.out.index_copy_(1, self.step.view(1), chosen.view(-1, 1))
        if self.variant.penalty:  # finished rows' padding counts too: Transformers appends it to input_ids
            self.seen.scatter_(1, chosen.view(-1, 1), True)
        self.unfinished &= ~(chosen.unsqueeze(1) == self.eos.unsqueeze(0)).any(-1)
        self.tokens.copy_(chosen.view(-1, 1))
        self.position_ids.add_(1)
        self.step.add_(1)

    def _decode_step(self, forward) -> None:
        logits = forward(self.tokens, self.position_ids, self.attention_mask, self.cache)
        if self.shared_length:
            self.cache_length.add_(1)
        if forward == self.decoder.eager_forward:
            self._advance(logits)
        else:
            self.decoder.advance(self, logits)

    # -- per request --------------------------------------------------------------------------
    def prepare(self, request: DecodeRequest, vocab: int) -> None:
        """Allocate the buffers ``request`` needs that this session lacks (before any capture: a graph
        keeps pointing at the tensors it was recorded with, so a buffer that grows drops its graphs)."""
        device = self.decoder.device
        if request.repetition_penalty != 1.0 and self.seen is None:
            self.seen = torch.zeros(self.batch, vocab, dtype=torch.bool, device=device)
        rows = min(self.length, -(-request.max_new_tokens // SCORE_ROWS) * SCORE_ROWS)
        for name, wanted in (("scores", request.output_scores), ("raw_logits", request.output_logits)):
            buffer = getattr(self, name)
            if wanted and (buffer is None or buffer.shape[0] < request.max_new_tokens):
                setattr(self, name, torch.zeros(rows, self.batch, vocab, dtype=torch.float32, device=device))
                flag = "scores" if name == "scores" else "logits"
                for variant in [v for v in self.graphs if getattr(v, flag)]:
                    del self.graphs[variant]

    def start(self, request: DecodeRequest) -> None:
        """Reset the buffers for ``request`` and prefill its prompt (eagerly: its shape varies)."""
        prompt = request.input_ids.shape[1]
        if self.shared_length:  # the last call returned the cache unlinked (compat.unlink_shared_length)
            link_shared_length(self.cache, self.cache_length)
        self.cache.reset()
        self.out.zero_()
        self.step.zero_()
        self.unfinished.fill_(True)
        self.attention_mask.fill_(1)
        self.attention_mask[:, :prompt].copy_(request.attention_mask)
        eos = request.eos_token_ids  # plan_request refused more than MAX_EOS_IDS
        self.eos.fill_(-1)
        if eos:
            self.eos[: len(eos)].copy_(torch.tensor(eos))
        self.min_new.fill_(request.min_new_tokens)
        self.pad.fill_(request.pad_token_id)
        self.temperature.fill_(request.temperature)
        self.top_k.fill_(request.top_k)
        # Computed in double, then rounded to fp32, as Transformers' `cumulative_probs <= (1 - self.top_p)`.
        self.top_p_rest.fill_(1 - request.top_p if request.top_p < 1.0 else -1.0)
        self.min_p.fill_(request.min_p)
        self.penalty.fill_(request.repetition_penalty)
        self.variant = request.variant
        self.cut_ties.zero_()
        # Positions as Transformers computes them for padded prompts: count real tokens only.
        positions = (request.attention_mask.cumsum(-1) - 1).masked_fill(request.attention_mask == 0, 0)
        logits = self.decoder.prefill_forward(request.input_ids, positions, self.attention_mask, self.cache)
        if self.shared_length:
            self.cache_length.add_(prompt)
        vocab = logits.shape[-1]
        if self.vocab_positions is None or self.vocab_positions.numel() != vocab:
            self.vocab_positions = torch.arange(vocab, device=logits.device)
            self.best_position = self.vocab_positions == vocab - 1
            self.eos_in_vocab = torch.zeros(vocab, dtype=torch.bool, device=logits.device)
        self.eos_in_vocab.copy_(torch.isin(self.vocab_positions, self.eos))  # per request, not per step
        self.prepare(request, vocab)
        if self.variant.penalty:
            # The prompt's tokens, but not its left padding (Transformers' prompt_ignore_length).
            kept = torch.arange(prompt, device=logits.device).unsqueeze(0) >= request.prompt_ignore.unsqueeze(1)
            # Ids past the LM head's vocabulary (an embedding larger than the head) land in one extra column that
            # is dropped, as RepetitionPenaltyLogitsProcessor does: they can never be generated.
            counts = torch.zeros(self.batch, vocab + 1, dtype=torch.int32, device=logits.device)
            counts.scatter_add_(1, request.input_ids.clamp(max=vocab), kept.int())
            self.seen.copy_(counts[:, :vocab] > 0)
        self.position_ids.copy_(positions[:, -1:])
        self._advance(logits)

    def run_step(self) -> None:
        graph = self.graphs.get(self.variant)
        if graph is not None:
            graph.replay()
        else:  # CPU, or a shape left uncompiled: the same step, eagerly
            self._decode_step(self.decoder.eager_forward)

    def release_outputs(self, steps: int) -> tuple[tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        """Copies of the first ``steps`` rows of the scores and logits buffers (the next call reuses them)."""
        def rows(buffer, wanted):
            return tuple(buffer[:steps].clone().unbind(0)) if wanted else None

        return rows(self.scores, self.variant.scores), rows(self.raw_logits, self.variant.logits)

    def warm_up(self, steps: int = 3) -> bool:
        """Run ``steps`` compiled decode steps (compile, autotune, and let NCCL set up its buffers outside
        the capture); True when the compiled step ran. Advances the request: the caller restarts it.

        Every rank runs the same collectives in the same order whatever its compile does: a rank whose
        compile fails runs that step, and the rest, eagerly, which makes the same collectives (Dynamo and
        Inductor fail while tracing or compiling, before the compiled code runs any of them)."""
        compiled = True
        on_cuda = self.decoder.device.type == "cuda"
        stream = torch.cuda.Stream() if on_cuda else None
        if on_cuda:
            stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream) if on_cuda else contextlib.nullcontext():
            for _ in range(steps):
                if compiled:
                    try:
                        self._decode_step(self.decoder.compiled_forward)
                        continue
                    except Exception as exc:  # noqa: BLE001 - any compile failure: eager, then agree
                        compiled = False
                        logger.warning("hf_tp: the decode step could not be compiled (%s: %s)", type(exc).__name__,
                                       str(exc).splitlines()[0][:200] if str(exc) else "")
                self._decode_step(self.decoder.eager_forward)
        if on_cuda:
            torch.cuda.current_stream().wait_stream(stream)
        return compiled

    def capture(self) -> None:
        """Record one compiled decode step into a CUDA graph for the current variant. Recording runs
        no collective (NCCL kernels are only enqueued into the graph), so a rank that fails here leaves
        the others waiting for nothing."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._decode_step(self.decoder.compiled_forward)
        self.graphs[self.variant] = graph


def _greedy_advance(session: _Session, logits: torch.Tensor) -> None:
    session._advance(logits)


def _sample_advance(session: _Session, logits: torch.Tensor) -> None:
    session._advance(logits)


# One function (one code object) per kind: Dynamo keeps its compiled graphs, and counts them against its
# recompile limit, per code object, so sampling's variants do not use up greedy's.
_ADVANCE_BY_KIND = {"greedy": _greedy_advance, "sample": _sample_advance}


def own_code(function):
    """``function`` over a copy of its code object. Dynamo keeps compiled graphs, and counts them against its
    recompile limit (8), per code object: with one copy per decoder, each model's shapes count for that model
    alone. Shared, the compilations of every model a process loads would add up, and past eight of them (the
    ninth model of one shape each, in a notebook that loads or reloads one model after another) a model would
    decode without CUDA graphs. A decoder's copy, and the graphs kept on it, go when the decoder goes."""
    return types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                              function.__defaults__, function.__closure__)


class StaticDecoder:
    """The decode loop of one parallel model; kept on the model, sessions reused across calls."""

    def __init__(self, model, tp, use_graphs: bool, config=None):
        from ..config import TPConfig

        self.model, self.tp, self.device, self.use_graphs = model, tp, tp.device, use_graphs
        self.config = config or TPConfig()  # the all-reduce options of the compiled step
        self._pdl = self.device.type == "cuda" and bool(self.config.pdl)  # TPConfig.pdl (decided at load)
        self._inductor_options = self.inductor_options()
        self.cache_argument = cache_argument_name(model)
        self.sessions: OrderedDict[tuple[int, int], _Session] = OrderedDict()
        self._compiled = None
        self._compiled_prefill = None  # TPConfig.compile_prefill: the prompt's forward, compiled with dynamic shapes
        # Eager unless asked for and where the step compiles (CUDA alone or over NCCL; CPU for tests): a compiled
        # collective over gloo on CUDA crashes both ranks (graphs_enabled). Also set when its compile failed.
        self._prefill_eager = not (self.config.compile_prefill and (self.device.type != "cuda" or graphs_enabled(tp)))
        self._compiled_advance: dict[str, object] = {}  # "greedy" / "sample": the selection and bookkeeping, compiled
        self._advance_failed: set[str] = set()  # the kinds whose compile failed: eager for this decoder
        self._one_shot = False  # the compiled forward's all-reduces use symmetric memory
        self._compiled_shapes: set[tuple[int, int]] = set()
        self._warned_limit = False
        # A list to time the decode steps into (hf-tp bench): each CUDA generate call appends (start, end, steps),
        # CUDA events around its steps after the prefill's token. Timing them on the GPU keeps the eager prefill,
        # whose host time drifts by tens of ms, out of the decode rate. None: nothing recorded.
        self.decode_timings: list | None = None
        if use_graphs:
            from ..parallel.teardown import register_graph_owner

            register_graph_owner(self)  # its graphs must go before the process group does

    def inductor_options(self) -> dict:
        """Inductor options of the compiled step, from TPConfig: PDL for its kernels (TPConfig.pdl), combo
        kernels (TPConfig.combo_kernels), the GEMM fusion passes (TPConfig.gemm_epilogues, gemm_norms,
        gemm_prologues) and the reduction choices (TPConfig.persistent_norms). Set in Inductor's config around
        each generate call, compiling and capturing included: the form in which PDL and combo kernels were
        measured (benchmarks/RESULTS.md, 2026-12-04)."""
        options = dict(pdl.inductor_options(self._pdl))
        if self.device.type == "cuda" and self.config.combo_kernels:
            options["combo_kernels"] = True
        if self.device.type == "cuda" and self.config.decode_gemm == "triton":
            options.update(prologue_pass.inductor_options(bool(self.config.gemm_prologues),
                                                          bool(self.config.gemm_epilogues),
                                                          bool(self.config.gemm_norms)))
        if self.device.type == "cuda" and self.config.persistent_norms:
            options.update(persistent_norms.inductor_options(True))
        return options

    def advance(self, session: "_Session", logits: torch.Tensor) -> None:
        """``session._advance(logits)`` after the compiled forward, compiled too, so that the selection and the
        bookkeeping (for greedy: the argmax, the eos and min-length masks, the token, position and step updates,
        about fifteen small kernels, each a launch and a gap in the captured step; for sampling twice as many:
        temperature, top-k, the softmax and cumulative sum of top-p, min-p, the exponential race) become a few
        fused kernels. The same values as eager: greedy's ops are exact (comparisons, argmax, copies, integer
        adds); sampling's softmax and sums may round differently in the last bit, and its random draw stays
        eager's (Inductor's ``fallback_random``: the generator's own kernel, so a seed gives the tokens it gives
        without compiling, captured graphs included). A compile that fails (before anything runs) leaves that
        kind of step eager for this decoder; it runs no collective, so each rank may decide alone."""
        kind = "sample" if session.variant.do_sample else "greedy"
        if (kind in self._advance_failed or not COMPILE_ADVANCE
                or (kind == "sample" and not COMPILE_SAMPLING)):
            session._advance(logits)
            return
        compiled = self._compiled_advance.get(kind)
        if compiled is None:
            if self.device.type == "cuda":  # inductor; sampling's random draw as eager's (see above)
                options = dict(backend="inductor", options={"fallback_random": True} if kind == "sample" else None)
            else:  # CPU: traced only, as the forward
                options = dict(backend="eager")
            compiled = self._compiled_advance[kind] = torch.compile(own_code(_ADVANCE_BY_KIND[kind]),
                                                                    fullgraph=True, dynamic=False, **options)
        try:
            compiled(session, logits)
        except Exception as exc:  # noqa: BLE001 - a compile failure: stay correct, lose a little speed
            if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise  # a recompile inside the capture: the capture's own handling decides
            self._advance_failed.add(kind)
            logger.warning("hf_tp: the decode step's %s selection could not be compiled (%s: %s)", kind,
                           type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
            session._advance(logits)

    def release_graphs(self) -> None:
        """Drop every captured graph (and the sessions' caches). NCCL cannot destroy a communicator
        whose kernels a live graph still holds; later requests capture again."""
        for session in self.sessions.values():
            session.graphs.clear()
        self.sessions.clear()

    def eager_forward(self, input_ids, position_ids, attention_mask, cache) -> torch.Tensor:
        """Last position's logits, (batch, vocab)."""
        out = self.model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                         use_cache=True, logits_to_keep=1, **{self.cache_argument: cache})
        return out.logits[:, -1, :]

    def prefill_forward(self, input_ids, position_ids, attention_mask, cache) -> torch.Tensor:
        """The prompt's forward (``eager_forward``): compiled where TPConfig.compile_prefill is on and the step
        compiles, with the prompt's length and batch dynamic, and its own code object (its own recompile limit; past it
        Dynamo runs the forward eagerly). Whole graph or nothing (``fullgraph``): Dynamo and Inductor fail while
        tracing or compiling, before the compiled code runs a collective, so a rank whose compile fails runs this
        prefill, and its later ones, eagerly and makes the same collectives as the others."""
        if self._prefill_eager:
            return self.eager_forward(input_ids, position_ids, attention_mask, cache)
        if self._compiled_prefill is None:
            backend = "inductor" if self.device.type == "cuda" else "eager"  # CPU: traced only (tests)
            forward = types.MethodType(own_code(type(self).eager_forward), self)
            # Dynamic where prompts differ (their length and batch), static elsewhere: the weights' shapes stay
            # constants of the graph (the FP8 layers decide their kernel form from them while tracing).
            self._compiled_prefill = torch.compile(forward, fullgraph=True, dynamic=None, backend=backend)
        for tensor in (input_ids, position_ids):
            torch._dynamo.maybe_mark_dynamic(tensor, 0)
            torch._dynamo.maybe_mark_dynamic(tensor, 1)
        try:
            if injected_fault(self.tp.tp_rank, "compile_prefill") == "raise":  # test hook: one rank fails
                raise RuntimeError(f"injected prefill compile failure on tp rank {self.tp.tp_rank}")
            return self._compiled_prefill(input_ids, position_ids, attention_mask, cache)
        except Exception as exc:  # noqa: BLE001 - a compile failure: this model's prefills stay eager
            self._prefill_eager = True
            logger.warning("hf_tp: the prefill could not be compiled (%s: %s); it runs eagerly", type(exc).__name__,
                           str(exc).splitlines()[0][:200] if str(exc) else "")
            return self.eager_forward(input_ids, position_ids, attention_mask, cache)

    def compiled_forward(self, input_ids, position_ids, attention_mask, cache) -> torch.Tensor:
        """The forward as captured into the graph (used only by capture; uncaptured steps run eagerly)."""
        if injected_fault(self.tp.tp_rank, "compile") == "raise":  # test hook: a compile that fails on one rank
            raise RuntimeError(f"injected compile failure on tp rank {self.tp.tp_rank}")
        if self._compiled is None:
            # No "reduce-overhead": the whole step (with selection and bookkeeping) is captured below.
            from ..parallel.comm import decode_compile_options

            options = decode_compile_options(self.tp, self.config.allreduce, self.config.one_shot_max_kb)
            self._one_shot = bool(options)
            # Only tests warm the step up on CPU (there is no graph to capture): Dynamo traces it whole,
            # as on CUDA, and runs it without Inductor's C++ build.
            backend = "inductor" if self.device.type == "cuda" else "eager"
            forward = types.MethodType(own_code(type(self).eager_forward), self)  # this model's own limit
            self._compiled = torch.compile(forward, fullgraph=True, dynamic=False, backend=backend,
                                           options=(options or None) if backend == "inductor" else None)
        return self._compiled(input_ids, position_ids, attention_mask, cache)

    def _session(self, batch: int, needed: int) -> _Session:
        length = -(-needed // LENGTH_BUCKET) * LENGTH_BUCKET
        limit = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        if limit and length > limit >= needed:
            length = needed
        key = (batch, length)
        if key in self.sessions:
            self.sessions.move_to_end(key)
            return self.sessions[key]
        while len(self.sessions) >= MAX_SESSIONS:
            self.sessions.popitem(last=False)
        session = _Session(self, batch, length)
        self.sessions[key] = session
        return session

    def generate(self, request: DecodeRequest) -> torch.Tensor:
        # hf_tp's decode kernels serve the loop's steps, eager ones included (hf_tp.kernels.decode_gemm.
        # launch_context_pays): the same kernels, and the same bits, with or without graphs
        # and, with TPConfig.pdl, launched with programmatic dependent launch (hf_tp.kernels.pdl)
        with decode_loop_calls(), pdl.launching(self._pdl), inductor_config_patch(self._inductor_options):
            return self._generate(request)

    def _generate(self, request: DecodeRequest) -> torch.Tensor:
        batch, prompt = request.input_ids.shape
        steps = request.max_new_tokens
        session = self._session(batch, prompt + steps)
        if session.vocab_positions is not None:  # buffers this request needs, before deciding to capture
            session.prepare(request, session.vocab_positions.numel())
        new_variant = request.variant not in session.graphs
        if self.use_graphs and new_variant and steps > 1 and self._may_compile(batch, session):
            self._capture(session, request)
        session.start(request)
        stops = _StopStrings(request, session) if request.stop_criteria is not None else None
        streamer = request.streamer
        if streamer is not None:
            streamer.put(request.input_ids.cpu())
        done, streamed = 1, 0
        timing = self.decode_timings is not None and self.device.type == "cuda"
        if timing:
            events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            events[0].record()
        while True:
            ahead = 0
            if done % CHECK_EVERY == 0 or done == steps:
                generated = None  # the host's copy of the steps so far, read (a sync) only where needed
                if stops is not None:
                    generated = session.out[:, :done].cpu()
                    # The host checks the stop strings while the device runs the next steps (queued first):
                    # their tokens past a row's stop are replaced by padding at the next check, or trimmed.
                    ahead = min(CHECK_EVERY, steps - done)
                    for _ in range(ahead):
                        session.run_step()
                    stops.check(done, generated)
                unfinished = None  # read by _finished_length itself (a sync), unless read while a step runs
                if (CHECK_AHEAD and stops is None and streamer is None and request.eos_token_ids and done < steps
                        and session.graphs.get(session.variant) is not None):
                    unfinished, ahead = session.unfinished_ahead(), 1
                finished = self._finished_length(session, request, done, stops, generated, unfinished)
                if streamer is not None:
                    upto = finished if finished is not None else done
                    if generated is None:
                        generated = session.out[:, :done].cpu()
                    for column in generated[:, streamed:upto].unbind(1):
                        streamer.put(column)
                    streamed = upto
                if finished is not None or done == steps:
                    length = finished if finished is not None else done
                    break
            if ahead:
                done += ahead
                continue
            session.run_step()
            done += 1
        if timing:
            events[1].record()
            self.decode_timings.append((*events, done - 1 + ahead))  # ahead: steps queued at the last check
        if streamer is not None:
            streamer.end()
        if session.variant.candidates and bool(session.cut_ties):
            logger.warning("hf_tp: top_k=%d sampling: at some step more tokens tied with the k-th largest logit "
                           "than the loop's %d candidates hold; top-k keeps them all, the loop sampled among the "
                           "first %d only. Pass top_k=0 (with top_p) to sample from the whole vocabulary.",
                           request.top_k, session.variant.candidates, session.variant.candidates)
        sequences = torch.cat([request.input_ids, session.out[:, :length]], dim=1)
        if not request.return_dict:
            return sequences
        scores, logits = session.release_outputs(length)
        rewind_static_cache(session.cache, sequences.shape[1] - 1)
        unlink_shared_length(session.cache)  # the returned cache counts its own positions, as Transformers' does
        return generate_output(sequences, session.cache, scores=scores, logits=logits)

    def _may_compile(self, batch: int, session: _Session) -> bool:
        """Each (batch, length) shape is one more compilation of the forward; past torch.compile's
        recompile limit it would silently run eagerly inside the capture. New shapes beyond that
        decode without graphs (correct, slower), said once."""
        import torch._dynamo.config as dynamo_config

        key = (batch, session.length)
        limit = getattr(dynamo_config, "recompile_limit", getattr(dynamo_config, "cache_size_limit", 8))
        if key in self._compiled_shapes or len(self._compiled_shapes) < limit - 1:
            self._compiled_shapes.add(key)
            return True
        if not self._warned_limit:
            self._warned_limit = True
            logger.warning("hf_tp: %d (batch, length) shapes already compiled; new shapes decode without CUDA "
                           "graphs (torch._dynamo.config.recompile_limit is %d).", len(self._compiled_shapes), limit)
        return False

    def _capture(self, session: _Session, request: DecodeRequest) -> None:
        """Compile and capture the step on the request's buffers, leaving the RNG as it was (so the
        capturing call samples what any later call with the same seed samples).

        The ranks of one group compile different graphs (uneven heads), and any of them may fail. Two
        agreements keep their collectives aligned: after the warm-up (where a failing rank ran the same
        steps eagerly) and after the capture (which runs no collective). Either failing anywhere means
        every rank decodes without graphs from here on."""
        rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        if self._one_shot:
            # Inductor names persistent symmetric-memory buffers (HF_TP_ALLREDUCE=one_shot) with
            # random.randint, and dynamo restores Python's random state after every compile: without
            # a draw here each new shape reuses the first shape's buffer id and its allocation fails
            # ("size ... is different from ... a previous allocation with the same alloc_id", torch 2.11).
            random.random()
        session.start(request)  # eager prefill: the same collectives on every rank
        ok = self._agree(session.warm_up())
        if ok and self.device.type != "cuda":
            session.graphs[request.variant] = None  # warmed, nothing to capture: the step runs eagerly
        elif ok:
            try:
                session.capture()
            except Exception as exc:  # noqa: BLE001 - e.g. an op that cannot be captured: stay correct, lose speed
                ok = False
                logger.warning("hf_tp: the decode step could not be captured (%s: %s)", type(exc).__name__,
                               str(exc).splitlines()[0][:200] if str(exc) else "")
            ok = self._agree(ok)
        if rng is not None:
            torch.cuda.set_rng_state(rng, self.device)
        if not ok:
            session.graphs.pop(request.variant, None)
            self.use_graphs = False
            logger.warning("hf_tp: decoding without CUDA graphs (a rank could not compile or capture the step).")

    def _agree(self, ok: bool) -> bool:
        """True only if ``ok`` on every rank of the group (one small all-reduce)."""
        if self.tp.alone:
            return ok
        flag = torch.tensor([int(ok)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.tp.group)
        return bool(flag.item())

    @staticmethod
    def _finished_length(session: _Session, request: DecodeRequest, done: int,
                         stops: "_StopStrings | None", generated: torch.Tensor | None,
                         unfinished: bool | None = None) -> int | None:
        """Tokens Transformers would have returned if every sequence has finished, else None.

        A sequence finishes at its first eos (min_new_tokens already kept eos out before then) or at the
        step that completed a stop string, and generate stops at the step where the last one finishes.
        ``unfinished``: whether a row was unfinished after ``done`` steps, where already read (else read here)."""
        if stops is None and (not request.eos_token_ids
                              or (unfinished if unfinished is not None else bool(session.unfinished.any()))):
            return None
        if generated is None:
            generated = session.out[:, :done].cpu()
        never = done  # past every step taken so far: "not finished"
        end = torch.full((generated.shape[0],), never, dtype=torch.long)
        if request.eos_token_ids:
            is_eos = torch.isin(generated, torch.tensor(request.eos_token_ids))
            end = torch.where(is_eos.any(1), is_eos.float().argmax(1), end)
        if stops is not None:
            end = torch.minimum(end, stops.stop_at.clamp(max=never))
        if bool((end >= never).any()):
            return None
        return int(end.max()) + 1


class _StopStrings:
    """Transformers' StopStringCriteria, run on the host at the loop's checks (every CHECK_EVERY steps)
    over each step since the previous check, on the same ids generate would pass it (prompt and tokens).

    A row that completes a stop string at step t is finished there, as in generate. With eos ids,
    generate then pads that row: the tokens the device made past t (up to 2 x CHECK_EVERY - 1 steps: the
    device runs the next steps while the host checks) are replaced by padding and the device is told, so
    its later steps pad the row too. Without eos ids generate keeps extending the
    row until every row has finished, and so does the device."""

    def __init__(self, request: DecodeRequest, session: _Session):
        self.criteria, self.session = request.stop_criteria, session
        self.prompt_ids = request.input_ids.cpu()
        self.pad_after = bool(request.eos_token_ids)
        self.pad = request.pad_token_id
        # The step that completed a stop string, per row; 2**62 = none yet.
        self.stop_at = torch.full((self.prompt_ids.shape[0],), 2**62, dtype=torch.long)
        self.checked = 0

    def check(self, done: int, generated: torch.Tensor) -> None:
        """Check the steps since the last check in ``generated`` (the host's copy of the first ``done``
        steps), and pad the stopped rows there and on the device."""
        ids = torch.cat([self.prompt_ids, generated], dim=1)
        rows, prompt = self.prompt_ids.shape
        hits = torch.zeros(done - self.checked, rows, dtype=torch.bool)  # (step since the last check, row)
        # The criteria read the last `width` ids only: every step whose sequence is at least that long is
        # checked in one call on a batch of windows (one call per step would cost ~0.1 ms each on the host).
        width = getattr(self.criteria, "maximum_token_len", None)  # Transformers 5.x; else step by step
        first_full = done if width is None else min(max(self.checked, width - prompt - 1), done)
        for step in range(self.checked, first_full):  # sequences still shorter than `width`: one by one, as generate
            hits[step - self.checked] = self.criteria(ids[:, : prompt + step + 1], None).cpu()
        if first_full < done:
            start = prompt + first_full + 1 - width  # the window that ends at step first_full
            windows = ids.unfold(1, width, 1)[:, start: start + done - first_full]  # (rows, steps, width)
            found = self.criteria(windows.transpose(0, 1).reshape(-1, width), None).cpu()
            hits[first_full - self.checked:] = found.view(done - first_full, rows)
        first = torch.where(hits.any(0), hits.float().argmax(0) + self.checked, torch.full((rows,), 2**62))
        new = (first < 2**62) & (self.stop_at == 2**62)
        self.stop_at = torch.where(new, first, self.stop_at)
        self.checked = done
        if self.pad_after:
            # Every stopped row, not only the new ones: the steps queued during the previous check made
            # tokens for rows it stopped.
            for row in torch.nonzero(self.stop_at < 2**62).flatten().tolist():
                self.session.out[row, int(self.stop_at[row]) + 1:done] = self.pad
                generated[row, int(self.stop_at[row]) + 1:] = self.pad
            for row in torch.nonzero(new).flatten().tolist():
                self.session.unfinished[row] = False


def graphs_enabled(tp, cuda_graphs: bool = True) -> bool:
    """CUDA graphs + compile on CUDA unless ``cuda_graphs`` (TPConfig) is off (then the loop runs eagerly,
    for debugging).

    At tp > 1 only over NCCL: a gloo collective cannot be captured (gloo stages CUDA tensors through
    the host), and trying crashed both ranks with a segmentation fault inside the compiled step
    (torch 2.11, H100, 2026-11-25), which no fallback can catch.
    """
    if tp.device.type != "cuda" or not cuda_graphs:
        return False
    return tp.alone or dist.get_backend(tp.group) == "nccl"
