"""The simulator as a tool: the new scenarios (owner returns, churn, partition), its CSV and PNG,
the bounded hello scheme, and `pymosix sim`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pymosix.cli.main import main as pymosix_main
from pymosix.discovery import HELLO_BUDGET, dead_after, hello_interval
from pymosix.sim import scenarios
from pymosix.sim.__main__ import main
from pymosix.sim.engine import JobSpec, NodeSpec, OwnerLoad, SimConfig, Simulation, lower_bound
from pymosix.sim.membership import Membership


def test_hello_interval_keeps_small_clusters_and_bounds_big_ones() -> None:
    assert hello_interval(2, 0.5) == 0.5
    assert hello_interval(HELLO_BUDGET, 0.5) == 0.5
    for n in (64, 1000, 10_000, 50_000):
        # What each node receives: every other node's hellos, (n - 1) / interval a second.
        assert (n - 1) / hello_interval(n, 0.5) <= HELLO_BUDGET / 0.5
    assert dead_after(2, 0.5, 3.0) == 3.0
    assert dead_after(10_000, 0.5, 3.0) / hello_interval(10_000, 0.5) == pytest.approx(6.0)
    assert hello_interval(10**9, 0.5) == 3600.0
    with pytest.raises(ValueError, match="positive"):
        hello_interval(4, 0.0)


def test_membership_join_leave_and_partition() -> None:
    m = Membership(4, budget=None)
    assert m.knows(0, 3, 1.0)
    m.bye(3)
    assert not m.knows(0, 3, 1.0)
    m.join(3, 2.0)
    assert not m.knows(3, 0, 2.0), "a joiner knows only what it heard since"
    m.hello(0, 2.5)
    assert m.knows(3, 0, 2.6)
    assert m.knows(0, 3, 2.6) is False, "node 3 has not said hello yet"
    m.hello(3, 2.7)
    assert m.knows(0, 3, 2.8)
    m.split({2, 3})
    m.hello(0, 3.0)
    m.hello(3, 3.0)
    assert not m.reachable(0, 3)
    assert m.knows(2, 3, 3.1)
    assert not m.knows(2, 0, 6.5), "the far side forgets after dead_after"
    m.heal()
    assert not m.knows(2, 0, 6.6), "after the heal, the other side is known at its next hello"
    m.hello(0, 6.7)
    assert m.knows(2, 0, 6.8)
    assert m.reachable(0, 3)


def test_owner_returns_guests_leave_fast() -> None:
    for nodes in (2, 4):
        r = scenarios.owner_returns(nodes=nodes, seed=1)
        assert r.finished == r.jobs
        assert r.guests_left_s is not None
        assert r.guests_left_s <= 3.0, "guests leave an owner's node within 3 s"
        assert r.ratio <= 1.2, "near the bound that gives owners their nodes"
        stay = scenarios.owner_returns(nodes=nodes, seed=1, balance=False)
        assert stay.makespan_s > r.makespan_s


def test_owner_bound() -> None:
    nodes = [NodeSpec(), NodeSpec()]
    jobs = [JobSpec(0, 30.0), JobSpec(0, 30.0)]
    assert lower_bound(nodes, jobs, [OwnerLoad(1, 10.0)]) == pytest.approx(50.0)
    assert lower_bound(nodes, jobs, [OwnerLoad(1, 10.0, 20.0)]) == pytest.approx(35.0)
    assert lower_bound(nodes, jobs) == pytest.approx(30.0)


def test_unmanaged_load_shares_the_cpu() -> None:
    # A 10 s job next to one owner process from the start runs at half speed.
    r = Simulation([NodeSpec()], [JobSpec(0, 10.0)], owners=[OwnerLoad(0, 0.0, tasks=1)]).run()
    assert r.makespan_s == pytest.approx(20.0)


def test_churn_finishes_everything_without_ping_pong() -> None:
    r = scenarios.churn(nodes=60, seed=2)
    assert r.finished == r.jobs
    assert r.max_migrations_per_job <= 4
    assert r.ratio <= 1.5


def test_partition_heals_and_balances() -> None:
    r = scenarios.partition(nodes=40, seed=0, work_s=60.0)
    assert r.finished == r.jobs
    assert r.lost_offers >= 0
    assert r.time_to_balance_s is not None
    assert r.time_to_balance_s <= 15.0, "balanced within seconds of the heal"
    during = [s for s in r.series if 10.0 <= s.t <= 29.0]
    assert max(s.busy for s in during) <= 0.55, "the far half gets no work while cut off"


def test_bounded_hellos_cost_less_and_stay_flat() -> None:
    fixed = scenarios.hotspot(nodes=120, seed=0, work_s=20.0, config=SimConfig(hello_budget=None))
    small = scenarios.hotspot(nodes=30, seed=0, work_s=20.0)
    big = scenarios.hotspot(nodes=120, seed=0, work_s=20.0)
    assert fixed.hellos_per_node_s == pytest.approx(2 * 120, rel=0.05)
    assert big.hellos_per_node_s <= 2 * HELLO_BUDGET / 0.5 + 2
    assert big.messages_per_node_s <= 1.3 * small.messages_per_node_s + 10
    assert big.finished == big.jobs


def test_csv_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    out_csv, out_png = tmp_path / "s.csv", tmp_path / "s.png"
    args = ["owner-returns", "--nodes", "2", "--csv", str(out_csv), "--png", str(out_png)]
    assert main(args) == 0
    assert "last guest left" in capsys.readouterr().out
    with out_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert rows[0].keys() == {"t", "imbalance", "busy", "alive", "in_flight"}
    assert len(rows) > 100
    assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_pymosix_sim_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert pymosix_main(["sim", "partition", "--nodes", "8", "--seed", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scenario"] == "partition"
    assert out["nodes"] == 8
    assert out["finished"] == out["jobs"]
