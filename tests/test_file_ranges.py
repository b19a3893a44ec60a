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


def test_views_of_the_map_equal_safetensors_and_outlive_close(tmp_path):
    """index.view: every tensor as a view of the file's memory map, equal to what safetensors reads, its column
    slices included; a view taken before close() stays readable (the map goes when its last view does). A
    tensor whose data does not start at a multiple of its dtype's size gives None (the caller reads it through
    safetensors)."""
    save_file(TENSORS, tmp_path / "model.safetensors", metadata={"format": "pt"})
    index = CheckpointIndex(tmp_path)
    handle = safe_open(index.files["a.weight"], framework="pt")
    for name, full in TENSORS.items():
        view = index.view(name)
        want = handle.get_tensor(name)
        assert view.dtype == want.dtype and view.shape == want.shape and torch.equal(_bytes(view), _bytes(want))
    columns = index.view("a.weight")[:, 1:4]
    assert not columns.is_contiguous() and torch.equal(columns, TENSORS["a.weight"][:, 1:4])
    index.close()
    assert torch.equal(columns.clone(), TENSORS["a.weight"][:, 1:4])
    del columns  # the file is rewritten next: nothing may read its old map
    # a file written by hand: a float32 tensor right after one byte, so its data starts at an odd offset
    header = json.dumps({"x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                         "y": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]}}).encode()
    header += b" " * (-len(header) % 8)
    y = torch.tensor([1.5, -2.0])
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\x07" + _bytes(y).numpy().tobytes())
    index = CheckpointIndex(tmp_path)
    assert index.view("y") is None and torch.equal(index.rows("y").load(), y)
    assert index.view("x").tolist() == [7]
    index.close()
