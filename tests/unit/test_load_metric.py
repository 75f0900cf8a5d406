"""Load smoothing, normalisation and CPU utilisation: exact numbers."""

from __future__ import annotations

import pytest

from pymosix.load.metric import (
    CpuTimes,
    LoadEstimate,
    adjust,
    cpu_utilisation,
    decay_factor,
    job_load,
    normalise,
    parse_cpu_line,
    runnable_per_cpu,
    smooth,
)


@pytest.mark.parametrize(
    ("dt_s", "half_life_s", "expected"),
    [
        pytest.param(1.0, 1.0, 0.5, id="one-half-life"),
        pytest.param(2.0, 1.0, 0.25, id="two-half-lives"),
        pytest.param(0.5, 0.25, 0.25, id="short-half-life"),
        pytest.param(0.0, 1.0, 1.0, id="no-time"),
        pytest.param(-1.0, 1.0, 1.0, id="clock-backwards-keeps-all"),
        pytest.param(1.0, 0.0, 0.0, id="no-smoothing"),
    ],
)
def test_decay_factor(dt_s: float, half_life_s: float, expected: float) -> None:
    assert decay_factor(dt_s, half_life_s) == expected


def test_first_sample_is_taken_as_is() -> None:
    assert smooth(None, 3, now_s=10.0) == LoadEstimate(3.0, 10.0)


def test_smoothing_converges_on_four_loops() -> None:
    est = smooth(None, 0, now_s=0.0, half_life_s=1.0)
    values = []
    for t in range(1, 5):
        est = smooth(est, 4, now_s=float(t), half_life_s=1.0)
        values.append(est.runnable)
    assert values == [2.0, 3.0, 3.5, 3.75]
    assert est.at_s == 4.0


def test_smoothing_is_time_step_aware() -> None:
    # Two samples half a half-life apart weigh the same as one sample a half-life later.
    a = smooth(LoadEstimate(0.0, 0.0), 4, now_s=1.0, half_life_s=1.0)
    b = smooth(smooth(LoadEstimate(0.0, 0.0), 4, 0.5, 1.0), 4, 1.0, 1.0)
    assert a.runnable == 2.0
    assert b.runnable == pytest.approx(2.0, abs=1e-12)


def test_adjust_moves_at_once_and_never_below_zero() -> None:
    est = LoadEstimate(4.0, 7.0)
    assert adjust(est, -2.0) == LoadEstimate(2.0, 7.0)
    assert adjust(est, +1.0) == LoadEstimate(5.0, 7.0)
    assert adjust(est, -9.0) == LoadEstimate(0.0, 7.0)


@pytest.mark.parametrize(
    ("runnable", "ncpus", "speed", "expected"),
    [
        pytest.param(4, 1, 10000, 4.0, id="seed-four-loops-one-cpu"),
        pytest.param(4, 2, 10000, 2.0, id="two-cpus"),
        pytest.param(4, 1, 20000, 2.0, id="twice-as-fast"),
        pytest.param(3, 2, 5000, 3.0, id="half-speed-two-cpus"),
        pytest.param(0, 8, 10000, 0.0, id="idle"),
    ],
)
def test_normalise(runnable: float, ncpus: int, speed: int, expected: float) -> None:
    assert normalise(runnable, ncpus, speed) == expected
    assert runnable_per_cpu(expected, speed) == runnable / ncpus


def test_job_load_is_one_job_normalised() -> None:
    assert job_load(1.0, 2, 10000) == 0.5
    assert job_load(1.0, 1, 5000) == 2.0


@pytest.mark.parametrize(("ncpus", "speed"), [(0, 10000), (1, 0), (-1, 10000)])
def test_normalise_rejects_nonsense(ncpus: int, speed: int) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        normalise(1, ncpus, speed)


def test_parse_cpu_line_counts_iowait_as_idle() -> None:
    t = parse_cpu_line("cpu  100 5 20 1000 50 3 2 1 7 0")
    assert t == CpuTimes(busy=100 + 5 + 20 + 3 + 2 + 1, idle=1050)
    assert t.total == 1181


def test_parse_old_kernel_line_with_four_fields() -> None:
    assert parse_cpu_line("cpu0 1 2 3 4") == CpuTimes(busy=6, idle=4)


@pytest.mark.parametrize(
    "line",
    [
        pytest.param("intr 1 2 3 4", id="not-cpu"),
        pytest.param("cpu 1 2 x 4", id="not-a-number"),
        pytest.param("cpu 1 2 3", id="too-short"),
        pytest.param("", id="empty"),
    ],
)
def test_parse_cpu_line_rejects_bad_input(line: str) -> None:
    with pytest.raises(ValueError, match="cpu line"):
        parse_cpu_line(line)


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        pytest.param(CpuTimes(100, 100), CpuTimes(175, 125), 0.75, id="three-quarters"),
        pytest.param(CpuTimes(100, 100), CpuTimes(100, 300), 0.0, id="idle"),
        pytest.param(CpuTimes(100, 100), CpuTimes(300, 100), 1.0, id="busy"),
        pytest.param(CpuTimes(100, 100), CpuTimes(100, 100), 0.0, id="no-time-passed"),
        pytest.param(CpuTimes(500, 500), CpuTimes(100, 100), 0.0, id="counter-reset"),
    ],
)
def test_cpu_utilisation(before: CpuTimes, after: CpuTimes, expected: float) -> None:
    assert cpu_utilisation(before, after) == expected
