"""The policy format: plain data saying how each module of one architecture family is split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

STYLES = ("column", "row", "vocab", "replicate")


@dataclass(frozen=True)
class Policy:
    """How to split one architecture family. Intent only; layouts are the layers' business.

    rules:      fnmatch glob over ``named_modules()`` names -> "column" | "row" | "vocab" | "replicate".
                The first matching rule wins. Every nn.Linear (and GPT-2 Conv1D) must be matched.
    heads:      glob -> "q" or "kv": the module's split dimension is made of attention heads
                (query heads, or key/value heads), so it is cut on whole heads along GQA groups.
                Column modules without an entry here are cut into near-equal contiguous chunks.
    attention:  glob of the attention modules whose head-count attributes are rewritten to
                this rank's numbers (``num_key_value_groups`` and the like) after the split.
    num_heads, num_kv_heads, head_dim: the config fields holding the head geometry.
    """

    name: str
    model_types: tuple[str, ...]
    rules: Mapping[str, str]
    heads: Mapping[str, str] = field(default_factory=dict)
    attention: str = ""
    num_heads: str = "num_attention_heads"
    num_kv_heads: str = "num_key_value_heads"
    head_dim: str = "head_dim"

    def __post_init__(self):
        bad = {glob: style for glob, style in self.rules.items() if style not in STYLES}
        if bad:
            raise ValueError(f"Policy {self.name!r}: unknown split styles {bad}; use one of {STYLES}.")
        bad_heads = {glob: kind for glob, kind in self.heads.items() if kind not in ("q", "kv")}
        if bad_heads:
            raise ValueError(f"Policy {self.name!r}: heads entries must be 'q' or 'kv', got {bad_heads}.")
