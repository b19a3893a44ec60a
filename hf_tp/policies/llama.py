"""Llama-family decoders: Llama, Mistral, Qwen2 (attention biases), Qwen3 (per-head q/k norms)."""

from .policy import Policy

LLAMA = Policy(
    name="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    rules={
        "model.embed_tokens": "vocab",
        "lm_head": "vocab",
        "model.layers.*.self_attn.[qkv]_proj": "column",
        "model.layers.*.self_attn.o_proj": "row",
        "model.layers.*.mlp.gate_proj": "column",
        "model.layers.*.mlp.up_proj": "column",
        "model.layers.*.mlp.down_proj": "row",
    },
    heads={
        "*.self_attn.q_proj": "q",
        "*.self_attn.[kv]_proj": "kv",
        "*.self_attn.o_proj": "q",
    },
    attention="model.layers.*.self_attn",
    same_input={"model.layers.*.self_attn": ("q_proj", "k_proj", "v_proj"), "model.layers.*.mlp": ("gate_proj", "up_proj")},
)
