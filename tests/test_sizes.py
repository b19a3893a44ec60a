"""hf_tp.kernels.sizes: the launchers' host-side cdiv and next_power_of_2 give Triton's own results."""

import pytest

from hf_tp.kernels.sizes import cdiv, next_power_of_2


def test_sizes_match_triton():
    triton = pytest.importorskip("triton")
    for n in range(0, 4100):
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
        for d in (1, 2, 3, 16, 64, 100, 128, 1024):
            assert cdiv(n, d) == triton.cdiv(n, d), (n, d)
    for n in (14336, 28672, 128256, 151936, 2**20 + 1):
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
