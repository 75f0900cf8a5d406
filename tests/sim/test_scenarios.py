"""Seeded simulator scenarios running the real policy at every node, with asserted bounds."""

from __future__ import annotations

import json

import pytest

from pymosix.sim import JobSpec, NodeSpec, SimConfig, Simulation, lower_bound, scenarios
from pymosix.sim.__main__ import main


@pytest.mark.parametrize("seed", range(5))
def test_seed_scenario_spreads_two_and_two(seed: int) -> None:
    r = scenarios.seed(nodes=2, seed=seed)
    # The seed's loops run for ever: while all four run, exactly two move. With finite work, a
    # node that finishes first may take one of the last two (the policy cannot know the work left).
    assert r.migrations_before_first_exit == 2
    assert r.migrations <= 3
    assert r.max_migrations_per_job == 1
    assert r.all_busy_s is not None
    assert r.all_busy_s <= 5.0
    assert r.makespan_s <= 1.1 * 200.0


def test_balancing_halves_the_seed_makespan() -> None:
    balanced, alone = scenarios.seed(nodes=2), scenarios.unbalanced(nodes=2)
    assert alone.makespan_s == pytest.approx(400.0)
    assert alone.makespan_s / balanced.makespan_s >= 1.9


def test_balanced_start_never_moves() -> None:
    jobs = [JobSpec(home=i % 2, work=50.0) for i in range(4)]
    r = Simulation([NodeSpec(), NodeSpec()], jobs, seed=1).run()
    assert r.migrations == 0
    assert r.makespan_s == pytest.approx(100.0)


@pytest.mark.parametrize("seed", range(2))
def test_hotspot_100_nodes(seed: int) -> None:
    r = scenarios.hotspot(nodes=100, seed=seed, work_s=60.0)
    assert r.finished == r.jobs == 100
    assert r.all_busy_s is not None
    assert r.all_busy_s <= 60.0
    # Short jobs: a few move a third time to nodes whose jobs ended (not ping-pong).
    assert r.max_migrations_per_job <= 3
    assert r.migrations_before_first_exit <= 1.2 * r.jobs


@pytest.mark.slow
def test_hotspot_1000_nodes() -> None:
    r = scenarios.hotspot(nodes=1000, seed=0)
    assert r.finished == r.jobs == 1000
    assert r.all_busy_s is not None
    assert r.all_busy_s <= 90.0, "every node busy within bounded time"
    # Balancing rounds every 0.5 s as in the agent: a few jobs move a third time, none more.
    assert r.max_migrations_per_job <= 3, "no ping-pong"
    assert r.migrations <= 1.15 * r.jobs
    assert r.ratio <= 1.6


@pytest.mark.parametrize(("nodes", "seed"), [(2, 0), (2, 1), (4, 2), (8, 0)])
def test_uneven_arrivals_near_the_lower_bound(nodes: int, seed: int) -> None:
    r = scenarios.uneven(nodes=nodes, seed=seed)
    assert r.finished == r.jobs
    assert r.ratio <= 1.2
    assert r.max_migrations_per_job <= 6


def test_mixed_speeds_use_the_fast_nodes() -> None:
    r = scenarios.mixed_speeds(nodes=8, seed=0)
    assert r.finished == r.jobs
    assert r.ratio <= 1.35
    assert r.max_migrations_per_job <= 3


def test_runs_are_reproducible_by_seed() -> None:
    a, b = scenarios.uneven(nodes=4, seed=7), scenarios.uneven(nodes=4, seed=7)
    assert a == b
    assert scenarios.uneven(nodes=4, seed=8) != a


def test_processor_sharing_and_speed_are_exact() -> None:
    # Two jobs of 30 reference-seconds on one CPU twice as fast: both end at 30 s.
    r = Simulation([NodeSpec(speed=20000)], [JobSpec(0, 30.0), JobSpec(0, 30.0)]).run()
    assert r.makespan_s == pytest.approx(30.0)
    # A job arriving at 10 s alone on a 2-CPU node takes its work in seconds.
    r = Simulation([NodeSpec(ncpus=2)], [JobSpec(0, 5.0, arrival_s=10.0)]).run()
    assert r.makespan_s == pytest.approx(15.0)


def test_migration_cost_is_paid_in_time() -> None:
    # One job alone on a slow node moves to a fast idle one, standing still while it moves.
    cfg = SimConfig(freeze_cost_s=0.5, bandwidth_bytes_per_s=10e6)
    jobs = [JobSpec(0, 100.0, rss_bytes=10_000_000)]
    r = Simulation([NodeSpec(speed=5000), NodeSpec(speed=20000)], jobs, cfg, seed=0).run()
    assert r.migrations == 1
    stay = Simulation([NodeSpec(speed=5000)], jobs, cfg).run()
    assert stay.makespan_s == pytest.approx(200.0)
    assert 50.0 + 1.5 < r.makespan_s < 0.5 * stay.makespan_s


def test_lower_bound() -> None:
    nodes = [NodeSpec(), NodeSpec(speed=20000, ncpus=2)]
    assert lower_bound(nodes, [JobSpec(0, 50.0) for _ in range(10)]) == pytest.approx(100.0)
    assert lower_bound(nodes, [JobSpec(0, 80.0, arrival_s=5.0)]) == pytest.approx(45.0)
    assert lower_bound(nodes, []) == 0.0


def test_cli_prints_summary_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["seed", "--nodes", "2", "--seed", "3"]) == 0
    text = capsys.readouterr().out
    assert "makespan" in text
    assert "2 before the first job ended" in text
    assert "time to balance" in text
    assert main(["hotspot", "--nodes", "20", "--seed", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["nodes"] == 20
    assert out["scenario"] == "hotspot"
    assert out["finished"] == out["jobs"]


def test_cli_rejects_bad_node_count(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["seed", "--nodes", "0"])
    assert exc.value.code == 2
    assert "--nodes must be at least 1" in capsys.readouterr().err
