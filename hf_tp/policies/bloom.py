"""BLOOM: ``query_key_value`` packed per head as [q_h k_h v_h], like GPT-NeoX; ALiBi position
biases instead of rotary embeddings."""

from .policy import Policy


def _alibi_for_local_heads(model, plan, tp) -> None:
    """BloomModel builds the ALiBi bias for all heads, shaped (batch x num_heads, 1, kv_len), and
    each attention adds it to its scores. A head's slope depends on its index among all heads, so
    the bias cannot be rebuilt from the local head count: each attention module takes this rank's
    rows of the full bias instead, just before it runs."""
    num_heads = model.config.n_head
    for name, shards in plan.attention.items():
        start, stop = shards[tp.tp_rank].q_heads

        def take_local(_module, args, kwargs, start=start, stop=stop):
            alibi = kwargs["alibi"]
            per_head = alibi.view(-1, num_heads, *alibi.shape[1:])[:, start:stop]
            kwargs["alibi"] = per_head.reshape(-1, *alibi.shape[1:])
            return args, kwargs

        model.get_submodule(name).register_forward_pre_hook(take_local, with_kwargs=True)


BLOOM = Policy(
    name="bloom",
    model_types=("bloom",),
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
    num_kv_heads="num_attention_heads",
    adapt=_alibi_for_local_heads,
)
