"""Falcon: ``query_key_value`` packed per key/value head as [its query heads | k | v], which covers
all three variants: the new decoder architecture (GQA, Falcon-40B/180B), multi-query (Falcon-7B:
one K/V head, replicated on every rank) and the original per-head packing. Parallel attention/MLP
blocks need nothing: both branches end in a row-parallel layer."""

from ..errors import PolicyError
from .bloom import BLOOM
from .policy import Policy


def _kv_heads(config) -> int:
    """The K/V heads FalconAttention really has: multi-query without the new architecture means one,
    whatever ``num_kv_heads`` says; the old per-head packing has as many as query heads."""
    if config.new_decoder_architecture:
        return config.num_kv_heads
    return 1 if config.multi_query else config.num_attention_heads


def _refuse_alibi(model, plan, tp) -> None:
    """FalconModel folds the ALiBi bias of all heads into the 4-D attention mask before the layers
    run, so per-rank heads would need the mask cut per head; not supported (Falcon-RW models)."""
    if model.config.alibi:
        raise PolicyError(
            "hf_tp does not split Falcon models with alibi=True (Falcon-RW): their attention mask carries "
            "every head's ALiBi bias. Run them with tp_size=1."
        )


FALCON = Policy(
    name="falcon",
    model_types=("falcon",),
    # Falcon keeps BLOOM's module names and its per-KV-group packed query_key_value.
    rules=BLOOM.rules,
    heads=BLOOM.heads,
    attention=BLOOM.attention,
    num_kv_heads=_kv_heads,
    adapt=_refuse_alibi,
)
