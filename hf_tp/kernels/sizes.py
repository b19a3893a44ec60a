"""Host-side size arithmetic for the kernels' launchers: ``triton.cdiv`` and ``triton.next_power_of_2`` in plain
Python. Triton's own are constexpr functions whose host calls unwrap every argument (about 2 to 6 µs a call, seen
in a profile of an eager FP8 prefill call, five of them per launch), and an eager prefill forward is bound by
host time."""

from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for ints, as ``triton.cdiv``."""
    return (a + b - 1) // b


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n for n >= 1 (0 for 0), as ``triton.next_power_of_2``."""
    return 1 << (n - 1).bit_length() if n > 0 else 0
