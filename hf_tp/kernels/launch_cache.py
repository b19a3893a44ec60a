"""Launching an already compiled Triton kernel again without Triton's per-call dispatch.

``kernel[grid](...)`` binds and specializes every argument, builds a cache key and looks the compiled kernel up on
each call, and its launcher builds launch metadata and calls the launch hooks: about 15 µs of host time per launch
in Triton 3.6 on the H100 machine, more than all of bf16's ``F.linear`` (13 µs). An eager prefill
forward is host-bound (one H100, Llama-3.2-1B shape, 128 tokens: 10.9 ms wall for 2.7 ms of GPU work in bf16;
benchmarks/RESULTS.md, twentieth session), so each FP8 layer's launch cost is the prefill's time.

``launch`` keeps the compiled kernel per everything its compiled form can depend on: each tensor's dtype, device
and 16-byte alignment, every other argument's exact value (ints, floats, bools, None), the constexprs and the
launch options. A repeat call then goes straight to the compiled kernel's launcher (``CompiledKernel.run``, the
C function that JITFunction.run ends in). The first call of each key goes through Triton's dispatch as usual, as
does every call while a launch hook is registered (a profiler such as Proton; torch.profiler sees the launches
either way) and every call where the compiled kernel has no such launcher (Triton's CPU interpreter).
"""

from __future__ import annotations

import torch

_COMPILED: dict = {}
# Keys hold exact sizes, so every prompt length adds entries (Triton's own cache keys sizes by divisibility only):
# past this many the cache starts again, and Triton's dispatch refills it.
MAX_ENTRIES = 4096
_SLOW = object()  # a key whose compiled kernel cannot be launched directly: always Triton's dispatch
# The usual dispatch for every call (tests compare the two).
ENABLED = True


def _arg_key(arg):
    if type(arg) is int:
        return arg
    if isinstance(arg, torch.Tensor):
        return (arg.dtype, arg.get_device(), arg.data_ptr() % 16 == 0)
    return (type(arg), arg)


_RUNTIME_KNOBS = None  # triton.knobs.runtime, looked up once (an import statement per launch costs a µs of host time)


def _hooks_set() -> bool:
    """Whether a launch hook is registered (a profiler such as Proton): then every call takes Triton's dispatch,
    which calls it. Triton 3.x keeps the hooks as a chain that is never None (``knobs.runtime``)."""
    global _RUNTIME_KNOBS
    runtime = _RUNTIME_KNOBS
    if runtime is None:
        try:
            from triton import knobs
        except ImportError:  # Triton before 3.4 keeps its hooks elsewhere: its dispatch every time
            return True
        runtime = _RUNTIME_KNOBS = knobs.runtime
    hook = runtime.launch_enter_hook
    return hook is not None and bool(getattr(hook, "calls", True))


def _stream_getters(active):
    """(current device, current stream of a device) as Triton's launch asks them. Its CUDA driver asks
    torch.cuda.current_device, whose Python wrapper (lazy init, then torch._C._cuda_getDevice) is host time on
    every launch; where a CUDA tensor is already being launched on, the init has run, so the C call alone gives
    the same answer."""
    get_device = active.get_current_device
    if get_device is torch.cuda.current_device:
        get_device = torch._C._cuda_getDevice
    return get_device, active.get_current_stream


def launch(kernel, grid: tuple, *args, **meta):
    """``kernel[grid](*args, **meta)``: ``args`` are the kernel's leading parameters in order, ``meta`` its
    remaining parameters (constexprs) by name and the launch options (num_warps, num_stages, ...). Returns
    nothing."""
    if not ENABLED or _hooks_set():
        kernel[grid](*args, **meta)
        return
    key = _key(kernel, grid, args, meta)
    entry = _COMPILED.get(key)
    if entry is None:
        if len(_COMPILED) >= MAX_ENTRIES:
            _COMPILED.clear()
        compiled = kernel[grid](*args, **meta)
        names = getattr(kernel, "arg_names", None)
        tail = tuple(names[len(args):]) if names is not None else ()
        direct = (names is not None and all(n in meta for n in tail) and hasattr(compiled, "packed_metadata")
                  and hasattr(compiled, "function"))
        # the compiled kernel's launcher takes all three grid dimensions
        _COMPILED[key] = (compiled, tuple(grid) + (1,) * (3 - len(grid)), tail) if direct else _SLOW
        return
    if entry is _SLOW:
        kernel[grid](*args, **meta)
        return
    compiled, (g0, g1, g2), tail = entry
    from triton.runtime import driver

    stream = driver.active.get_current_stream(driver.active.get_current_device())
    # the launcher's arguments as JITFunction.run passes them, with no launch metadata or hooks (none are set)
    compiled.run(g0, g1, g2, stream, compiled.function, compiled.packed_metadata, None, None, None, *args,
                 *(meta[n] for n in tail))


def _key(kernel, grid: tuple, args: tuple, meta: dict) -> tuple:
    return kernel, grid, tuple(map(_arg_key, args)), tuple(meta.items())


def bind(kernel, grid: tuple, *args, **meta):
    """``launch(kernel, grid, *args, **meta)``, then the compiled kernel's launcher bound to this call's grid,
    constexprs and launch options: a function of the leading arguments alone that launches it again, without the
    key ``launch`` builds over every argument. Its caller must pass arguments that ``launch`` would key alike
    (tensors of the same dtypes, devices and 16-byte alignment, the same other values), so it keys its own
    cache by what can change (an eager layer's GEMM: the prompt's shape). None where ``launch`` takes Triton's
    dispatch; the bound function takes it too while a launch hook is registered or the cache is off."""
    launch(kernel, grid, *args, **meta)
    if not ENABLED or _hooks_set():
        return None
    entry = _COMPILED.get(_key(kernel, grid, args, meta))
    if entry is None or entry is _SLOW:
        return None
    compiled, (g0, g1, g2), tail = entry
    tail_values = tuple(meta[n] for n in tail)
    from triton.runtime import driver

    get_device, get_stream = _stream_getters(driver.active)

    def run(*call_args):
        if not ENABLED or _hooks_set():
            kernel[grid](*call_args, **meta)
            return
        stream = get_stream(get_device())
        compiled.run(g0, g1, g2, stream, compiled.function, compiled.packed_metadata, None, None, None, *call_args,
                     *tail_values)

    return run


def clear() -> None:
    """Forget the compiled kernels kept here (Triton's own caches keep them compiled)."""
    _COMPILED.clear()
