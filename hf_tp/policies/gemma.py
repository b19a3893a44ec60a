"""Gemma, Gemma 2 and Gemma 3 (text): Llama's layout. Scaled embeddings, attention and final logit
softcapping, sliding windows and Gemma 3's per-head q/k norms are all per head or per token,
so nothing beyond the Llama rules is needed; the scaled embedding keeps its scale in the
vocab-parallel layer."""

from dataclasses import replace

from .llama import LLAMA

GEMMA = replace(LLAMA, name="gemma", model_types=("gemma", "gemma2", "gemma3_text"))
