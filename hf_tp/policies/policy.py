"""The policy format: plain data saying how each module of one architecture family is split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

STYLES = ("column", "row", "vocab", "replicate")
HEAD_KINDS = ("q", "kv", "qkv_grouped")
HEAD_PARTS = ("q", "k", "v")  # fused parts cut on head boundaries; any other part name is cut evenly
LOCAL_ATTR_KINDS = ("q", "kv", "q_width", "kv_width")


@dataclass(frozen=True)
class Policy:
    """How to split one architecture family. Intent only; layouts are the layers' business.

    rules:      fnmatch glob over ``named_modules()`` names -> "column" | "row" | "vocab" | "replicate".
                The first matching rule wins. Every nn.Linear (and GPT-2 Conv1D) must be matched, and
                every rule must match a module unless it is listed in ``optional``.
    optional:   rule globs for modules only some configs have (OPT's project_in/out, Qwen3-MoE's
                dense MLP layers), which may therefore match nothing.
    heads:      glob -> what the module's split dimension is made of, so it is cut on whole heads:
                "q" (query heads), "kv" (key/value heads, replicated when tp_size > their number),
                or "qkv_grouped" (a QKV weight packed per key/value head: its query heads, then
                its key and its value head; GPT-NeoX, BLOOM, Falcon).
                Column modules without an entry here (or in ``fused``) are cut into near-equal chunks.
    fused:      glob over module names (or, for ``params``, parameter names) -> the parts packed
                one after the other along the split dimension, e.g. ("q", "k", "v") or ("gate", "up").
                Each rank takes its share of every part: "q"/"k"/"v" by heads, others evenly.
    params:     glob over ``named_parameters()`` names -> "column" | "row", for parameters of modules
                hf_tp keeps as they are: Transformers 5 MoE experts stored as 3-D (experts, out, in)
                tensors. A module holding a "row" parameter returns partial sums; its output is all-reduced.
    attention:  glob of the attention modules whose head-count attributes are rewritten to
                this rank's numbers (``num_heads``, ``num_key_value_groups`` and the like) after the split.
    local_attrs: further attention attributes rewritten per rank -> "q" | "kv" (head counts) or
                "q_width" | "kv_width" (head count x head_dim), e.g. GPT-2's ``split_size``.
    num_heads, num_kv_heads, head_dim: the config fields holding the head geometry. num_kv_heads may
                also be a function of the config, for families whose effective key/value head count
                depends on flags (Falcon multi-query: 1 whatever ``num_kv_heads`` says).
    same_input: glob of parent modules -> names of their column-parallel children that read the same
                input (Llama's q/k/v projections, gate/up). After loading, each rank keeps those
                children's weights in one buffer and computes them as one GEMM (hf_tp/parallel/fused.py):
                a speed choice, not a layout (TPConfig.fuse: on for CUDA by default).
    adapt:      escape hatch for what data cannot say: ``adapt(model, plan, tp)`` runs after the
                modules are swapped. Each use says in its docstring why it is needed.
    """

    name: str
    model_types: tuple[str, ...]
    rules: Mapping[str, str]
    optional: tuple[str, ...] = ()
    heads: Mapping[str, str] = field(default_factory=dict)
    fused: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    attention: str = ""
    local_attrs: Mapping[str, str] = field(default_factory=dict)
    same_input: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    num_heads: str = "num_attention_heads"
    num_kv_heads: str | Callable[[Any], int] = "num_key_value_heads"
    head_dim: str = "head_dim"
    adapt: Callable[..., None] | None = None

    def __post_init__(self):
        bad = {glob: style for glob, style in self.rules.items() if style not in STYLES}
        if bad:
            raise ValueError(f"Policy {self.name!r}: unknown split styles {bad}; use one of {STYLES}.")
        bad_heads = {glob: kind for glob, kind in self.heads.items() if kind not in HEAD_KINDS}
        if bad_heads:
            raise ValueError(f"Policy {self.name!r}: heads entries must be one of {HEAD_KINDS}, got {bad_heads}.")
        bad_params = {glob: style for glob, style in self.params.items() if style not in ("column", "row")}
        if bad_params:
            raise ValueError(f"Policy {self.name!r}: params entries must be 'column' or 'row', got {bad_params}.")
        bad_fused = {glob: parts for glob, parts in self.fused.items() if not parts or len(set(parts)) != len(parts)}
        if bad_fused:
            raise ValueError(f"Policy {self.name!r}: fused entries need distinct part names, got {bad_fused}.")
        bad_attrs = {a: k for a, k in self.local_attrs.items() if k not in LOCAL_ATTR_KINDS}
        if bad_attrs:
            raise ValueError(f"Policy {self.name!r}: local_attrs values must be one of {LOCAL_ATTR_KINDS}, got {bad_attrs}.")
