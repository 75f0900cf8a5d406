"""The speed benchmark's pure parts: scaling, best-of, sizing; and that a real run is sane."""

from __future__ import annotations

import pytest

from pymosix.load import speed
from pymosix.testbed.cpuquota import quota_period_us


def test_reference_rate_reads_reference_speed() -> None:
    assert speed.speed_from_rate(speed.REFERENCE_RATE) == 10000
    assert speed.speed_from_rate(speed.REFERENCE_RATE / 2) == 5000
    assert speed.speed_from_rate(3.0, reference_rate=1.0) == 30000


def test_speed_is_clamped_to_what_setspeed_accepts() -> None:
    assert speed.speed_from_rate(1e-9) == 1
    assert speed.speed_from_rate(1e12) == speed.MAX_SPEED
    with pytest.raises(ValueError, match="positive"):
        speed.speed_from_rate(0.0)


def test_best_rate_is_the_fastest_run() -> None:
    assert speed.best_rate([(100, 2.0), (100, 1.0), (50, 1.0)]) == 100.0
    assert speed.best_rate([(10, 0.0), (10, 1.0)]) == 10.0
    with pytest.raises(ValueError, match="no timed run"):
        speed.best_rate([])


def test_runs_are_sized_from_the_probe() -> None:
    assert speed.iterations_for(0.05, (20_000, 0.004)) == 250_000
    assert speed.iterations_for(0.05, (20_000, 10.0)) == 1000


def test_timing_uses_the_given_clock() -> None:
    ticks = iter([1.0, 1.25])
    assert speed.time_run(1000, clock=lambda: next(ticks)) == (1000, 0.25)


def test_a_real_measurement_is_positive_and_bounded() -> None:
    s = speed.measure_speed(runs=2, run_s=0.01)
    assert 1 <= s <= speed.MAX_SPEED


def test_quota_keeps_five_ms_per_period() -> None:
    assert quota_period_us(0.5, 1) == (5000, 10000)
    assert quota_period_us(0.25, 2) == (5000, 10000)
    assert quota_period_us(1.0, 1) == (5000, 5000)
    assert quota_period_us(0.001, 1) == (1000, 1_000_000)
    with pytest.raises(ValueError, match="ratio"):
        quota_period_us(0.0, 1)
