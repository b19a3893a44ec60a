"""benchmarks/device_table_merge.py on hand-made sweep rows (CPU, no GPU): a shape (per FP8 scale layout) gets a
GPU model's entry only where one config beats the shipped one by the margin in every sweep that timed it."""

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "device_table_merge.py"
_spec = importlib.util.spec_from_file_location("device_table_merge", _PATH)
device_table_merge = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(device_table_merge)

WARPS4 = {"path": "gemv", "BLOCK_N": 4, "BLOCK_K": 1024, "num_warps": 4, "num_stages": 1, "SPLIT": 1}
WARPS8 = dict(WARPS4, num_warps=8)
DOT = {"path": "dot", "BLOCK_N": 128, "BLOCK_K": 128, "num_warps": 4, "num_stages": 3, "SPLIT": 1, "X16": True}


def row(N, shipped_us, fastest, kind="fp8", M=1):
    return dict(N=N, K=4096, M=M, kind=kind, shipped_config=WARPS8, shipped_us=shipped_us, fastest=fastest)


def test_an_entry_needs_every_sweep_to_agree():
    first = [row(1000, 10.0, [[9.0, WARPS4], [9.5, DOT], [10.0, WARPS8]]),   # both beat 10.0 by 4 %
             row(2000, 10.0, [[9.0, WARPS4], [10.0, WARPS8]]),               # only this sweep's winner
             row(3000, 10.0, [[9.9, WARPS4], [10.0, WARPS8]]),               # 1 %: inside the noise
             row(4000, 10.0, [[9.0, WARPS4]], kind="bf16")]                  # timed by one sweep only
    second = [row(1000, 10.2, [[9.2, DOT], [9.6, WARPS4], [10.2, WARPS8]]),
              row(2000, 10.0, [[9.2, DOT], [10.0, WARPS8], [10.1, WARPS4]]),
              row(3000, 10.0, [[9.8, WARPS4], [10.0, WARPS8]])]
    entries, left = device_table_merge.merge([first, second], min_gain=0.04)
    config, evidence = entries[("gemv", 1, 1000, 4096)]
    assert config == WARPS4 and evidence == [(10.0, 9.0), (10.2, 9.6)]  # the fastest on average of the two
    assert set(entries) == {("gemv", 1, 1000, 4096)}
    assert "every sweep" in left[("gemv", 1, 2000, 4096)] and "every sweep" in left[("gemv", 1, 3000, 4096)]
    assert "one sweep" in left[("gemv", 2, 4000, 4096)]


def test_a_sweep_without_the_shipped_time_gives_no_entry():
    untimed = row(1000, None, [[9.0, WARPS4]])
    entries, left = device_table_merge.merge([[row(1000, 10.0, [[9.0, WARPS4]])], [untimed]], min_gain=0.04)
    assert not entries and "--paths" in left[("gemv", 1, 1000, 4096)]


def test_one_sweep_timing_a_shape_twice_is_not_two_sweeps():
    """The MoE router has the same shape at every tp: one sweep of tp 1 and 2 times it twice, still one sweep."""
    twice = [row(64, 10.0, [[9.0, WARPS4]]), row(64, 10.1, [[9.1, WARPS4]])]
    entries, left = device_table_merge.merge([twice], min_gain=0.04)
    assert not entries and "one sweep" in left[("gemv", 1, 64, 4096)]
    entries, _ = device_table_merge.merge([twice, [row(64, 10.0, [[9.2, WARPS4]])]], min_gain=0.04)
    config, evidence = entries[("gemv", 1, 64, 4096)]
    assert config == WARPS4 and len(evidence) == 3


def test_fp8_entries_are_merged_per_scale_layout():
    """Two per-channel sweeps agree on WARPS4, two block sweeps on DOT (each beating the shipped WARPS8): one
    entry per layout, keyed with it. One per-channel sweep and one block sweep are one sweep of each: none."""
    channel = [row(1000, 10.0, [[9.0, WARPS4], [10.0, WARPS8]])]
    block = [row(1000, 12.0, [[11.0, DOT], [12.0, WARPS8], [12.5, WARPS4]])]
    entries, left = device_table_merge.merge([channel, channel, block, block], min_gain=0.04,
                                             layouts=["channel", "channel", "block", "block"])
    assert entries[("gemv", 1, 1000, 4096, "channel")][0] == WARPS4
    assert entries[("gemv", 1, 1000, 4096, "block")][0] == DOT
    entries, left = device_table_merge.merge([channel, block], min_gain=0.04, layouts=["channel", "block"])
    assert not entries and all("one sweep" in why for why in left.values()) and len(left) == 2
