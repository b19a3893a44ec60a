"""Make a parallelized Transformers model safe to call from every rank of an SPMD program.

Every rank runs the same ``generate``; the logits are gathered, so greedy decoding agrees by
construction. Three things could still desynchronise ranks silently, and are handled here:
  - different inputs on different ranks -> checked with one small all-gather, ValueError on all ranks;
  - sampling with different RNG states  -> rank 0 draws a seed and broadcasts it;
  - token ids outside the vocabulary    -> a vocab-parallel embedding would embed them as zeros: refused.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch

from ..config import TPConfig
from ..agreement import check_same_on_all_ranks, fail_together, fingerprint, guard_embedding, validate_token_ids
from ..parallel.comm import TPGroup, broadcast_int
from ..parallel.layers import VocabParallelEmbedding
from .fast import plan_fast_decode, with_fast_path


def _to(obj, device):
    """Tensors (also in lists, tuples, dicts) moved to ``device``, so one script works in every mode:
    the single-controller handle takes CPU tensors, and here they follow the rank's device."""
    if torch.is_tensor(obj):
        return obj.to(device) if obj.device != device else obj
    if isinstance(obj, dict):
        return type(obj)({k: _to(v, device) for k, v in obj.items()}) if type(obj) is dict else obj
    if isinstance(obj, (list, tuple)) and any(torch.is_tensor(v) for v in obj):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def validate_prompt_length(input_ids, max_positions: int | None) -> None:
    if max_positions and torch.is_tensor(input_ids) and input_ids.dim() >= 1 and input_ids.shape[-1] > max_positions:
        raise ValueError(
            f"The prompt has {input_ids.shape[-1]} tokens but the model's context is {max_positions} "
            "(config.max_position_embeddings). Shorten or truncate the prompt."
        )


# Gradients through the collectives would be silently wrong (they have no backward), so training is refused.
RESIZE_REFUSED = (
    "resize_token_embeddings is not supported on an hf_tp tensor-parallel model: its embedding and LM head "
    "are split by vocabulary rows across the ranks, planned at load time. Resize the model with plain "
    "Transformers (tp_size=None), save_pretrained it, and load the saved folder with tp_size."
)
INFERENCE_ONLY = (
    "{what} not supported on an hf_tp tensor-parallel model: it is for inference only, and its collectives "
    "have no backward, so gradients would be wrong. Run it under torch.no_grad() (detach inputs that require "
    "grad), or train with plain Transformers (tp_size=None) or a training framework's tensor parallelism."
)


def _tensors(obj):
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


class TensorParallelMixin:
    """Mixed into the model's own class at load time; everything else is the Transformers model."""

    hf_tp: TPGroup
    # The resolved hf_tp.TPConfig. fast_decode is read at every generate() call, so assigning
    # dataclasses.replace(model.hf_tp_config, fast_decode=...) switches the path for the next call; the
    # load-time options (fusion, reductions, loader) were applied when the model was built.
    hf_tp_config: TPConfig
    _hf_tp_in_generate = False

    def extra_repr(self) -> str:
        return f"hf_tp: tp_rank={self.hf_tp.tp_rank}/{self.hf_tp.tp_size}, {self.hf_tp_config}"

    def _hf_tp_check_inputs(self, what: str, args, kwargs) -> None:
        """Validate inputs locally, then agree across ranks: a rank that rejects its inputs, or
        inputs that differ between ranks, raise the same ValueError on every rank."""
        input_ids = kwargs.get("input_ids", kwargs.get("inputs"))
        if input_ids is None and args and torch.is_tensor(args[0]):
            input_ids = args[0]
        error = None
        try:
            validate_token_ids(input_ids, self.get_input_embeddings().num_embeddings)
            text_config = self.config.get_text_config()
            validate_prompt_length(input_ids, getattr(text_config, "max_position_embeddings", None))
        except ValueError as exc:
            error = str(exc)
        # A streamer only prints; passing one on rank 0 alone is normal, so it is left out of the check.
        compared = {k: v for k, v in kwargs.items() if k != "streamer"}
        check_same_on_all_ranks(fingerprint(args, compared), self.hf_tp, what, local_error=error)

    def forward(self, *args, **kwargs):
        # Inside generate the inputs were checked once; per-step checks would cost a sync each token.
        if self._hf_tp_in_generate:
            return super().forward(*args, **kwargs)
        if torch.is_grad_enabled() and any(t.requires_grad for t in _tensors((args, kwargs))):
            raise NotImplementedError(INFERENCE_ONLY.format(what="An input that requires grad is"))
        args, kwargs = _to(args, self.hf_tp.device), _to(kwargs, self.hf_tp.device)
        self._hf_tp_check_inputs("The inputs of model(...)", args, kwargs)
        with self._hf_tp_ids_checked():
            return super().forward(*args, **kwargs)

    # -- placement: hf_tp put every rank's slice on its device; dtype conversions are followed ---------
    def _hf_tp_check_device(self, device) -> None:
        if device is None:
            return
        device, here = torch.device(device), self.hf_tp.device
        same = device.type == here.type and (device.index is None or here.index is None or device.index == here.index)
        if not same:
            raise ValueError(
                f"This hf_tp model's tp rank {self.hf_tp.tp_rank} lives on {here}, placed there with its process "
                f"group; moving it to {device} is not supported. Load it with device='{device.type}' instead. "
                "(Tensors passed to the model are moved to its device for you.)"
            )

    def to(self, *args, **kwargs):
        device, *_ = torch._C._nn._parse_to(*args, **kwargs)
        self._hf_tp_check_device(device)
        return super().to(*args, **kwargs)

    def cuda(self, device=None):
        self._hf_tp_check_device(torch.device("cuda", device) if isinstance(device, int) else device or "cuda")
        return super().cuda(device)

    def cpu(self):
        self._hf_tp_check_device("cpu")
        return super().cpu()

    def _apply(self, fn, recurse=True):
        """dtype conversions (``.to(torch.float16)``, ``.half()``, ``.float()``) reach every parameter; the
        fused q/k/v and gate/up buffers are rebuilt from them, and captured decode graphs are dropped."""
        from ..parallel.fused import rebind_shared_inputs

        # Layers that keep FP8 weights (TPConfig.fp8_weights="keep") keep them and their fp32 scales through a
        # dtype conversion (cast, they would lose their scales); they compute in their input's dtype anyway.
        fp8 = [(m, m.weight.data, m.fp8_scale) for m in self.modules() if getattr(m, "fp8_scale", None) is not None]
        result = super()._apply(fn, recurse)
        for module, weight, scale in fp8:
            module.weight.data, module.fp8_scale = weight, scale
        rebind_shared_inputs(self)
        decoder = getattr(self, "_hf_tp_static_decoder", None)
        if decoder is not None:  # its caches and graphs were built for the old dtype
            decoder.release_graphs()
            self._hf_tp_static_decoder = None
        return result

    def train(self, mode: bool = True):
        if mode:
            raise NotImplementedError(INFERENCE_ONLY.format(what="model.train() is"))
        return super().train(False)

    @contextmanager
    def _hf_tp_ids_checked(self):
        """The token ids were validated here (forward, generate): the embedding skips its own check,
        which guards calls that bypass this class (model.model(ids), get_input_embeddings()(ids))."""
        embedding = self.get_input_embeddings()
        if not isinstance(embedding, VocabParallelEmbedding):
            yield
            return
        before, embedding.check_ids = embedding.check_ids, False
        try:
            yield
        finally:
            embedding.check_ids = before

    @torch.no_grad()
    def generate(self, *args, **kwargs):
        args, kwargs = _to(args, self.hf_tp.device), _to(kwargs, self.hf_tp.device)
        self._hf_tp_check_inputs("The arguments of generate()", args, kwargs)
        # Same seed everywhere, drawn from rank 0's generator, so torch.manual_seed on rank 0
        # still makes runs reproducible and every rank samples the same token.
        seed = broadcast_int(int(torch.randint(0, 2**62, (1,)).item()), self.hf_tp)
        devices = [self.hf_tp.device] if self.hf_tp.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.hf_tp.device.type), self._hf_tp_ids_checked():
            torch.manual_seed(seed)
            self._hf_tp_in_generate = True
            try:
                device_type, fast_decode = self.hf_tp.device.type, self.hf_tp_config.fast_decode
                request = plan_fast_decode(self, args, kwargs, fast_decode)
                if request is not None:
                    return self._hf_tp_decoder().generate(request)
                return super().generate(*args, **with_fast_path(device_type, kwargs, fast_decode))
            finally:
                self._hf_tp_in_generate = False

    def _hf_tp_decoder(self):
        from .decode_loop import StaticDecoder, graphs_enabled

        if getattr(self, "_hf_tp_static_decoder", None) is None:
            config = self.hf_tp_config
            self._hf_tp_static_decoder = StaticDecoder(self, self.hf_tp, graphs_enabled(self.hf_tp, config.cuda_graphs),
                                                       config)
        return self._hf_tp_static_decoder

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """The unsplit model's count, as Transformers reports it and the same on every rank: each parameter
        once, at its full (checkpoint) shape, vocab padding left out. (``get_memory_footprint`` stays
        what it measures: the bytes this rank holds.) Nothing here trains, so ``only_trainable`` gives 0."""
        embeddings = {f"{name}.weight" for name, module in self.named_modules()
                      if isinstance(module, (torch.nn.Embedding, VocabParallelEmbedding))}
        total = 0
        for name, param in self.named_parameters():
            if (exclude_embeddings and name in embeddings) or (only_trainable and not param.requires_grad):
                continue
            shard = self.hf_tp_plan.param_shard(name)
            if shard is None:
                total += param.numel()
            else:  # numel / local length along the split dim * full length, whichever dim that is here
                full = max(stop for pieces in shard.pieces for _, stop in pieces)
                total += param.numel() // shard.local_size[self.hf_tp.tp_rank] * full
        return total

    def resize_token_embeddings(self, *args, **kwargs):
        raise NotImplementedError(RESIZE_REFUSED)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Write the unsplit checkpoint, as Transformers writes it, from tp rank 0. Every rank must call
        it (the slices are gathered with collectives); an error on any rank is raised on all of them."""
        from ..loading.gather import full_state_dict

        if kwargs.get("state_dict") is not None:
            raise ValueError("save_pretrained on an hf_tp model gathers the full state dict itself; "
                             "do not pass state_dict (or save that dict with safetensors directly).")
        kwargs.pop("state_dict", None)
        if any(getattr(m, "fp8_scale", None) is not None for m in self.modules()):
            raise ValueError("save_pretrained cannot write this model: some of its layers hold FP8 weights "
                             "(TPConfig(fp8_weights='keep') or 'auto' on an FP8 GPU, or TPConfig(weights='fp8')), "
                             "which it does not write back. To save, load it with tp_config=hf_tp.TPConfig("
                             "fp8_weights='dequantize', weights='checkpoint') and save that.")
        state = full_state_dict(self, self.hf_tp_plan, self.hf_tp, getattr(self, "hf_tp_transposed", frozenset()))
        with fail_together(self.hf_tp, "saving the checkpoint"):
            if self.hf_tp.is_first:
                super().save_pretrained(save_directory, *args, state_dict=state, **kwargs)


def make_tensor_parallel(model, tp: TPGroup, config: TPConfig):
    """Mix TensorParallelMixin into ``model``'s class (the object stays a PreTrainedModel)."""
    cls = type(model)

    def forward(self, *args, **kwargs):
        return TensorParallelMixin.forward(self, *args, **kwargs)

    # Transformers' generate reads the forward's signature: to infer a padded prompt's attention mask
    # and its position ids, to pass logits_to_keep, and to accept forward arguments given to generate.
    # The mixin's (*args, **kwargs) would hide them all, so the fallback would answer differently.
    forward.__signature__ = inspect.signature(cls.forward)
    model.__class__ = type(cls.__name__, (TensorParallelMixin, cls), {"__module__": cls.__module__, "forward": forward})
    model.hf_tp, model.hf_tp_config = tp, config
    embedding = model.get_input_embeddings()
    if isinstance(embedding, VocabParallelEmbedding):
        guard_embedding(embedding, tp)
    return model
