"""Every place hf_tp reaches into Transformers beyond its public model API, in one file, so that the next
Transformers upgrade touches this file only. Each function says which Transformers internal it wraps and
why hf_tp needs it; tests/test_decode_loop.py and the SPMD parity tests run all of them against the
pinned Transformers range.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from contextlib import contextmanager

import torch


# -- building the skeleton (parallelize.py) -------------------------------------------------------
@contextmanager
def no_init_weights():
    """Transformers' own switch that skips weight initialisation (its from_pretrained uses it)."""
    from transformers.initialization import no_init_weights as skip

    with skip():
        yield


def init_weights(owner, module) -> None:
    """``PreTrainedModel._init_weights``: some models fill buffers (rotary tables) there."""
    owner._init_weights(module)


# -- the attention implementation (parallel/decode_attention.py) -----------------------------------
def attention_implementation(config) -> str | None:
    """The attention implementation a config's attention layers look up (``config._attn_implementation``)."""
    return getattr(config, "_attn_implementation", None)


def set_attention_implementation(config, name: str) -> None:
    """Name ``name`` (registered in Transformers' AttentionInterface and mask interface) as this config's
    attention implementation, this config only: the public setter of ``_attn_implementation`` also rewrites
    every sub-config, whose layers (a vision tower, say) may run another implementation on purpose."""
    if hasattr(config, "_attn_implementation_internal"):
        config._attn_implementation_internal = name
    else:  # pragma: no cover - a Transformers without the internal field
        config._attn_implementation = name


# -- reading a generate() request (decode_loop.plan_request) ----------------------------------------
def prepare_generation_config(model, user_config, kwargs: dict):
    """(GenerationConfig, model kwargs) exactly as ``generate`` merges them (``_prepare_generation_config``)."""
    return model._prepare_generation_config(user_config, **kwargs)


def default_generation_params(config) -> dict:
    """The defaults a GenerationConfig's fields are compared with (``_get_default_generation_params``)."""
    return config._get_default_generation_params()


def logits_process():
    """transformers.generation.logits_process: its processors' constructors validate settings the loop
    replaces (top_k=-1, temperature=0, ...), so the loop refuses what generate refuses."""
    from transformers.generation import logits_process as module

    return module


# -- the static cache (decode_loop._Session) --------------------------------------------------------
_PENALTY_IGNORES_PADDING: bool | None = None


def repetition_penalty_ignores_left_padding() -> bool:
    """Whether Transformers' generate leaves a row's left padding out of the repetition penalty's "seen" tokens:
    newer releases pass ``prompt_ignore_length`` (each row's padding length) to RepetitionPenaltyLogitsProcessor;
    5.17 passes nothing and penalizes the pad id too. The loop follows the installed release."""
    global _PENALTY_IGNORES_PADDING
    if _PENALTY_IGNORES_PADDING is None:
        from transformers.generation import utils

        try:
            source = inspect.getsource(utils.GenerationMixin._get_logits_processor)
        except (OSError, TypeError):  # no sources installed: the releases that ignore padding accept a tensor
            source = str(inspect.signature(logits_process().RepetitionPenaltyLogitsProcessor.__init__))
            source = "prompt_ignore_length=" if "Tensor" in source else ""
        _PENALTY_IGNORES_PADDING = "prompt_ignore_length=" in source
    return _PENALTY_IGNORES_PADDING


def static_cache(config, max_cache_len: int, shared_length: torch.Tensor | None = None):
    """Transformers' StaticCache for ``config``, with every sliding-window layer replaced by a plain static layer
    of the full length. Transformers' StaticSlidingWindowLayer keeps only the window and decides between "not
    full", "becoming full" and "full" on a Python int, which a CUDA graph would freeze; the plain layer keeps
    every position and counts them in a device tensor, which a graph replays. The model still builds its own
    sliding-window mask for those layers (``create_sliding_window_causal_mask``, from ``config.sliding_window``),
    and that mask hides every position outside the window, so the tokens are the same as with Transformers'
    window-sized layers. The cost is memory: a sliding layer holds ``max_cache_len`` positions instead of the
    window (docs/generation.md).

    With ``shared_length`` (a 0-d long tensor on the cache's device), the layers are ``_SharedLengthLayer`` where
    this Transformers allows it (``shared_length_layer``): they all count positions in that one tensor, which the
    caller advances once per forward, instead of one tensor per layer advanced by each layer's update (a kernel
    per layer per decode step), once the caller links them (``link_shared_length``)."""
    from transformers import StaticCache
    from transformers.cache_utils import StaticLayer, StaticSlidingWindowLayer

    cache = StaticCache(config=config, max_cache_len=max_cache_len)
    kind = shared_length_layer() if shared_length is not None else None
    for index, layer in enumerate(cache.layers):
        if kind is not None and type(layer) in (StaticLayer, StaticSlidingWindowLayer):
            cache.layers[index] = kind(max_cache_len=max_cache_len)
        elif type(layer) is StaticSlidingWindowLayer:
            cache.layers[index] = StaticLayer(max_cache_len=max_cache_len)
    return cache


@functools.cache
def shared_length_layer():
    """Transformers' StaticLayer whose ``update``, while linked to a shared length (``link_shared_length``),
    writes the new keys and values at that length and leaves it alone: the caller advances it once for all
    layers. Unlinked, it is Transformers' StaticLayer. None when this Transformers' ``StaticLayer.update`` is not
    the form this override repeats (position = its own length, ``index_copy_`` along the sequence, length +=
    tokens): the loop then keeps Transformers' layers."""
    from transformers.cache_utils import StaticLayer

    try:
        source = inspect.getsource(StaticLayer.update)
    except (OSError, TypeError):
        return None
    expected = ("torch.arange(kv_length, device=self.device) + self.cumulative_length",
                "self.cumulative_length.add_(kv_length)", "self.keys.index_copy_(2, cache_position, key_states)")
    if not all(part in source for part in expected):
        return None

    class _SharedLengthLayer(StaticLayer):
        linked = False

        def lazy_initialization(self, key_states, value_states):
            shared = self.cumulative_length
            super().lazy_initialization(key_states, value_states)
            if self.linked:  # keep the one tensor (a copy on another device would be counted by nobody)
                if self.cumulative_length is not shared:
                    raise RuntimeError(f"hf_tp: the decode loop's cache length lives on {shared.device}, the keys "
                                       f"on {key_states.device}: the cache must be made on the model's device")

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.linked:
                return super().update(key_states, value_states, *args, **kwargs)
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            cache_position = torch.arange(key_states.shape[-2], device=self.device) + self.cumulative_length
            self.keys.index_copy_(2, cache_position, key_states)
            self.values.index_copy_(2, cache_position, value_states)
            return self.keys, self.values

    return _SharedLengthLayer


def link_shared_length(cache, length: torch.Tensor) -> bool:
    """Point every layer of ``cache`` (made by ``static_cache`` with a shared length) at ``length``, which the
    caller then advances by the tokens of each forward. False when the cache has other layers (nothing changed)."""
    kind = shared_length_layer()
    if kind is None or not all(type(layer) is kind for layer in cache.layers):
        return False
    for layer in cache.layers:
        layer.cumulative_length, layer.linked = length, True
    return True


def unlink_shared_length(cache) -> None:
    """Give each linked layer its own copy of the length again, counted by its own updates as in Transformers'
    StaticLayer: the cache generate returns then works with Transformers' own forward."""
    kind = shared_length_layer()
    for layer in cache.layers:
        if kind is not None and type(layer) is kind and layer.linked:
            layer.cumulative_length, layer.linked = layer.cumulative_length.clone(), False


def unsupported_cache(model) -> str | None:
    """Why the loop cannot use this model's static cache, or None. Plain static layers keep their position in
    a device tensor; sliding-window layers become plain ones (``static_cache``); any other kind (linear
    attention, indexed, ...) is left to Transformers."""
    from transformers import StaticCache
    from transformers.cache_utils import StaticLayer, StaticSlidingWindowLayer

    if not hasattr(model, "_hf_tp_unsupported_cache"):
        # Layers allocate their tensors lazily: a probe this long costs nothing, and shows each layer's kind.
        probe = StaticCache(config=model.config.get_text_config(decoder=True), max_cache_len=2**40)
        kinds = sorted({type(layer).__name__ for layer in probe.layers
                        if type(layer) not in (StaticLayer, StaticSlidingWindowLayer)})
        model._hf_tp_unsupported_cache = f"cache layers {','.join(kinds)}" if kinds else None
    return model._hf_tp_unsupported_cache


def flash_attention(model) -> bool:
    """Whether the model runs a flash-attention kernel (``flash_attention_2``/``_3`` or a hub kernel of that
    family). Transformers' flash path reads which cache positions are filled from the 2-D attention mask
    (``masking_utils.flash_attention_mask`` drops an all-ones mask and then attends to every key it gets); the
    loop's mask spans the whole static cache, ones included for the positions not written yet, so that path
    would attend to them: the loop leaves such models to Transformers' generate."""
    # The same test as Transformers' is_flash_attention_requested (5.24): "flash" in the implementation's name.
    configs = (model.config, model.config.get_text_config(decoder=True))
    return any("flash" in str(getattr(config, "_attn_implementation", None) or "") for config in configs)


def cache_argument_name(model) -> str:
    """Transformers renamed ``past_key_values`` to ``cache`` in 5.2x; pass whichever this version takes.
    Read from the model class's own forward: hf_tp's mixin in front of it takes ``*args, **kwargs``."""
    for cls in type(model).__mro__:
        forward = cls.__dict__.get("forward")
        if forward is not None:
            parameters = inspect.signature(forward).parameters
            for name in ("cache", "past_key_values"):
                if name in parameters:
                    return name
    return "past_key_values"


def rewind_static_cache(cache, length: int) -> None:
    """Forget the positions written by the steps that ran past the end (up to CHECK_EVERY - 1), so the
    returned cache holds what Transformers' would: every position but the last token's. Writes the static
    layers' own tensors (keys, values, cumulative_length)."""
    for layer in cache.layers:
        if getattr(layer, "is_initialized", False):
            layer.keys[:, :, length:].zero_()
            layer.values[:, :, length:].zero_()
            layer.cumulative_length.fill_(length)


def generate_output(sequences: torch.Tensor, cache, scores=None, logits=None):
    """What Transformers' generate returns for return_dict_in_generate=True: the sequences, the cache and,
    when asked, one (batch, vocab) tensor of scores / raw logits per generated token. As with Transformers'
    own static cache, the cache object is reused by later calls."""
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    fields = {f.name for f in dataclasses.fields(GenerateDecoderOnlyOutput)}
    cache_field = "cache" if "cache" in fields else "past_key_values"  # renamed in Transformers 5.2x
    return GenerateDecoderOnlyOutput(sequences=sequences, scores=scores, logits=logits, **{cache_field: cache})
