"""hf_tp/generation/sort_free.py (top-k and top-p thresholds by radix select, no sort) against Transformers'
TopKLogitsWarper and TopPLogitsWarper, which sort the vocabulary. CPU, no processes."""

import pytest
import torch
from transformers import TopKLogitsWarper, TopPLogitsWarper

from hf_tp.generation import sort_free


def _logits(rows: int, vocab: int, scale: float, seed: int, bf16: bool = False) -> torch.Tensor:
    """Random logits: ``scale`` sets how peaked the distribution is; ``bf16`` rounds them (many exact ties)."""
    values = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale
    return values.bfloat16().float() if bf16 else values


def _rest(top_p: float) -> torch.Tensor:
    return torch.tensor(1 - top_p, dtype=torch.float64).float()  # as the decode loop stores it


def test_sortable_keys_order_as_the_floats():
    values = torch.tensor([float("-inf"), -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, 7.25, float("inf")])
    keys = sort_free.sortable_keys(values)
    assert bool((keys[1:] >= keys[:-1]).all()) and int(keys[3]) == int(keys[4])  # -0.0 == 0.0
    assert bool((keys[:3] < keys[3]).all()) and bool((keys[5:] > keys[4]).all())
    assert int(keys.min()) >= 0 and int(keys.max()) < 1 << 32


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16_ties"])
@pytest.mark.parametrize("top_k", [1, 5, 50, 1500, 4000, 5000])
def test_top_k_mask_is_transformers_top_k(top_k, bf16):
    logits = _logits(3, 4000, 2.0, seed=top_k, bf16=bf16)
    want = torch.isfinite(TopKLogitsWarper(top_k=top_k)(None, logits.clone()))
    got = sort_free.top_k_mask(logits, torch.tensor(top_k))
    assert torch.equal(got, want), f"{int((got != want).sum())} tokens differ"
    assert bool(sort_free.top_k_mask(logits, torch.tensor(0)).all())  # 0: top-k off


def _top_p_reference(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    return torch.isfinite(TopPLogitsWarper(top_p=top_p)(None, logits.clone()))


def _near_boundary(logits: torch.Tensor, top_p: float, tokens: torch.Tensor) -> bool:
    """Whether each differing token's mass above it (excluding itself) lies within fp32 rounding of top_p's
    boundary: there the two sums (fp32 sequential, fp64 by buckets) may decide either way."""
    probs = logits.softmax(-1).double()
    for row, token in tokens.tolist():
        above = float(probs[row][probs[row] > probs[row, token]].sum())
        if abs(above - top_p) > 1e-5:
            return False
    return True


@pytest.mark.parametrize("scale", [0.5, 3.0, 12.0], ids=["flat", "peaked", "very_peaked"])
@pytest.mark.parametrize("top_p", [0.0, 0.3, 0.9, 0.95, 0.999, 1.0])
@pytest.mark.parametrize("vocab", [101, 32000, 128256])
def test_top_p_mask_is_transformers_top_p(vocab, top_p, scale):
    logits = _logits(2, vocab, scale, seed=vocab + int(top_p * 1000))
    want = _top_p_reference(logits, top_p) if top_p < 1.0 else torch.ones_like(logits, dtype=torch.bool)
    got = sort_free.top_p_mask(logits, _rest(top_p) if top_p < 1.0 else torch.tensor(-1.0))
    differ = (got != want).nonzero()
    assert len(differ) == 0 or (len(differ) <= 2 and _near_boundary(logits, top_p, differ)), (
        f"{len(differ)} tokens differ: kept {got.sum(-1).tolist()} against {want.sum(-1).tolist()}")
    assert bool(got.any(-1).all())  # the best token is always kept


@pytest.mark.parametrize("top_p", [0.5, 0.9])
def test_top_p_ties_keep_transformers_count(top_p):
    """bf16 logits (exact ties): the same number of tokens as Transformers keeps, and the same tokens outside
    the tie at the threshold (which of the tied ones a sort keeps is not defined)."""
    logits = _logits(4, 32000, 1.0, seed=3, bf16=True)
    want = _top_p_reference(logits, top_p)
    got = sort_free.top_p_mask(logits, _rest(top_p))
    assert torch.equal(got.sum(-1), want.sum(-1))
    for row in range(logits.shape[0]):
        threshold = logits[row][want[row]].min()
        untied = logits[row] != threshold
        assert torch.equal(got[row][untied], want[row][untied])


def test_top_p_with_removed_tokens_and_a_single_survivor():
    """-inf logits (top-k or min-length already removed them) weigh nothing; one finite token is kept alone."""
    logits = _logits(2, 5000, 2.0, seed=9)
    logits[0, 100:] = float("-inf")
    logits[1, 1:] = float("-inf")
    got = sort_free.top_p_mask(logits, _rest(0.9))
    want = _top_p_reference(logits, 0.9)
    assert torch.equal(got, want)
    assert int(got[1].sum()) == 1 and bool(got[1, 0])


def test_compiles_fullgraph():
    """What the decode loop's compiled step traces: no graph break, no data-dependent shape."""
    logits = _logits(2, 3000, 2.0, seed=1)
    compiled = torch.compile(lambda x, k, rest: sort_free.top_p_mask(x.masked_fill(~sort_free.top_k_mask(x, k),
                                                                                   float("-inf")), rest),
                             fullgraph=True, backend="eager")
    want = sort_free.top_p_mask(logits.masked_fill(~sort_free.top_k_mask(logits, torch.tensor(1200)), float("-inf")),
                                _rest(0.9))
    assert torch.equal(compiled(logits, torch.tensor(1200), _rest(0.9)), want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none visible here")
@pytest.mark.parametrize("scale", [0.5, 3.0], ids=["flat", "peaked"])
def test_on_cuda_as_on_cpu_at_llama3_vocabulary(scale):
    """The CUDA form (fp64 atomic histograms: their order varies) keeps what the CPU form keeps, eagerly and
    in a captured CUDA graph, at Llama 3's vocabulary."""
    logits = _logits(2, 128256, scale, seed=5)
    want = sort_free.top_p_mask(logits.masked_fill(~sort_free.top_k_mask(logits, torch.tensor(2000)), float("-inf")),
                                _rest(0.9))

    def select(x, k, rest):
        return sort_free.top_p_mask(x.masked_fill(~sort_free.top_k_mask(x, k), float("-inf")), rest)

    inputs = (logits.cuda(), torch.tensor(2000, device="cuda"), _rest(0.9).cuda())
    assert torch.equal(select(*inputs).cpu(), want)
    select(*inputs)  # warm up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = select(*inputs)
    graph.replay()
    assert torch.equal(captured.cpu(), want)
