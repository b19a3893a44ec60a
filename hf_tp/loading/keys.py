"""Checkpoint key names for model parameter names, where Transformers 5 renamed a module but the
checkpoints on the Hub (and its own ``save_pretrained``, which writes the legacy names) did not."""

from __future__ import annotations

import re

# (pattern on the model's parameter name, replacement giving the checkpoint's name)
_RENAMES = (
    (re.compile(r"^lm_head\."), "embed_out."),  # GPT-NeoX's LM head
    (re.compile(r"\.mlp\.(gate|experts)\."), r".block_sparse_moe.\1."),  # Mixtral's router and experts
)


def checkpoint_names(name: str) -> list[str]:
    """``name`` first, then its legacy spellings."""
    return [name, *(pattern.sub(repl, name) for pattern, repl in _RENAMES if pattern.search(name))]


def find_key(names, index) -> str | None:
    """The first checkpoint key holding any of ``names`` (tied parameters share one), or None."""
    return next((key for name in names for key in checkpoint_names(name) if key in index), None)
