"""The pinned staging path of the loader on one GPU, against the plain CPU path. Skipped without CUDA.

Every rank's slices of a tp-2 and tp-3 split (column, row = strided, vocab-padded, fused buffers) are
loaded onto the GPU through 4 KB staging buffers, so almost every tensor is cut into many chunks,
and must equal the same rank's slices loaded on the CPU bit for bit.
"""

import pytest
import torch

import hf_tp

from conftest import save_tiny_model, tiny_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none visible here")]


# The smallest buffers (64 KB): many chunks per tensor; fewer buffers than reader threads: they take turns;
# fused buffers.
STAGED = dict(fuse=True, load_chunk_mb=4096 / 2**20, load_buffers=2)


def _load_rank(folder, tp_size, tp_rank, device, dtype):
    """What load_parallel_model does on one rank, without a process group (loading needs none)."""
    from hf_tp.assembly import build_rank_model, plan_model, resolve_tp_config
    from hf_tp.loading import make_stager
    from hf_tp.parallel.comm import TPGroup

    config = resolve_tp_config(hf_tp.TPConfig(**STAGED), device.type, tp_size)
    stager = make_stager(device, config.pinned_load, config.load_chunk_mb, config.load_buffers)
    planned = plan_model(str(folder), tp_size, dtype)
    return build_rank_model(planned, TPGroup(tp_rank, tp_size, device), config, progress=False, stager=stager)


@pytest.mark.parametrize("arch,tp_size", [("llama", 2), ("llama", 3), ("gpt2", 2), ("qwen3_moe", 2)])
def test_staged_gpu_load_equals_cpu_load(tmp_path, arch, tp_size):
    from test_architectures import CONFIGS

    config = (tiny_config("llama", num_attention_heads=9, num_key_value_heads=3, hidden_size=72) if arch == "llama"
              else CONFIGS[arch]())  # llama: uneven GQA at tp 2; gpt2: transposed Conv1D; qwen3_moe: 3-D experts
    folder = save_tiny_model(tmp_path / arch, config)
    device = torch.device("cuda", 0)
    for dtype in (torch.float32, torch.bfloat16):  # bf16: the fp32 file is cast on the GPU
        for rank in range(tp_size):
            on_gpu = _load_rank(folder, tp_size, rank, device, dtype).state_dict()
            on_cpu = _load_rank(folder, tp_size, rank, torch.device("cpu"), dtype).state_dict()
            assert on_gpu.keys() == on_cpu.keys()
            for name, want in on_cpu.items():
                got = on_gpu[name]
                assert got.device.type == "cuda" and got.dtype == want.dtype, name
                assert torch.equal(got.cpu(), want), (arch, tp_size, rank, dtype, name)


def test_stager_strided_cast_and_oversized_rows():
    from hf_tp.loading.staging import PinnedStager

    device = torch.device("cuda", 0)
    stager = PinnedStager(device, nbytes=1024, buffers=1)
    base = torch.randn(64, 300)
    cases = [base, base[:, 100:250], base.t(), base[5, 7], base[:, 3], torch.randn(3, 4096)[:, :2048]]  # last: rows of 8 KB > 1 KB
    got = [stager.to_device(src, dtype) for src in cases for dtype in (torch.float32, torch.bfloat16)]
    stager.finish()
    want = [src.to(dtype) for src in cases for dtype in (torch.float32, torch.bfloat16)]
    for g, w in zip(got, want):
        assert g.is_cuda and g.shape == w.shape and torch.equal(g.cpu(), w)


def test_stager_after_finish_raises_instead_of_waiting():
    from hf_tp.loading.staging import PinnedStager

    stager = PinnedStager(torch.device("cuda"), nbytes=1024, buffers=1)  # no index: the current GPU
    got = stager.to_device(torch.ones(4), torch.float32)
    stager.finish()  # the copy ran on the stager's stream: finish() waits for it
    assert torch.equal(got.cpu(), torch.ones(4))
    stager.finish()  # idempotent
    with pytest.raises(RuntimeError, match="finished"):
        stager.to_device(torch.ones(4), torch.float32)


def test_stager_coalesces_back_to_back_pieces(tmp_path):
    """Pieces that continue each other in device memory share a buffer and one DMA; a gap, another tensor, a
    piece too large or a cast starts anew; file ranges (loading.file_ranges) go the same ways, cut into buffers
    when larger. Every DMA is counted (stager.chunks): coalescing that stopped working would add DMAs."""
    from safetensors.torch import save_file

    from hf_tp.loading.checkpoint import CheckpointIndex
    from hf_tp.loading.staging import PinnedStager

    device = torch.device("cuda", 0)
    stager = PinnedStager(device, nbytes=1024, buffers=1)  # 1 KB: four rows of 64 fp32
    first = torch.zeros(12, 64, device=device)
    other = torch.zeros(3, 64, device=device, dtype=torch.bfloat16)
    rows = torch.randn(12, 64)
    stager.copy_into(first[0:5], rows[0:5], coalesce=True)  # 1280 B > 1 KB: not coalesced, two DMAs
    assert stager.chunks == 2
    for i in (0, 1, 2, 3, 4, 6, 7):  # 0-3 fill a buffer (1 DMA), 4 starts the next (1), 6 leaves a gap (6-7: 1)
        stager.copy_into(first[i], rows[i], coalesce=True)
    stager.copy_into(other[0:2], rows[:2].bfloat16(), coalesce=True)  # another tensor: 6-7 go
    assert stager.chunks == 5
    stager.copy_into(first[8], rows[8].double(), coalesce=True)  # a cast: other[0:2] go, then this alone
    stager.copy_into(first[9:12], rows[9:12], coalesce=False)
    stager.copy_into(other[2], rows[2].bfloat16(), coalesce=True)
    assert stager.chunks == 8  # other[2] pending
    save_file({"w": rows}, tmp_path / "model.safetensors")
    index = CheckpointIndex(tmp_path)
    from_file = torch.zeros(12, 64, device=device)
    stager.copy_into(from_file, index.rows("w"))  # other[2] goes; 3 KB in three buffers
    assert stager.chunks == 12
    pieces = torch.zeros(12, 64, device=device)
    for start in (0, 2, 4, 6):  # two buffers of two ranges each
        stager.copy_into(pieces[start:start + 2], index.rows("w", start, start + 2), coalesce=True)
    stager.flush()
    assert stager.chunks == 14
    stager.finish()
    index.close()
    want = rows.clone()
    want[5] = 0
    assert torch.equal(first.cpu(), want)
    assert torch.equal(other.cpu(), rows[:3].bfloat16())
    assert torch.equal(from_file.cpu(), rows)
    assert torch.equal(pieces.cpu()[:8], rows[:8]) and not pieces[8:].any()
