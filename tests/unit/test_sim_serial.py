"""The simulator carries out a node's moves one after the other, as the agent's balancer does
(Balancer.round: `for d in decide(snap): await migrate_hosted(...)`, then a period's sleep).
Virtual time only: every run is a seeded discrete-event simulation."""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest

from pymosix.policy import PolicyConfig
from pymosix.sim import JobSpec, Move, NodeSpec, SimConfig, Simulation

MB = 2**20
FREEZE = 0.5
#: A policy whose first round comes when a round's third move of four loops pays for itself too
#: (jobs come of age at 1 s, not when the move's cost is just half their age).
THREE_IN_A_ROUND = PolicyConfig(min_age_s=1.0)


def run(jobs: list[JobSpec], cfg: SimConfig, nodes: int = 4, speed: int = 10000) -> list[Move]:
    specs = [NodeSpec(speed=speed) for _ in range(nodes)]
    return list(Simulation(specs, jobs, cfg, seed=0).run(until_s=30.0).moves)


def rounds(moves: list[Move]) -> list[list[Move]]:
    by_round: dict[tuple[int, float | None], list[Move]] = defaultdict(list)
    for m in moves:
        by_round[m.source, m.decided_at].append(m)
    return [sorted(ms, key=lambda m: m.started_at) for _, ms in sorted(by_round.items())]


def test_a_rounds_three_moves_take_three_freezes() -> None:
    # Four loops at node 0 of four idle nodes: one round decides three moves (the policy's cost
    # estimate makes it wait until the third pays for itself too).
    cfg = SimConfig(sample_s=0.1, freeze_cost_s=FREEZE, policy=THREE_IN_A_ROUND)
    moves = run([JobSpec(0, 100.0, rss_bytes=5 * MB) for _ in range(4)], cfg)
    first = rounds(moves)[0]
    assert len(first) == 3
    decided = first[0].decided_at
    assert decided is not None
    for k, m in enumerate(first, start=1):
        # The next move starts only when the one before it ended ...
        assert m.started_at >= (first[k - 2].ended_at if k > 1 else decided)
        # ... so the k-th ends no earlier than k freezes after the round.
        assert m.ended_at >= decided + k * FREEZE
    assert first[-1].ended_at == pytest.approx(decided + 3 * (FREEZE + 5 * MB / 50e6))
    assert len({m.target for m in first}) == 3


def test_the_next_round_comes_a_period_after_the_last_move() -> None:
    # Eight loops on four half-speed nodes (the 4-node bed): several rounds, each after the last
    # move of the one before, plus the balancer's period.
    cfg = SimConfig(sample_s=0.1, freeze_cost_s=0.2)
    moves = run([JobSpec(0, 1e6, rss_bytes=5 * MB) for _ in range(8)], cfg, speed=5000)
    node0 = [r for r in rounds(moves) if r[0].source == 0]
    assert len(node0) >= 2
    for before, after in itertools.pairwise(node0):
        assert after[0].decided_at is not None
        assert after[0].decided_at >= before[-1].ended_at + cfg.balance_s - 1e-9
    # Never two moves of one node at once.
    spans = sorted((m.started_at, m.ended_at) for m in moves if m.source == 0)
    assert all(b[0] >= a[1] - 1e-9 for a, b in itertools.pairwise(spans))


def test_a_job_that_ended_before_its_turn_is_skipped() -> None:
    cfg = SimConfig(sample_s=0.1, freeze_cost_s=FREEZE, policy=THREE_IN_A_ROUND)
    long = [JobSpec(0, 100.0, rss_bytes=5 * MB) for _ in range(4)]
    first = rounds(run(long, cfg))[0]
    third = first[2].job
    # The same run, but the third job's work ends while the first move is under way: the round
    # decided it (its end was not known), and the balancer skips it when its turn comes.
    decided = first[0].decided_at
    assert decided is not None
    ends_at = (decided + first[0].ended_at) / 2
    work = decided / 4 + (ends_at - decided) / 3  # four jobs share the CPU, then three
    jobs = [JobSpec(0, work if i == third else 100.0, rss_bytes=5 * MB) for i in range(4)]
    again = rounds(run(jobs, cfg))[0]
    assert [m.job for m in again] == [m.job for m in first[:2]]
    assert all(m.job != third for m in run(jobs, cfg))


def test_a_move_shares_the_cpu_with_the_jobs_beside_it() -> None:
    jobs = [JobSpec(0, 100.0, rss_bytes=10 * MB) for _ in range(5)]
    image = 10 * MB / 50e6
    flat = Simulation([NodeSpec(speed=5000)], jobs, SimConfig(freeze_cost_s=0.1))
    node, job = flat.nodes[0], flat.jobs[0]
    node.jobs = flat.jobs[1:]  # the moving job is off the run queue; four run beside it
    assert flat.move_time(node, job) == pytest.approx(0.1 * 2 + image)  # half speed: twice
    shared = Simulation([NodeSpec(speed=5000)], jobs, SimConfig(freeze_cost_s=0.1, agent_weight=2))
    node, job = shared.nodes[0], shared.jobs[0]
    node.jobs = shared.jobs[1:]
    # The agent's weight 2 against four jobs' 1 each: a third of the half CPU.
    assert shared.move_time(node, job) == pytest.approx(0.1 * 2 * 3 + image)
    node.jobs = []
    assert shared.move_time(node, job) == pytest.approx(0.1 * 2 + image)


def test_a_target_counts_a_job_once_it_runs_unless_told_otherwise() -> None:
    jobs = [JobSpec(0, 100.0, rss_bytes=5 * MB) for _ in range(4)]
    for count in (False, True):
        sim = Simulation([NodeSpec(), NodeSpec()], jobs, SimConfig(count_incoming=count))
        target = sim.nodes[1]
        target.incoming = 1
        assert sim._view(target).load == (1.0 if count else 0.0)


def test_the_simulator_forgets_recent_moves_when_the_agent_does() -> None:
    from pymosix import balancer
    from pymosix.sim import engine

    assert engine.RECENT_MOVE_S == balancer.RECENT_MOVE_S
