"""hf_tp.loading.file_ranges: row ranges of safetensors tensors read with preadv equal what safetensors reads."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hf_tp.loading.checkpoint import CheckpointIndex
from hf_tp.loading.file_ranges import copy_from


def test_rows_equal_safetensors_slices(tmp_path):
    tensors = {"a.weight": torch.randn(7, 5), "b.weight": torch.randn(4, 3, 2).bfloat16(),
               "c": torch.arange(6, dtype=torch.int64), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3),
               "f8": torch.randn(6, 4).to(torch.float8_e4m3fn)}
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    index = CheckpointIndex(tmp_path)
    handle = safe_open(tmp_path / "model.safetensors", framework="pt")
    for name, full in tensors.items():
        for start, stop in ([(None, None)] + ([(0, 1), (2, full.shape[0]), (1, 3), (3, 3)] if full.dim() else [])):
            if full.dim() and full.shape[0] == 0 and (start or stop):
                continue
            got = index.rows(name, start, stop).load()
            want = handle.get_slice(name)[start:stop] if full.dim() else handle.get_tensor(name)
            assert got.dtype == want.dtype and got.shape == want.shape, (name, start, stop)
            assert torch.equal(got.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8)), (name, start, stop)
    with pytest.raises(IndexError):
        index.rows("a.weight", 5, 9)
    # Into a view of a larger CPU tensor (read in place) and into a cast target (through a temporary)
    dest = torch.zeros(3, 7, 5)
    copy_from(dest[1], index.rows("a.weight"))
    copy_from(dest[2].bfloat16(), index.rows("a.weight"))  # not the same memory: only checks it runs
    assert torch.equal(dest[1], tensors["a.weight"]) and not dest[0].any() and not dest[2].any()
    index.close()


def test_a_truncated_file_is_an_error_not_garbage(tmp_path):
    save_file({"w": torch.randn(64, 64)}, tmp_path / "model.safetensors")
    index = CheckpointIndex(tmp_path)
    rows = index.rows("w")
    with open(tmp_path / "model.safetensors", "r+b") as fh:
        fh.truncate(rows.offset + 100)
    with pytest.raises(OSError, match="truncated"):
        rows.load()
    index.close()
