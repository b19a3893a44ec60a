"""Top-k and top-p without sorting the vocabulary: the threshold logit found by a two-pass radix select.

Transformers' TopPLogitsWarper sorts the whole vocabulary (128k entries for Llama 3) every sampled step and
keeps the largest logits whose probability mass reaches ``top_p``. The kept set only depends on one threshold
logit, and that threshold can be found without a sort: each logit is mapped to a 32-bit key with the same order,
a histogram of the probability mass over the keys' top 16 bits finds the bucket the threshold lies in, and a
second histogram over the low 16 bits, inside that bucket, finds the key itself. Both passes read the vocabulary
once and need no host sync and no data-dependent shape, so they can be recorded into a CUDA graph.

Ties at the threshold (logits exactly equal) are resolved like a sort would, by count: as many of the tied
tokens are kept as the mass requires, the lowest token ids first (Transformers' sort is not stable, so which
tied ids it keeps is not defined). Masses are summed in fp64, Transformers' cumulative sum runs in fp32: a token
whose cumulative mass lies within rounding of ``1 - top_p`` may be kept by one and dropped by the other.

The decode loop uses these for sampling steps over the whole vocabulary when
``decode_loop.SORT_FREE_SAMPLING`` is set (tests/test_sort_free.py checks them against Transformers' warpers).
"""

from __future__ import annotations

import torch

_LOW_BITS = 16
_BUCKETS = 1 << _LOW_BITS


def sortable_keys(values: torch.Tensor) -> torch.Tensor:
    """int64 keys in [0, 2**32) with the order of the fp32 ``values`` (equal values, -0.0 and 0.0 included,
    get equal keys)."""
    bits = (values.float() + 0.0).view(torch.int32).to(torch.int64) & 0xFFFFFFFF  # + 0.0 makes -0.0 into 0.0
    # Non-negative floats order as their bits; negative ones in reverse, below every non-negative one.
    return torch.where(bits >= 1 << 31, 0xFFFFFFFF - bits, bits + (1 << 31))


def _crossing_bucket(hist: torch.Tensor, need: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the highest bucket b with weight(buckets >= b) >= need (``need`` > 0: a non-empty bucket), and
    the weight of the buckets above it. A row whose whole weight is below ``need`` gets bucket 0."""
    # A cumulative sum of non-negative terms never decreases, in floating point too: the buckets that reach
    # ``need`` are the lowest ones, and their count is the crossing bucket + 1 (no search, no sort).
    at_or_above = hist.flip(-1).cumsum(-1).flip(-1)
    bucket = ((at_or_above >= need.unsqueeze(-1)).sum(-1) - 1).clamp(min=0)
    above = (at_or_above - hist).gather(-1, bucket.unsqueeze(-1)).squeeze(-1)
    return bucket, above


def keep_largest(keys: torch.Tensor, weights: torch.Tensor, need: torch.Tensor) -> torch.Tensor:
    """(rows, vocab) bool: per row, the fewest largest-key entries whose weight reaches ``need`` (rows,), in key
    order, ties at the last key broken by count with the lowest positions first; every entry where the whole
    row weighs less than ``need``; only the largest key (one entry of it) where ``need`` <= 0.

    An entry is kept when the weight of the entries before it (larger keys, and tied ones at lower positions)
    is below ``need``: Transformers' top-p rule with weights = probabilities, its top-k rule with weights = 1."""
    weights = weights.double()
    # need <= 0 asks for the largest key alone: the smallest positive need finds its (non-empty) bucket
    need = need.double().clamp(min=torch.finfo(torch.float64).tiny)
    total = weights.sum(-1)
    high, low = keys >> _LOW_BITS, keys & (_BUCKETS - 1)
    rows = keys.shape[0]
    hist = torch.zeros(rows, _BUCKETS, dtype=torch.float64, device=keys.device)
    top, above_top = _crossing_bucket(hist.scatter_add(-1, high, weights), need)
    inside = high == top.unsqueeze(-1)
    rest = (need - above_top).clamp(min=torch.finfo(torch.float64).tiny)
    hist = torch.zeros(rows, _BUCKETS, dtype=torch.float64, device=keys.device)
    bottom, above_bottom = _crossing_bucket(hist.scatter_add(-1, low, torch.where(inside, weights, 0.0)), rest)
    threshold = (top << _LOW_BITS) | bottom
    rest = rest - above_bottom
    # The entries at the threshold key all weigh the same (equal keys, equal values): keep as many as the
    # remaining need takes, the first ones in position order.
    tied = keys == threshold.unsqueeze(-1)
    tied_weight = torch.where(tied, weights, 0.0).amax(-1).clamp(min=torch.finfo(torch.float64).tiny)
    count = torch.ceil(rest / tied_weight).clamp(min=1)
    kept = (keys > threshold.unsqueeze(-1)) | (tied & (tied.long().cumsum(-1) <= count.unsqueeze(-1)))
    return torch.where((total < need).unsqueeze(-1), torch.ones_like(kept), kept)


def top_k_mask(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """(rows, vocab) bool, what TopKLogitsWarper keeps: every logit >= the top_k-th largest (ties kept);
    everything where ``top_k`` (a 0-d tensor) is 0 or at least the vocabulary."""
    keys = sortable_keys(logits)
    need = top_k.clamp(min=1).to(torch.float64).expand(logits.shape[0])
    kth = torch.where(keep_largest(keys, torch.ones_like(logits, dtype=torch.float64), need), keys,
                      1 << 32).amin(-1, keepdim=True)  # the smallest kept key: the k-th largest value
    return (keys >= kth) | (top_k <= 0) | (top_k >= logits.shape[-1])


def top_p_mask(logits: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """(rows, vocab) bool, what TopPLogitsWarper keeps: the largest logits until their probability mass
    exceeds ``1 - rest`` (``rest``: Transformers' fp32 ``1 - top_p``, a 0-d tensor; below 0: top-p off). The
    best token is always kept (its ``min_tokens_to_keep``)."""
    probs = logits.float().softmax(-1)
    # Kept: the mass of the larger logits is below total - rest (Transformers: cumulative ascending sum > rest).
    need = probs.double().sum(-1) - rest.double()
    kept = keep_largest(sortable_keys(logits), probs, need)
    best = torch.zeros_like(kept).scatter_(-1, logits.argmax(-1, keepdim=True), True)
    return (kept | best) | (rest < 0)
