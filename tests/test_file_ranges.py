"""hf_tp.loading.file_ranges: row ranges of safetensors tensors read with preadv equal what safetensors reads; a
corrupt or truncated file is a CheckpointError, never garbage."""

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hf_tp.errors import CheckpointError
from hf_tp.loading.checkpoint import CheckpointIndex
from hf_tp.loading.file_ranges import copy_from

TENSORS = {"a.weight": torch.randn(7, 5), "b.weight": torch.randn(4, 3, 2).bfloat16(),
           "c": torch.arange(6, dtype=torch.int64), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3),
           "f8": torch.randn(6, 4).to(torch.float8_e4m3fn)}


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


@pytest.mark.parametrize("sharded", [False, True])
def test_rows_equal_safetensors_slices(tmp_path, sharded):
    names = list(TENSORS)
    files = {"model.safetensors": names} if not sharded else {
        "model-00001-of-00002.safetensors": names[:3], "model-00002-of-00002.safetensors": names[3:]}
    for fname, keys in files.items():
        save_file({k: TENSORS[k] for k in keys}, tmp_path / fname, metadata={"format": "pt"})
    if sharded:
        weight_map = {k: fname for fname, keys in files.items() for k in keys}
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    index = CheckpointIndex(tmp_path)
    for name, full in TENSORS.items():
        handle = safe_open(index.files[name], framework="pt")
        for start, stop in ([(None, None)] + ([(0, 1), (2, full.shape[0]), (1, 3), (3, 3)] if full.dim() else [])):
            if full.dim() and full.shape[0] == 0 and (start or stop):
                continue
            got = index.rows(name, start, stop).load()
            want = handle.get_slice(name)[start:stop] if full.dim() else handle.get_tensor(name)
            assert got.dtype == want.dtype and got.shape == want.shape, (name, start, stop)
            assert torch.equal(_bytes(got), _bytes(want)), (name, start, stop)
    with pytest.raises(CheckpointError, match="rows"):
        index.rows("a.weight", 5, 9)
    index.close()


def test_copy_from_reads_in_place_or_through_a_temporary(tmp_path):
    save_file({"a": TENSORS["a.weight"]}, tmp_path / "model.safetensors")
    index = CheckpointIndex(tmp_path)
    dest = torch.zeros(3, 7, 5)
    address = dest.data_ptr()
    copy_from(dest[1], index.rows("a"))  # a contiguous view: read in place
    cast = torch.zeros(7, 5, dtype=torch.bfloat16)
    copy_from(cast, index.rows("a"))  # another dtype: read, then cast
    strided = torch.zeros(5, 7).t()  # (7, 5), not contiguous
    copy_from(strided, index.rows("a"))
    assert dest.data_ptr() == address and torch.equal(dest[1], TENSORS["a.weight"])
    assert not dest[0].any() and not dest[2].any()
    assert torch.equal(cast, TENSORS["a.weight"].bfloat16())
    assert torch.equal(strided, TENSORS["a.weight"])
    index.close()


def test_a_truncated_file_is_an_error_not_garbage(tmp_path):
    save_file({"w": torch.randn(64, 64)}, tmp_path / "model.safetensors")
    index = CheckpointIndex(tmp_path)
    rows = index.rows("w")
    with open(tmp_path / "model.safetensors", "r+b") as fh:
        fh.truncate(rows.offset + 100)
    with pytest.raises(CheckpointError, match="truncated"):
        rows.load()
    index.close()


def test_data_offsets_that_do_not_match_the_shape_are_refused(tmp_path):
    """A header whose data offsets give fewer bytes than its shape and dtype need: reading rows from it would shift
    every row; it is refused with the file's name. (A sharded checkpoint: its index names the files, and
    safetensors does not read their headers before the rows are read.)"""
    path = tmp_path / "model-00001-of-00001.safetensors"
    save_file({"a": torch.randn(4, 4), "b": torch.randn(4, 4)}, path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": path.name, "b": path.name}}))
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + length])
    header["a"]["data_offsets"] = [header["a"]["data_offsets"][0], header["a"]["data_offsets"][0] + 32]
    text = json.dumps(header, separators=(",", ":")).encode().ljust(length)  # same length: the data stay put
    assert len(text) == length
    path.write_bytes(raw[:8] + text + raw[8 + length:])
    index = CheckpointIndex(tmp_path)
    with pytest.raises(CheckpointError, match="data offsets"):
        index.rows("a")
    index.close()
