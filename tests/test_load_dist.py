"""2 and 3 gloo ranks: hf_tp.AutoModelForCausalLM.from_pretrained(tp_size=N) gives the logits of the
unsplit Transformers model loaded from the same folder, on every rank, and each rank reads only its share.

One spawn per tp_size loads every case in turn (spawning costs seconds of imports); each case is
then checked by its own parametrized test.
"""

from __future__ import annotations

import threading
import time
import traceback
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import load_reference, rel_err, run_ranks_once, save_tiny_model, tiny_config

# fp32 TP vs unsplit: the row-parallel all-reduce and the split matmuls sum the same products in a
# different order, so results differ by rounding only (~1e-7 relative); SPEC 4.5 allows 1e-5.
RTOL = 1e-5

# name -> (arch, config overrides, multi-file checkpoint?[, from_pretrained kwargs]). Every config is
# valid at tp 2 and 3, and every vocab (101, 1001) is divisible by neither, so the vocab shards are padded.
CASES = {
    "llama_tied": ("llama", dict(tie_word_embeddings=True), True),
    # 1 KV head < tp: the KV head is replicated and each rank takes some of the 4 query heads.
    "llama_kv1_untied": ("llama", dict(num_attention_heads=4, num_key_value_heads=1), True),
    # Eager attention repeats KV heads by the module's num_key_value_groups (SDPA infers it from shapes),
    # so this checks that the per-rank head counts were rewritten.
    "llama_kv1_eager": ("llama", dict(num_attention_heads=4, num_key_value_heads=1), True,
                        dict(attn_implementation="eager")),
    # SmolLM2's geometry: 9 q / 3 kv, uneven at tp 2 (q 6+3, kv 2+1), tied embeddings.
    "llama_gqa9_tied": ("llama", dict(hidden_size=72, num_attention_heads=9, num_key_value_heads=3,
                                      tie_word_embeddings=True), True),
    "mistral_single_file": ("mistral", {}, False),
    # o_proj and down_proj biases: a row-parallel bias must be added once, after the all-reduce.
    "llama_row_biases": ("llama", dict(attention_bias=True, mlp_bias=True), True),
    "qwen2_bias_tied": ("qwen2", dict(tie_word_embeddings=True), True),
    "qwen3_head_dim_untied": ("qwen3", {}, True),
}
# A few tens of MB of fp32, for the bytes-read and memory checks; loaded last so that
# one-time costs (lazy imports, first model build) are already paid when its memory is measured.
BIG = "llama_big"
BIG_CONFIG = dict(vocab_size=1001, hidden_size=384, intermediate_size=1152, num_hidden_layers=6,
                  num_attention_heads=12, num_key_value_heads=6)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("load_dist")
    out = {}
    for i, (name, (arch, overrides, sharded, *_)) in enumerate(CASES.items()):
        out[name] = str(save_tiny_model(root / name, tiny_config(arch, **overrides), seed=i,
                                        max_shard_size="50KB" if sharded else None))
    out[BIG] = str(save_tiny_model(root / BIG, tiny_config("llama", **BIG_CONFIG), seed=99, max_shard_size="10MB"))
    return out


@pytest.fixture(scope="module")
def input_ids() -> torch.Tensor:
    return torch.randint(0, 101, (2, 17), generator=torch.Generator().manual_seed(0))


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class _PeakRss:
    """Peak resident set size (anonymous + file-backed pages) while the block runs, sampled every ms.

    ru_maxrss is not used: it is the peak over the whole process life, which here is often set by
    the imports before loading starts, so its growth during the load reads 0 in some runs.
    """

    def __enter__(self):
        self.start = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        self.growth = self.peak - self.start


def _load_kwargs(name: str) -> dict:
    case = CASES.get(name, ())
    return case[3] if len(case) > 3 else {}


def load_and_forward(folders: dict[str, str], input_ids: torch.Tensor, tp_size: int) -> dict:
    """Rank function: load every folder with hf_tp and return its logits and load statistics."""
    import hf_tp
    from transformers import PreTrainedModel

    out = {}
    for name, folder in folders.items():
        try:
            with _PeakRss() as rss:
                model = hf_tp.AutoModelForCausalLM.from_pretrained(folder, tp_size=tp_size, device="cpu",
                                                                   dtype=torch.float32, **_load_kwargs(name))
            with torch.no_grad():
                logits = model(input_ids).logits
            stats = model.hf_tp_load_stats
            out[name] = dict(logits=logits, bytes_read=stats.bytes_read, tensors=stats.tensors,
                             rss_growth=rss.growth, plan_tp=model.hf_tp_plan.tp_size,
                             is_pretrained_model=isinstance(model, PreTrainedModel), cls=type(model).__name__)
            del model
        except Exception:  # reported per case; the other cases still run
            out[name] = traceback.format_exc()
    return out


_RUNS: dict[int, object] = {}


@pytest.fixture(scope="module")
def dist_results(folders, input_ids):
    """tp_size -> per-rank results of load_and_forward, computed once per tp_size."""

    def get(tp_size: int) -> list[dict]:
        return run_ranks_once(_RUNS, load_and_forward, tp_size, folders, input_ids, tp_size, timeout=240)

    return get


def _case(per_rank: list[dict], name: str) -> list[dict]:
    results = []
    for rank, res in enumerate(per_rank):
        if isinstance(res[name], str):
            pytest.fail(f"[rank {rank}] {name} failed:\n{res[name]}")
        results.append(res[name])
    return results


@pytest.mark.parametrize("tp_size", [2, 3])
@pytest.mark.parametrize("name", [*CASES, BIG])
def test_logits_match_transformers(dist_results, folders, input_ids, name, tp_size):
    results = _case(dist_results(tp_size), name)
    reference = load_reference(folders[name], **_load_kwargs(name))
    with torch.no_grad():
        ref = reference(input_ids).logits
    for rank, res in enumerate(results):
        assert res["plan_tp"] == tp_size
        assert res["tensors"] == len(list(reference.parameters()))  # each tensor once, tied ones once
        # SPMD mode returns the Transformers model object itself (SPEC 2), not a wrapper.
        assert res["is_pretrained_model"] and res["cls"] == type(reference).__name__, res["cls"]
        logits = res["logits"]
        assert logits.shape == ref.shape, (rank, logits.shape, ref.shape)  # padding cut off: full vocab, no more
        assert torch.isfinite(logits).all()
        err = rel_err(logits, ref)
        assert err <= RTOL, f"[rank {rank}] {name} tp={tp_size}: max|diff|/max|ref| = {err:.2e} > {RTOL:.0e}"
    for rank, res in enumerate(results[1:], start=1):
        assert torch.equal(res["logits"], results[0]["logits"]), f"rank {rank} logits differ from rank 0's"


def _checkpoint_bytes(folder: str) -> tuple[int, int, int]:
    """(total tensor bytes, bytes of split tensors, bytes of replicated ones) of a Llama checkpoint.

    Read from the safetensors headers, independently of hf_tp's plan: in a Llama the 1-D tensors
    (RMSNorm weights) are replicated and every 2-D tensor is split.
    """
    split = replicated = 0
    for file in Path(folder).glob("*.safetensors"):
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                s = f.get_slice(key)
                n = 4  # fp32
                for d in s.get_shape():
                    n *= d
                if len(s.get_shape()) == 1:
                    replicated += n
                else:
                    split += n
    return split + replicated, split, replicated


@pytest.mark.parametrize("tp_size", [2, 3])
def test_each_rank_reads_only_its_share(dist_results, folders, tp_size):
    results = _case(dist_results(tp_size), BIG)
    total, split, replicated = _checkpoint_bytes(folders[BIG])
    file_bytes = sum(p.stat().st_size for p in Path(folders[BIG]).glob("*.safetensors"))
    assert 20e6 < total <= file_bytes < 80e6  # "a few tens of MB"
    # vocab 1001 is padded to ceil(1001 / tp) rows per rank (embed_tokens and lm_head): 2 rows of slack.
    slack = 2 * 2 * BIG_CONFIG["hidden_size"] * 4
    for rank, res in enumerate(results):
        assert split / tp_size * 0.99 <= res["bytes_read"] - replicated <= split / tp_size + slack, (
            f"rank {rank} read {res['bytes_read']} bytes; its share is {split / tp_size:.0f} + {replicated} replicated")
        assert res["bytes_read"] < 0.6 * total


@pytest.mark.parametrize("tp_size", [2, 3])
def test_load_peak_rss_well_below_checkpoint(dist_results, folders, tp_size):
    """Loose: a rank that materialised the whole checkpoint would grow by >= its size. Measured here
    0.52-0.65 x the checkpoint (own shards + the file pages that column slices of row-parallel
    weights touch); the bound leaves room for allocator noise."""
    results = _case(dist_results(tp_size), BIG)
    total, _, _ = _checkpoint_bytes(folders[BIG])
    for rank, res in enumerate(results):
        assert res["rss_growth"] < 0.85 * total, f"rank {rank}: RSS grew {res['rss_growth'] / total:.2f} x the checkpoint"


@pytest.mark.parametrize("source", [torch.arange(600.).view(20, 30), torch.arange(600.).view(20, 30)[:, 7:19],
                                    torch.arange(600.).view(20, 30).t(), torch.tensor(3.0), torch.arange(600.)[::3],
                                    torch.arange(600.).view(20, 30)[:, 3:25],  # strided rows of 88 bytes > 64
                                    torch.arange(1200.).view(4, 10, 30)[:, :, 2:28]])
def test_staging_chunks_cover_the_tensor_once_within_the_buffer_size(source):
    """The loader's GPU staging cuts each slice into pieces of at most one pinned buffer (whole rows
    when strided, rows of rows when a row is larger); copying the pieces in order must rebuild the
    tensor exactly."""
    from hf_tp.loading.staging import _chunks

    target = torch.full(source.shape, -1.0)
    for dst, src in _chunks(target, source, nbytes=64):
        assert src.numel() * src.element_size() <= 64
        dst.copy_(src)
    assert torch.equal(target, source)


@pytest.mark.parametrize("source", [torch.arange(600.).view(20, 30), torch.arange(1440.).view(40, 36)[:, 3:33]])
def test_staging_chunks_fill_a_strided_target(source):
    """A contiguous or strided slice into a column range of a larger tensor (an expert's input columns of
    a row-split down_proj, several pieces per rank): cut by rows, the columns outside the range untouched."""
    from hf_tp.loading.staging import _chunks

    whole = torch.full((source.shape[0], 44), -1.0)
    target = whole[:, 9:39]
    for dst, src in _chunks(target, source, nbytes=64):
        assert src.numel() * src.element_size() <= 64
        dst.copy_(src)
    assert torch.equal(target, source)
    assert (whole[:, :9] == -1).all() and (whole[:, 39:] == -1).all()
