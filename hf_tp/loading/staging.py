"""Host -> GPU copies of checkpoint slices through a small pool of reusable pinned buffers.

Why not ``tensor.pin_memory().to(device)`` per tensor: that pins fresh host memory for every new
tensor size (pinning costs time in the driver and serialises the reader threads) and copies each
tensor twice on the host. Here a few buffers are pinned once, in a background thread started
before the model skeleton is built, so the pinning overlaps that work (benchmarks/RESULTS.md:
16-36 ms for 4-8 buffers of 8 MB on the lent H100, all hidden). A reader thread
takes the least recently used buffer, copies the next chunk of its (memory-mapped) slice into it
and queues the DMA on its own CUDA stream; the buffer goes back to the pool at once and is reused
when its DMA's event has fired. Page-cache reads, strided gathers (row-parallel slices) and
host-to-device transfers of different chunks and threads overlap.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from contextlib import contextmanager

import torch

from .file_ranges import FileRange


# Defaults of TPConfig.load_chunk_mb and load_buffers: 32 MB (one H200, 2026-12-04: the 8B shape at 34 GB/s
# against 17.6 with 8 MB) and 4 buffers (8 were no faster on the lent H100, 2026-11-25).
DEFAULT_CHUNK_BYTES = 32 * 2**20
DEFAULT_BUFFERS = 4
MIN_CHUNK_BYTES = 64 * 1024  # the smallest buffer make_stager asks for


class _Slot:
    """One pinned buffer and the event that says when its last DMA finished."""

    def __init__(self, nbytes: int):
        self.buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        self.done = torch.cuda.Event()  # never recorded: synchronize() returns at once


class _Finished(Exception):
    """Put in the pool by finish()."""


class PinnedStager:
    """Copies CPU tensors (any strides, the file's dtype) into CUDA tensors. Thread-safe. Pinning
    starts at construction; call ``finish()`` once all copies were issued: it waits for them and
    gives the pinned memory back."""

    def __init__(self, device: torch.device, nbytes: int | None = None, buffers: int | None = None):
        if device.index is None:  # "cuda": the caller's current GPU (the pinning thread needs an index)
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.nbytes = nbytes or DEFAULT_CHUNK_BYTES
        self.pin_seconds = 0.0  # how long pinning the pool took (in the background)
        # Summed over the reader threads: waiting for a free buffer (its previous DMA), copying into it (page
        # cache -> pinned), issuing the DMA. They tell a host-bound load from a transfer-bound one.
        self.seconds = {"wait_buffer": 0.0, "host_copy": 0.0, "issue_dma": 0.0}
        self.chunks = 0
        self._count_lock = threading.Lock()
        self._pool: queue.Queue[_Slot | BaseException] = queue.Queue()
        self._pinned = 0  # buffers made; finish() expects them all back
        self._local = threading.local()
        self._pinning = threading.Thread(target=self._pin, args=(buffers or DEFAULT_BUFFERS,), daemon=True,
                                         name="hf_tp-pin-staging")
        self._pinning.start()

    def _pin(self, count: int) -> None:
        start = time.perf_counter()
        try:
            torch.cuda.set_device(self.device)
            for _ in range(count):
                self._pool.put(_Slot(self.nbytes))
                self._pinned += 1
        except BaseException as exc:  # handed to the reader threads, which raise it
            self._pool.put(exc)
        self.pin_seconds = time.perf_counter() - start

    def _take(self) -> _Slot:
        slot = self._pool.get()
        if isinstance(slot, _Finished):
            self._pool.put(slot)
            raise RuntimeError("this PinnedStager was finished; make a new one (hf_tp.loading.make_stager)")
        if isinstance(slot, BaseException):
            self._pool.put(slot)  # every other reader raises it too
            raise RuntimeError(f"could not pin host memory for staging ({slot}); pass tp_config=hf_tp.TPConfig(pinned_load=False)") from slot
        return slot

    def _stream(self) -> torch.cuda.Stream:
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(self.device)
            # Whatever the default stream still has queued (allocations are free, but be safe) comes first.
            stream.wait_stream(torch.cuda.default_stream(self.device))
        return stream

    def to_device(self, source: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        target = torch.empty(source.shape, dtype=dtype, device=self.device)
        self.copy_into(target, source)
        return target

    def copy_into(self, target: torch.Tensor, source: torch.Tensor, coalesce: bool = False) -> None:
        """``target`` (on the GPU; a view such as an expert's column range is cut by rows) gets ``source``'s values,
        cast to its dtype on the GPU.

        ``coalesce=True``: small pieces that land back to back in device memory (a MoE layer's experts, read per
        expert and part) share one buffer and one DMA, issued when the next piece does not follow or fit, or at
        ``flush()``, which the caller must call in the same thread before the target is used. Fewer, larger DMAs:
        with the readers contending, issuing one took about 0.5 ms (benchmarks/RESULTS.md, 2026-12-04)."""
        if source.numel() == 0:
            return
        if coalesce and self._append(target, source):
            return
        self.flush()  # this thread holds at most one buffer at a time: no reader waits on a pool it holds
        if isinstance(source, FileRange):
            if not (target.is_contiguous() and target.dtype == source.dtype and tuple(target.shape) == source.shape):
                source = source.load()  # a cast or a strided target: through a host tensor
            else:
                for dst, piece in _range_chunks(target, source, self.nbytes):
                    self._stage(dst, piece)
                return
        for dst, src in _chunks(target, source, self.nbytes):
            self._stage(dst, src)

    def _stage(self, dst: torch.Tensor, source) -> None:
        """One piece (a tensor or a file range, at most a buffer) into a free buffer, then its DMA to ``dst``."""
        t0 = time.perf_counter()
        slot = self._take()
        try:
            slot.done.synchronize()  # its previous DMA has finished: the buffer may be overwritten
            t1 = time.perf_counter()
            staging = slot.buffer[:source.numel() * source.element_size()].view(source.dtype).view(source.shape)
            _fill(staging, source)
            t2 = time.perf_counter()
            stream = self._stream()
            self._dma(dst, staging, stream)
            slot.done.record(stream)
            t3 = time.perf_counter()
        finally:
            self._pool.put(slot)
        self._count(t1 - t0, t2 - t1, t3 - t2, 1)

    def _count(self, wait: float, copy: float, issue: float, chunks: int) -> None:
        with self._count_lock:
            self.seconds["wait_buffer"] += wait
            self.seconds["host_copy"] += copy
            self.seconds["issue_dma"] += issue
            self.chunks += chunks

    def _append(self, target: torch.Tensor, source) -> bool:
        """Copy ``source`` into this thread's pending buffer if ``target`` continues its device range; False when
        the piece cannot be coalesced (cast, strided, larger than a buffer): the caller copies it alone."""
        nbytes = source.numel() * source.element_size()
        if (source.dtype != target.dtype or not target.is_contiguous() or tuple(source.shape) != tuple(target.shape)
                or nbytes > self.nbytes):
            return False
        pending = getattr(self._local, "pending", None)
        if pending is not None and (target.untyped_storage().data_ptr() != pending["storage"]
                                    or target.data_ptr() != pending["end"] or pending["used"] + nbytes > self.nbytes):
            self.flush()
            pending = None
        t0 = time.perf_counter()
        if pending is None:
            slot = self._take()
            try:
                slot.done.synchronize()
            except BaseException:
                self._pool.put(slot)  # a CUDA error: the buffer goes back, or the other readers would wait for it
                raise
            pending = self._local.pending = {"slot": slot, "first": target, "storage": target.untyped_storage().data_ptr(),
                                             "end": target.data_ptr(), "used": 0}
        t1 = time.perf_counter()
        used = pending["used"]
        _fill(pending["slot"].buffer[used:used + nbytes].view(source.dtype).view(source.shape), source)
        pending["used"], pending["end"] = used + nbytes, pending["end"] + nbytes
        self._count(t1 - t0, time.perf_counter() - t1, 0.0, 0)
        return True

    def flush(self) -> None:
        """Issue this thread's pending coalesced DMA (``copy_into(coalesce=True)``), if any."""
        pending = getattr(self._local, "pending", None)
        if pending is None:
            return
        self._local.pending = None
        slot, first, used = pending["slot"], pending["first"], pending["used"]
        try:
            t0 = time.perf_counter()
            # The device bytes [first, first + used) of first's storage, as one uint8 tensor.
            dst = torch.empty(0, dtype=torch.uint8, device=first.device).set_(
                first.untyped_storage(), first.storage_offset() * first.element_size(), (used,))
            stream = self._stream()
            self._dma(dst, slot.buffer[:used], stream)
            slot.done.record(stream)
        finally:
            self._pool.put(slot)
        self._count(0.0, 0.0, time.perf_counter() - t0, 1)

    def _dma(self, dst: torch.Tensor, staging: torch.Tensor, stream: torch.cuda.Stream) -> None:
        with torch.cuda.stream(stream):
            if staging.dtype == dst.dtype:
                dst.copy_(staging, non_blocking=True)
            else:  # move in the file's dtype, cast on the GPU (a temporary on this stream)
                dst.copy_(staging.to(self.device, non_blocking=True))

    def finish(self, quiet: bool = False) -> None:
        """Wait for every copy, then unpin the buffers. Idempotent. Also call it on error paths
        (copies already queued must finish before their targets are freed), with ``quiet=True``
        so a CUDA error here does not hide the error being raised."""
        self._pinning.join()
        try:
            self.flush()  # the calling thread's coalesced pieces, if it left any
            torch.cuda.synchronize(self.device)
        except Exception:
            if not quiet:
                raise
        returned, again = 0, False
        while not self._pool.empty():
            item = self._pool.get()
            returned += isinstance(item, _Slot)
            again |= isinstance(item, _Finished)  # finished before: nothing to check
        self._pool.put(_Finished())  # a later copy raises instead of waiting for a buffer for ever
        self._local = threading.local()
        empty = getattr(torch._C, "_host_emptyCache", None)
        if empty is not None:  # hand the staging buffers back to the OS instead of keeping them pinned
            empty()
        if returned < self._pinned and not again and not quiet:  # another thread's coalesced pieces were never flushed: lost
            raise RuntimeError(f"PinnedStager.finish: {self._pinned - returned} staging buffer(s) still held by a "
                               "reader thread: call flush() in each thread that used copy_into(coalesce=True).")


@contextmanager
def finished_at_exit(stager: PinnedStager | None):
    """Finish ``stager`` (if any) when the block ends, quietly when the block raised."""
    if stager is None:
        yield
        return
    try:
        yield
    except BaseException:
        stager.finish(quiet=True)
        raise
    stager.finish()


def _fill(staging: torch.Tensor, source) -> None:
    """Page cache -> pinned: a file range with one preadv, a tensor (memory-mapped, any strides) with a copy."""
    if isinstance(source, FileRange):
        source.read_into(staging)
    else:
        staging.copy_(source)


def _range_chunks(target: torch.Tensor, source: FileRange, nbytes: int):
    """Matching (flat target view, file range) pieces of at most ``nbytes``; ``target`` is contiguous."""
    flat = target.view(-1)
    step = max(1, nbytes // source.element_size())
    for start in range(0, flat.numel(), step):
        piece = flat[start:start + step]
        yield piece, dataclasses.replace(source, offset=source.offset + start * source.element_size(),
                                         shape=(piece.numel(),))


def _chunks(target: torch.Tensor, source: torch.Tensor, nbytes: int):
    """Matching (target, source) pieces of at most ``nbytes`` of the source each.

    Contiguous sources going to contiguous targets are cut anywhere (flat views); strided ones (slices
    of the last dimension, transposed weights; a column range of a 3-D expert parameter) by whole rows
    of dimension 0, which the copy into the pinned buffer gathers (and the DMA scatters); a row larger
    than ``nbytes`` is cut the same way, one level down.
    """
    if source.shape != target.shape:
        raise ValueError(f"staging shape mismatch: {tuple(source.shape)} -> {tuple(target.shape)}")
    if source.dim() == 0 or (source.is_contiguous() and target.is_contiguous()):
        flat_src, flat_dst = source.reshape(-1), target.view(-1)
        step = max(1, nbytes // source.element_size())
        for start in range(0, flat_src.numel(), step):
            yield flat_dst[start:start + step], flat_src[start:start + step]
        return
    row_bytes = source[0].numel() * source.element_size()
    if row_bytes > nbytes:
        for row in range(source.shape[0]):
            yield from _chunks(target[row], source[row], nbytes)
        return
    rows = nbytes // row_bytes
    for start in range(0, source.shape[0], rows):
        yield target[start:start + rows], source[start:start + rows]
