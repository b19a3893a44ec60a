"""Phi-3: fused ``qkv_proj`` ([q | k | v]) and ``gate_up_proj`` ([gate | up]) split part by part, so
each rank holds its own query, key, value, gate and up rows and no output is ever gathered."""

from .policy import Policy


class _LocalHeadsConfig:
    """The model config seen with one rank's head counts; every other field reads the live config."""

    def __init__(self, config, **local):
        self.__dict__.update(_config=config, **local)

    def __getattr__(self, name):
        return getattr(self._config, name)


def _local_query_width(model, plan, tp) -> None:
    """Phi3Attention splits its fused qkv output at ``self.config.num_attention_heads * head_dim``
    (the whole model's heads), which no module attribute can override: give each attention
    module a view of the config with this rank's head counts."""
    for name, shards in plan.attention.items():
        module = model.get_submodule(name)
        heads = shards[tp.tp_rank]
        module.config = _LocalHeadsConfig(module.config, num_attention_heads=heads.num_q,
                                          num_key_value_heads=heads.num_kv)


PHI3 = Policy(
    name="phi3",
    model_types=("phi3",),
    rules={
        "model.embed_tokens": "vocab",
        "lm_head": "vocab",
        "model.layers.*.self_attn.qkv_proj": "column",
        "model.layers.*.self_attn.o_proj": "row",
        "model.layers.*.mlp.gate_up_proj": "column",
        "model.layers.*.mlp.down_proj": "row",
    },
    heads={"*.self_attn.o_proj": "q"},
    fused={"*.self_attn.qkv_proj": ("q", "k", "v"), "*.mlp.gate_up_proj": ("gate", "up")},
    attention="model.layers.*.self_attn",
    adapt=_local_query_width,
)
