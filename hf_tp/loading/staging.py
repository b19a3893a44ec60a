"""Host -> GPU copies of checkpoint slices through a few reusable pinned buffers.

Why not ``tensor.pin_memory().to(device)`` per tensor: every new size asks PyTorch's host
allocator for fresh pinned memory, and pinning pages (cudaHostAlloc) is slow and serialised in
the driver, so reader threads queue behind each other. Here each reader thread owns two pinned
buffers of ``chunk_bytes`` and its own CUDA stream: it copies a chunk of the (memory-mapped)
slice into one buffer while the previous chunk's DMA from the other buffer is still running.
Reads out of the page cache, strided gathers (row-parallel slices) and host-to-device transfers
of different threads all overlap, and only a few MB per thread are ever pinned.
"""

from __future__ import annotations

import os
import threading

import torch


def chunk_bytes() -> int:
    """Bytes per pinned staging buffer: $HF_TP_LOAD_CHUNK_MB (default 16 MB; two per reader thread)."""
    return int(float(os.environ.get("HF_TP_LOAD_CHUNK_MB", "16")) * 2**20)


class _Slot:
    """One pinned buffer and the event that says when its last DMA finished."""

    def __init__(self, nbytes: int, stream: torch.cuda.Stream):
        self.buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        self.done = torch.cuda.Event()
        self.done.record(stream)


class PinnedStager:
    """Copies CPU tensors (any strides, the file's dtype) into CUDA tensors. Thread-safe: each
    thread gets its own stream and pair of buffers on first use. Call ``finish()`` once all
    copies were issued: it waits for them and gives the pinned memory back."""

    def __init__(self, device: torch.device, nbytes: int | None = None):
        self.device = device
        self.nbytes = nbytes or chunk_bytes()
        self._local = threading.local()
        self._all: list[_Slot] = []
        self._lock = threading.Lock()

    def _thread_state(self):
        state = getattr(self._local, "state", None)
        if state is None:
            stream = torch.cuda.Stream(self.device)
            # Whatever the default stream still has queued (allocations are free, but be safe) comes first.
            stream.wait_stream(torch.cuda.default_stream(self.device))
            slots = [_Slot(self.nbytes, stream) for _ in range(2)]
            with self._lock:
                self._all.extend(slots)
            state = self._local.state = [stream, slots, 0]
        return state

    def to_device(self, source: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        target = torch.empty(source.shape, dtype=dtype, device=self.device)
        self.copy_into(target, source)
        return target

    def copy_into(self, target: torch.Tensor, source: torch.Tensor) -> None:
        """``target`` (contiguous, on the GPU) gets ``source``'s values, cast to its dtype on the GPU."""
        if source.numel() == 0:
            return
        state = self._thread_state()
        stream, slots = state[0], state[1]
        for dst, src in _chunks(target, source, self.nbytes):
            slot = slots[state[2]]
            state[2] ^= 1
            nbytes = src.numel() * src.element_size()
            if nbytes > self.nbytes:  # one row larger than a buffer (rare): a one-off pinned copy
                staging = src.contiguous().pin_memory()
            else:
                slot.done.synchronize()  # its previous DMA has finished: the buffer may be overwritten
                staging = slot.buffer[:nbytes].view(src.dtype).view(src.shape)
                staging.copy_(src)  # page cache (mmap) -> pinned; gathers strided slices
            with torch.cuda.stream(stream):
                if src.dtype == dst.dtype:
                    dst.copy_(staging, non_blocking=True)
                else:  # move in the file's dtype, cast on the GPU (a temporary on this stream)
                    dst.copy_(staging.to(self.device, non_blocking=True))
                slot.done.record(stream)
                if nbytes > self.nbytes:
                    stream.synchronize()  # the one-off buffer is freed on return

    def finish(self) -> None:
        torch.cuda.synchronize(self.device)
        self._all.clear()
        self._local = threading.local()
        empty = getattr(torch._C, "_host_emptyCache", None)
        if empty is not None:  # hand the staging buffers back to the OS instead of keeping them pinned
            empty()


def _chunks(target: torch.Tensor, source: torch.Tensor, nbytes: int):
    """Matching (target, source) pieces of at most ``nbytes`` of the source each.

    Contiguous sources are cut anywhere (flat views); strided ones (slices of the last
    dimension, transposed weights) by whole rows of dimension 0, which the copy into the pinned
    buffer gathers.
    """
    if source.shape != target.shape:
        raise ValueError(f"staging shape mismatch: {tuple(source.shape)} -> {tuple(target.shape)}")
    if source.dim() == 0 or source.is_contiguous():
        flat_src, flat_dst = source.reshape(-1), target.view(-1)
        step = max(1, nbytes // source.element_size())
        for start in range(0, flat_src.numel(), step):
            yield flat_dst[start:start + step], flat_src[start:start + step]
        return
    row_bytes = source[0].numel() * source.element_size()
    rows = max(1, nbytes // row_bytes)
    for start in range(0, source.shape[0], rows):
        yield target[start:start + rows], source[start:start + rows]
