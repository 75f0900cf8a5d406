"""The balancing policy, as tables of snapshots and the decisions they must give."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any

import pytest

from pymosix.ids import NodeId
from pymosix.policy import (
    ClusterSnapshot,
    JobView,
    NodeView,
    PolicyConfig,
    RecentMove,
    accept_offer,
    best_node,
    decide,
    ripe_in,
)

N1, N2, N3 = NodeId(0x640B), NodeId(0x640C), NodeId(0x640D)
MB = 2**20
NOW = 1000.0


def job(pid: int, **kw: Any) -> JobView:
    """A CPU-bound job of node1, 10 minutes old, 5 MB image."""
    base: dict[str, Any] = {
        "home_pid": pid,
        "node": N1,
        "home": N1,
        "age_s": 600.0,
        "cpu_fraction": 1.0,
        "rss_bytes": 5 * MB,
    }
    base.update(kw)
    return JobView(**base)


def loops(n: int, **kw: Any) -> tuple[JobView, ...]:
    """n CPU-bound loops sharing one CPU (each gets 1/n of it)."""
    kw.setdefault("cpu_fraction", 1.0 / n)
    return tuple(job(101 + i, **kw) for i in range(n))


def node(nid: NodeId, load: float, **kw: Any) -> NodeView:
    base: dict[str, Any] = {"mem_total": 1024 * MB, "mem_free": 800 * MB}
    base.update(kw)
    return NodeView(node_id=nid, load=load, **base)


def snap(
    jobs: tuple[JobView, ...],
    me: NodeView,
    *peers: NodeView,
    config: PolicyConfig | None = None,
    recent: tuple[RecentMove, ...] = (),
) -> ClusterSnapshot:
    return ClusterSnapshot(
        self_id=me.node_id,
        now=NOW,
        jobs=jobs,
        peers={p.node_id: p for p in peers},
        me=me,
        config=config or PolicyConfig(),
        recent_moves=recent,
    )


def moves(s: ClusterSnapshot) -> list[tuple[int, NodeId]]:
    return [(d.home_pid, d.target) for d in decide(s)]


GUEST = {"home": N3}

CASES = [
    # --- load and threshold -----------------------------------------------------------------
    pytest.param(snap(loops(4), node(N1, 4.0), node(N2, 0.0)), [(101, N2), (102, N2)],
                 id="seed-4v0-moves-two-in-one-round"),
    pytest.param(snap(loops(3), node(N1, 3.0), node(N2, 1.0)), [(101, N2)], id="3v1-moves-one"),
    pytest.param(snap(loops(2), node(N1, 2.0), node(N2, 2.0)), [], id="2v2-stays"),
    pytest.param(snap(loops(2), node(N1, 2.0), node(N2, 1.0)), [], id="2v1-stays-gap-zero"),
    pytest.param(snap(loops(1), node(N1, 1.0), node(N2, 0.0)), [], id="1v0-stays"),
    pytest.param(snap(loops(2), node(N1, 2.0), node(N2, 0.6)), [], id="below-threshold"),
    pytest.param(snap(loops(2), node(N1, 2.0), node(N2, 0.3)), [(101, N2)],
                 id="old-job-moves-over-small-gap"),
    pytest.param(snap(loops(2, age_s=1.5), node(N1, 2.0), node(N2, 0.3)), [],
                 id="young-job-needs-bigger-gap-for-its-cost"),
    pytest.param(snap(loops(4, age_s=0.4, rss_bytes=0), node(N1, 4.0), node(N2, 0.0)), [],
                 id="too-young"),
    pytest.param(snap(loops(4, age_s=0.6, rss_bytes=0), node(N1, 4.0), node(N2, 0.0),
                      config=PolicyConfig(freeze_cost_s=0.3)),
                 [(101, N2)], id="past-min-age-tiny-image-moves-one-the-gap-pays-for"),
    pytest.param(snap(loops(4, age_s=0.6, rss_bytes=0), node(N1, 4.0), node(N2, 0.0)),
                 [(101, N2), (102, N2)], id="past-min-age-cheap-move-both-the-gap-pays-for"),
    pytest.param(snap(loops(4, age_s=0.6), node(N1, 4.0), node(N2, 0.0)), [],
                 id="past-min-age-but-move-costs-over-half-the-remaining-time"),
    pytest.param(snap(loops(4, age_s=0.9), node(N1, 4.0), node(N2, 0.0)),
                 [(101, N2), (102, N2)], id="old-enough-for-its-cost"),
    pytest.param(snap(loops(4, rss_bytes=2000 * MB, age_s=30.0), node(N1, 4.0), node(N2, 0.0)),
                 [], id="image-too-big-for-expected-remaining-time"),
    pytest.param(snap(loops(4, cpu_fraction=0.05), node(N1, 4.0), node(N2, 0.0)), [],
                 id="io-bound-jobs-stay"),
    pytest.param(
        snap((job(1, cpu_fraction=0.25, age_s=5.0, rss_bytes=100 * MB),
              job(2, cpu_fraction=0.25, rss_bytes=10 * MB),
              job(3, cpu_fraction=0.25, rss_bytes=200 * MB),
              job(4, cpu_fraction=0.25, locked=True)), node(N1, 4.0), node(N2, 1.0)),
        [(2, N2)], id="prefers-long-running-small-image"),
    # --- speed ------------------------------------------------------------------------------
    pytest.param(snap(loops(3), node(N1, 3.0), node(N2, 1.0), node(N3, 0.5, speed=20000)),
                 [(101, N3)], id="faster-node-with-same-run-queue-wins"),
    pytest.param(snap(loops(1), node(N1, 2.0, speed=5000), node(N2, 0.0)), [(101, N2)],
                 id="lone-job-leaves-slow-node-for-fast"),
    pytest.param(snap(loops(1), node(N1, 0.5, speed=20000), node(N2, 0.0, speed=10000)), [],
                 id="lone-job-stays-on-fast-node"),
    pytest.param(snap(loops(2), node(N1, 1.0, ncpus=2), node(N2, 0.0, ncpus=2)), [],
                 id="no-contention-on-two-cpus"),
    # --- memory ushering --------------------------------------------------------------------
    pytest.param(
        snap((job(1, rss_bytes=400 * MB), job(2, rss_bytes=60 * MB), job(3, rss_bytes=30 * MB)),
             node(N1, 1.0, mem_free=50 * MB), node(N2, 1.0)),
        [(2, N2)], id="memory-ushering-smallest-job-that-covers"),
    pytest.param(
        snap((job(1, rss_bytes=40 * MB), job(2, rss_bytes=30 * MB)),
             node(N1, 1.0, mem_free=50 * MB), node(N2, 1.0)),
        [(1, N2), (2, N2)], id="memory-ushering-several"),
    pytest.param(
        snap((job(1, rss_bytes=400 * MB),), node(N1, 1.0, mem_free=50 * MB),
             node(N2, 0.0, mem_free=300 * MB)),
        [], id="memory-target-without-room"),
    # --- locks ------------------------------------------------------------------------------
    pytest.param(snap(loops(4, locked=True), node(N1, 4.0), node(N2, 0.0)), [], id="job-locked"),
    pytest.param(snap(loops(4, allowed_nodes=frozenset({N1})), node(N1, 4.0), node(N2, 0.0)), [],
                 id="node-list-excludes-target"),
    pytest.param(snap(loops(4, allowed_nodes=frozenset({N3})), node(N1, 4.0), node(N2, 0.0),
                      node(N3, 1.0)), [(101, N3)], id="node-list-picks-allowed"),
    pytest.param(snap(loops(4), node(N1, 4.0, stay=True), node(N2, 0.0)), [], id="stay"),
    pytest.param(snap(loops(4), node(N1, 4.0, stay=True, mem_free=1 * MB), node(N2, 0.0)), [],
                 id="stay-also-stops-memory-ushering"),
    pytest.param(snap(loops(4), node(N1, 4.0, lstay=True), node(N2, 0.0)), [],
                 id="lstay-local-jobs-stay"),
    pytest.param(snap(loops(2) + tuple(job(201 + i, cpu_fraction=0.25, **GUEST) for i in range(2)),
                      node(N1, 4.0, lstay=True), node(N2, 0.0)),
                 [(201, N2), (202, N2)], id="lstay-guests-may-leave"),
    pytest.param(snap(loops(4), node(N1, 4.0), node(N2, 0.0, block=True)), [],
                 id="target-block-refuses-guests"),
    pytest.param(snap(loops(4, home=N2), node(N1, 4.0), node(N2, 0.0, block=True)),
                 [(101, N2), (102, N2)], id="block-still-takes-its-own-jobs-home"),
    # --- information and ping-pong ----------------------------------------------------------
    pytest.param(snap(loops(4), node(N1, 4.0), node(N2, 0.0, age_s=6.0)), [], id="stale-peer"),
    pytest.param(snap(loops(4), node(N1, 4.0), node(N2, 0.0, age_s=6.0), node(N3, 1.0)),
                 [(101, N3)], id="stale-peer-ignored-fresh-one-used"),
    pytest.param(snap(loops(2), node(N1, 2.0), node(N2, 0.0, age_s=1.5),
                      recent=(RecentMove(N2, NOW - 1.0), RecentMove(N2, NOW - 1.0))), [],
                 id="recent-moves-count-on-stale-target"),
    pytest.param(snap(loops(2), node(N1, 2.0), node(N2, 0.0, age_s=1.5),
                      recent=(RecentMove(N2, NOW - 3.0), RecentMove(N2, NOW - 3.0))), [(101, N2)],
                 id="moves-older-than-the-info-are-in-it"),
    pytest.param(snap(loops(4, last_migrated_at=NOW - 2.0, migrations=1), node(N1, 4.0),
                      node(N2, 0.0)), [], id="min-stay-after-arrival"),
    pytest.param(snap(loops(4, last_migrated_at=NOW - 6.0, migrations=1), node(N1, 4.0),
                      node(N2, 0.0)), [(101, N2), (102, N2)], id="min-stay-over"),
    pytest.param(snap(loops(4, last_migrated_at=NOW - 15.0, migrations=3), node(N1, 4.0),
                      node(N2, 0.0)), [], id="cool-down-grows-with-migrations"),
    pytest.param(snap(loops(10), node(N1, 10.0), *(node(NodeId(0x700 + i), 0.0) for i in range(10)),
                      config=PolicyConfig(max_decisions=3)), 3, id="at-most-n-per-round"),
]  # fmt: skip


@pytest.mark.parametrize(("snapshot", "expected"), CASES)
def test_decide(snapshot: ClusterSnapshot, expected: list[tuple[int, NodeId]] | int) -> None:
    got = moves(snapshot)
    if isinstance(expected, int):
        assert len(got) == expected
        assert len({t for _, t in got}) == expected, "one job per idle target"
    else:
        assert got == expected
    for d in decide(snapshot):
        assert d.reason


def test_ripe_in_is_when_the_first_young_job_may_move() -> None:
    cfg = PolicyConfig(freeze_cost_s=0.25, min_age_s=0.5)
    # Tiny images: the floor, min_age_s, from the youngest that has not reached it.
    young = (*loops(2, age_s=0.2, rss_bytes=0), job(103, age_s=0.4, cpu_fraction=0.5, rss_bytes=0))
    assert ripe_in(snap(young, node(N1, 3.0), node(N2, 0.0), config=cfg)) == pytest.approx(0.11)
    # A big image: its move must cost under half its age (0.25 s + 50 MB at 50 MB/s -> 2.5 s).
    big = (job(101, age_s=1.0, cpu_fraction=1.0, rss_bytes=50 * 10**6),)
    assert ripe_in(snap(big, node(N1, 1.0), config=cfg)) == pytest.approx(1.51)
    # Nothing waits: jobs of age, a job without a CPU figure yet, a locked one.
    waiting_for_nothing = (
        job(101, age_s=5.0, cpu_fraction=1.0),
        job(102, age_s=0.1, cpu_fraction=0.0),
        job(103, age_s=0.1, cpu_fraction=1.0, locked=True),
    )
    assert ripe_in(snap(waiting_for_nothing, node(N1, 2.0), config=cfg)) is None


def test_decide_is_pure_and_repeatable() -> None:
    s = snap(loops(10), node(N1, 10.0), *(node(NodeId(0x700 + i), 0.0) for i in range(10)))
    assert decide(s) == decide(s)


def test_nodes_seeing_the_same_idle_peers_pick_different_ones() -> None:
    idle = [node(NodeId(0x700 + i), 0.0) for i in range(8)]
    firsts = {moves(snap(loops(2), node(NodeId(0x100 + k), 2.0), *idle))[0][1] for k in range(8)}
    assert len(firsts) >= 4


def _two_node_run(lag_rounds: int, rounds: int = 40) -> tuple[int, dict[NodeId, int], int]:
    """The seed's scenario with each node's loads as run-queue counts, info `lag_rounds` old."""
    where = {101 + i: N1 for i in range(4)}
    arrived: dict[int, float] = {}
    nmig = dict.fromkeys(where, 0)
    history: list[dict[NodeId, int]] = []
    recent: dict[NodeId, list[RecentMove]] = {N1: [], N2: []}
    total = 0
    for r in range(rounds):
        now = 10.0 + r
        for me_id, peer_id in ((N1, N2), (N2, N1)):
            counts = {n: sum(1 for w in where.values() if w == n) for n in (N1, N2)}
            history.append(counts)
            old = history[max(0, len(history) - 1 - 2 * lag_rounds)]
            mine = [p for p, w in where.items() if w == me_id]
            k = max(1, len(mine))
            jobs = tuple(
                job(p, node=me_id, age_s=now, cpu_fraction=1.0 / k,
                    last_migrated_at=arrived.get(p), migrations=nmig[p])
                for p in mine
            )  # fmt: skip
            s = ClusterSnapshot(
                self_id=me_id,
                now=now,
                jobs=jobs,
                peers={peer_id: node(peer_id, float(old[peer_id]), age_s=float(lag_rounds))},
                me=node(me_id, float(counts[me_id])),
                recent_moves=tuple(recent[me_id]),
            )
            for d in decide(s):
                where[d.home_pid] = d.target
                arrived[d.home_pid] = now
                nmig[d.home_pid] += 1
                recent[me_id].append(RecentMove(d.target, now))
                total += 1
    final = {n: sum(1 for w in where.values() if w == n) for n in (N1, N2)}
    return total, final, max(nmig.values())


@pytest.mark.parametrize("lag", [0, 1, 3], ids=["fresh-info", "info-1s-old", "info-3s-old"])
def test_seed_scenario_converges_with_exactly_two_moves(lag: int) -> None:
    total, final, most = _two_node_run(lag)
    assert total == 2
    assert final == {N1: 2, N2: 2}
    assert most == 1


@pytest.mark.parametrize(
    ("s", "placing", "expected"),
    [
        pytest.param(snap((), node(N1, 1.0), node(N2, 0.0)), True, N2, id="place-on-idle-peer"),
        pytest.param(snap((), node(N1, 0.0), node(N2, 0.0)), True, None, id="place-here-if-equal"),
        pytest.param(snap((), node(N1, 1.0), node(N2, 0.0, block=True)), True, None,
                     id="place-not-on-blocked"),
        pytest.param(snap(loops(2), node(N1, 2.0), node(N2, 1.0)), False, None,
                     id="balance-2v1-stays"),
        pytest.param(snap(loops(3), node(N1, 3.0), node(N2, 1.0), node(N3, 0.0)), False, N3,
                     id="balance-picks-least-loaded"),
        pytest.param(snap(loops(3, locked=True, age_s=0.1), node(N1, 3.0, stay=True),
                          node(N2, 0.0)), False, N2, id="balance-ignores-automatic-locks"),
        pytest.param(snap(loops(3, allowed_nodes=frozenset({N2})), node(N1, 3.0), node(N2, 1.0),
                          node(N3, 0.0)), False, N2, id="balance-respects-node-list"),
        pytest.param(snap(loops(3), node(N1, 3.0), node(N3, 0.0, age_s=60.0)), False, None,
                     id="balance-ignores-stale"),
    ],
)  # fmt: skip
def test_best_node(s: ClusterSnapshot, placing: bool, expected: NodeId | None) -> None:
    j = s.jobs[0] if s.jobs else job(999)
    assert best_node(s, j, placing=placing) == expected


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PolicyConfig().threshold = 0.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("me", "home", "believed", "ok"),
    [
        pytest.param(node(N2, 0.0), N1, 0.0, True, id="as-believed"),
        pytest.param(node(N2, 0.4), N1, 0.0, True, id="risen-less-than-half-a-job"),
        pytest.param(node(N2, 1.0), N1, 0.0, False, id="stale-offer-refused"),
        pytest.param(node(N2, 0.5, ncpus=2), N1, 0.0, False, id="half-a-job-on-two-cpus"),
        pytest.param(node(N2, 0.0, block=True), N1, 0.0, False, id="blocked-refuses-guests"),
        pytest.param(node(N2, 0.0, block=True), N2, 0.0, True, id="blocked-takes-own-job-home"),
    ],
)  # fmt: skip
def test_accept_offer(me: NodeView, home: NodeId, believed: float, ok: bool) -> None:
    assert accept_offer(me, home, believed) is ok


def test_policy_sim_and_metric_import_no_io() -> None:
    code = (
        "import sys, pymosix.policy, pymosix.load.metric, pymosix.sim;"
        "bad = {'asyncio', 'socket', 'subprocess'} & set(sys.modules);"
        "print(sorted(bad)); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_accept_offer_counts_the_jobs_on_their_way() -> None:
    """Two sources saw this node idle at once: the second offer finds one job on its way."""
    me = NodeView(NodeId(2), load=0.0)
    assert accept_offer(me, NodeId(1), believed_load=0.0)
    assert not accept_offer(me, NodeId(1), believed_load=0.0, on_way=1)
