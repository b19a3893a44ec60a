"""Falcon: ``query_key_value`` packed per key/value head as [its query heads | k | v], which covers
all three variants: the new decoder architecture (GQA, Falcon-40B/180B), multi-query (Falcon-7B:
one K/V head, replicated on every rank) and the original per-head packing. Parallel attention/MLP
blocks need nothing: both branches end in a row-parallel layer."""

from ..errors import PolicyError
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
    rules={
        "transformer.word_embeddings": "vocab",
        "lm_head": "vocab",
        "transformer.h.*.self_attention.query_key_value": "column",
        "transformer.h.*.self_attention.dense": "row",
        "transformer.h.*.mlp.dense_h_to_4h": "column",
        "transformer.h.*.mlp.dense_4h_to_h": "row",
    },
    heads={"*.self_attention.query_key_value": "qkv_grouped", "*.self_attention.dense": "q"},
    attention="transformer.h.*.self_attention",
    num_kv_heads=_kv_heads,
    adapt=_refuse_alibi,
)
