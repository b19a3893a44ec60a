"""GPT-NeoX (Pythia): ``query_key_value`` is packed per head as [q_h k_h v_h], so a rank's heads
are one contiguous block of rows. Partial rotary is per head and needs nothing."""

from .policy import Policy

GPT_NEOX = Policy(
    name="gpt_neox",
    model_types=("gpt_neox",),
    rules={
        "gpt_neox.embed_in": "vocab",
        "lm_head": "vocab",
        "gpt_neox.layers.*.attention.query_key_value": "column",
        "gpt_neox.layers.*.attention.dense": "row",
        "gpt_neox.layers.*.mlp.dense_h_to_4h": "column",
        "gpt_neox.layers.*.mlp.dense_4h_to_h": "row",
    },
    heads={"*.attention.query_key_value": "qkv_grouped", "*.attention.dense": "q"},
    attention="gpt_neox.layers.*.attention",
    num_kv_heads="num_attention_heads",
)
