"""The MFU denominator: a ceiling, so the best of the timed runs rather than their median."""

from __future__ import annotations

import itertools

import pytest

import moemix.kernels.flops as flops

WARM = [0.01, 0.01]  # the two untimed warm-up runs


def _fake_clock(monkeypatch, durations):
    """perf_counter for matmuls of these durations, read before and after each (warm-ups first)."""
    clock = itertools.accumulate(itertools.chain.from_iterable((0.0, d) for d in durations))
    monkeypatch.setattr(flops.time, "perf_counter", lambda: next(clock))


def test_peak_is_the_best_run(monkeypatch):
    durations = [0.5, 0.2, 0.1, 0.4, 0.3]  # seconds per timed matmul; one fast run among slow ones
    _fake_clock(monkeypatch, WARM + durations)
    got = flops.measure_matmul_flops.__wrapped__(n=64, repeats=len(durations), min_seconds=0)
    assert got == pytest.approx(2.0 * 64**3 / 0.1)  # the median would give 2n^3 / 0.3


def test_peak_keeps_timing_for_min_seconds(monkeypatch):
    """A burst of load shorter than the timing window cannot hide the ceiling."""
    durations = [0.3] * 6 + [0.1] + [0.3] * 10  # the fast run comes after 1.8 s of slow ones
    _fake_clock(monkeypatch, WARM + durations)
    got = flops.measure_matmul_flops.__wrapped__(n=64, repeats=3, min_seconds=2.0)
    assert got == pytest.approx(2.0 * 64**3 / 0.1)


def test_a_slow_matmul_is_timed_three_times_not_fifteen(monkeypatch):
    """bf16 on an AVX2-only CPU: 3 s a run. One warm-up, then three runs once max_seconds is spent."""
    durations = [3.0] + [3.0, 3.0, 2.9] + [0.1] * 12  # warm-up, three timed runs, then faster ones
    _fake_clock(monkeypatch, durations)
    got = flops.measure_matmul_flops.__wrapped__(n=64, repeats=15, max_seconds=5.0)
    assert got == pytest.approx(2.0 * 64**3 / 2.9)  # all 15 runs would have found the 0.1 s ones


def test_peak_measures_real_throughput():
    assert 1e8 < flops.measure_matmul_flops.__wrapped__(n=256, repeats=3) < 1e14
