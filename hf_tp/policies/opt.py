"""OPT: separate q/k/v projections with biases, learned positions (replicated), tied LM head."""

from .policy import Policy

OPT = Policy(
    name="opt",
    model_types=("opt",),
    rules={
        "model.decoder.embed_tokens": "vocab",
        "lm_head": "vocab",
        "model.decoder.layers.*.self_attn.[qkv]_proj": "column",
        "model.decoder.layers.*.self_attn.out_proj": "row",
        "model.decoder.layers.*.fc1": "column",
        "model.decoder.layers.*.fc2": "row",
        # Small projections between word_embed_proj_dim and hidden_size (opt-350m only).
        "model.decoder.project_[io]*": "replicate",
    },
    optional=("model.decoder.project_[io]*",),
    heads={"*.self_attn.q_proj": "q", "*.self_attn.[kv]_proj": "kv", "*.self_attn.out_proj": "q"},
    attention="model.decoder.layers.*.self_attn",
    num_kv_heads="num_attention_heads",
)
