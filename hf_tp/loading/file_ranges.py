"""Contiguous byte ranges of safetensors files, read with ``os.preadv`` straight into a caller's memory.

Why not only ``safe_open(...).get_slice``: a MoE checkpoint stores thousands of 3 MB expert tensors, and copying
each from safetensors' memory map into the pinned staging buffer ran at about 4 GB/s per reader thread on the
H200 machine (page faults on the mapping, threads that did not scale), where whole 32 MB chunks of dense tensors
moved at 34 GB/s (benchmarks/RESULTS.md, 2026-12-04). ``preadv`` copies from the page cache in the kernel, with
the GIL released and no fault per page, into memory that is already mapped (the pinned buffer).

Only the safetensors layout is read here (an 8-byte little-endian header length, a JSON header giving each
tensor's dtype, shape and data offsets, then the data), and checked as far as this reads it: the header inside
the file, each range's size equal to its shape times its dtype's size, its bytes inside the file.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError

# safetensors dtype names that map one to one onto torch dtypes (others go through safetensors).
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


@dataclass(frozen=True)
class FileRange:
    """Bytes [offset, offset + nbytes) of ``file``: a tensor of ``dtype`` and ``shape``, stored contiguously."""
    file: Path
    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    reader: "RangeReader"

    @property
    def nbytes(self) -> int:
        return self.numel() * self.element_size()

    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count

    def element_size(self) -> int:
        return self.dtype.itemsize

    def read_into(self, out: torch.Tensor) -> None:
        """Fill ``out`` (CPU, contiguous, this range's dtype and number of elements) with the range's bytes."""
        if out.device.type != "cpu" or not out.is_contiguous() or out.dtype != self.dtype or out.numel() != self.numel():
            raise ValueError(f"cannot read {self.shape} {self.dtype} into {tuple(out.shape)} {out.dtype} on {out.device}")
        if self.nbytes:
            self.reader.read(self.file, self.offset, out.reshape(-1).view(torch.uint8).numpy())

    def load(self) -> torch.Tensor:
        """The range as a new CPU tensor."""
        out = torch.empty(self.shape, dtype=self.dtype)
        self.read_into(out)
        return out


class RangeReader:
    """Headers and open file descriptors of a checkpoint's files, shared by the loader's threads."""

    def __init__(self):
        self._headers: dict[Path, tuple[int, dict, int]] = {}  # data start, header, file size
        self._fds: dict[Path, int] = {}
        self._maps: dict[Path, torch.Tensor] = {}  # the whole file as uint8, memory-mapped (``view``)
        self._lock = threading.Lock()

    def _header(self, file: Path) -> tuple[int, dict]:
        with self._lock:
            if file not in self._headers:
                size = os.path.getsize(file)
                with open(file, "rb") as fh:
                    length = int.from_bytes(fh.read(8), "little")
                    if 8 + length > size:
                        raise CheckpointError(f"{file}: its header says {length} bytes, past the end of the file; "
                                              "re-download or re-save it.")
                    header = json.loads(fh.read(length))
                self._fds[file] = os.open(file, os.O_RDONLY)
                self._headers[file] = (8 + length, header, size)
            return self._headers[file][:2]

    def rows(self, file: Path, name: str, start: int | None = None, stop: int | None = None) -> FileRange | None:
        """Rows [start, stop) of dimension 0 of tensor ``name`` (all rows when None): contiguous on disk. None
        when the dtype has no torch equivalent here (the caller reads through safetensors)."""
        if not hasattr(os, "preadv"):  # not every platform has it: safetensors reads instead
            return None
        data_start, header = self._header(file)
        info = header[name]
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            return None
        shape = tuple(info["shape"])
        begin, end = info["data_offsets"]
        row_bytes = dtype.itemsize
        for size in shape[1:]:
            row_bytes *= size
        stored = row_bytes * (shape[0] if shape else 1)
        if end - begin != stored or data_start + end > self._headers[file][2]:
            raise CheckpointError(f"{file}: tensor {name} ({info['dtype']} {list(shape)}) has data offsets {[begin, end]}, "
                                  f"not {stored} bytes inside the file; the file is corrupt: re-download or re-save it.")
        if not shape:
            return FileRange(file, data_start + begin, dtype, shape, self)
        start, stop = 0 if start is None else start, shape[0] if stop is None else stop
        if not 0 <= start <= stop <= shape[0]:
            raise CheckpointError(f"{file}: rows [{start}, {stop}) of tensor {name}, which has {shape[0]}; the "
                                  "checkpoint does not match its config.")
        return FileRange(file, data_start + begin + start * row_bytes, dtype, (stop - start, *shape[1:]), self)

    def view(self, file: Path, name: str) -> torch.Tensor | None:
        """Tensor ``name`` as a CPU view of the file's memory map: nothing is read until it is copied, so a strided
        slice of it (a row-parallel weight's columns) goes from the page cache to its destination in one copy,
        where safetensors' ``get_slice`` first gathers it into a new tensor. None where ``rows`` gives None."""
        rng = self.rows(file, name)
        if rng is None or rng.offset % rng.element_size():  # a map's view of a dtype must start at a multiple of it
            return None
        with self._lock:
            mapped = self._maps.get(file)
            if mapped is None:
                import mmap

                # ACCESS_COPY: a private mapping, so that the tensor is writable (torch warns on read-only buffers);
                # nothing writes to it
                with open(file, "rb") as fh:
                    mapped = self._maps[file] = torch.frombuffer(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY),
                                                                 dtype=torch.uint8)
        return mapped[rng.offset:rng.offset + rng.nbytes].view(rng.dtype).view(rng.shape)

    def read(self, file: Path, offset: int, out) -> None:
        """``out`` (a writable uint8 buffer, e.g. a tensor's numpy view) <- the file's bytes from ``offset``."""
        with self._lock:
            fd = self._fds[file]
        nbytes, done = len(out), 0
        while done < nbytes:  # preadv may return less than asked
            got = os.preadv(fd, [out[done:]], offset + done)
            if got <= 0:
                raise CheckpointError(f"{file}: read {done} of {nbytes} bytes at offset {offset}: the file is truncated; "
                                      "re-download or re-save it.")
            done += got

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self._headers.clear()
            # unmapped when the last view of each map is freed (an mmap cannot be closed while a tensor uses it)
            self._maps.clear()


def copy_from(target: torch.Tensor, source: "FileRange | torch.Tensor") -> None:
    """``target`` (a tensor or view, on any device) gets ``source``'s values, cast to its dtype, without staging:
    a file range is read straight into a contiguous CPU target of its dtype, else into a temporary first."""
    with torch.no_grad():
        if isinstance(source, FileRange):
            if (target.device.type == "cpu" and target.is_contiguous() and target.dtype == source.dtype
                    and tuple(target.shape) == source.shape):
                source.read_into(target)
                return
            source = source.load()
        target.copy_(source)
