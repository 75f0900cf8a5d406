"""Named, seeded scenarios for the simulator; each returns a SimResult."""

from __future__ import annotations

import random
from collections.abc import Callable

from pymosix.sim.engine import JobSpec, NodeSpec, SimConfig, SimResult, Simulation

MB = 2**20


def seed(nodes: int = 2, seed: int = 0, work_s: float = 100.0) -> SimResult:
    """The seed's section 5.3: two CPU-bound loops per node, all started on the first node."""
    specs = [NodeSpec() for _ in range(nodes)]
    jobs = [JobSpec(home=0, work=work_s, rss_bytes=5 * MB) for _ in range(2 * nodes)]
    return Simulation(specs, jobs, SimConfig(), seed=seed).run()


def hotspot(
    nodes: int = 1000, seed: int = 0, hot_fraction: float = 0.02, work_s: float = 120.0
) -> SimResult:
    """A few hot nodes start one job per node of the cluster between them; the rest are idle."""
    rng = random.Random(seed)
    specs = [NodeSpec() for _ in range(nodes)]
    hot = max(1, int(nodes * hot_fraction))
    jobs = [
        JobSpec(home=i % hot, work=work_s, rss_bytes=rng.randint(2, 40) * MB) for i in range(nodes)
    ]
    return Simulation(specs, jobs, SimConfig(), seed=seed).run()


def uneven(
    nodes: int = 2, seed: int = 0, jobs_per_node: int = 8, span_s: float = 60.0
) -> SimResult:
    """Jobs of mixed lengths (1 s to 4 min) arriving at random times at the first node."""
    rng = random.Random(seed)
    specs = [NodeSpec() for _ in range(nodes)]
    jobs = [
        JobSpec(
            home=0,
            work=min(240.0, 1.0 + rng.expovariate(1 / 60.0)),
            arrival_s=rng.uniform(0.0, span_s),
            rss_bytes=rng.randint(2, 60) * MB,
        )
        for _ in range(jobs_per_node * nodes)
    ]
    return Simulation(specs, jobs, SimConfig(), seed=seed).run()


def mixed_speeds(nodes: int = 8, seed: int = 0, work_s: float = 100.0) -> SimResult:
    """Half the nodes twice as fast, two CPUs on some; all jobs start on a slow node."""
    rng = random.Random(seed)
    specs = [
        NodeSpec(speed=20000 if i % 2 else 10000, ncpus=rng.choice((1, 2))) for i in range(nodes)
    ]
    cpus = sum(s.ncpus for s in specs)
    jobs = [JobSpec(home=0, work=work_s, rss_bytes=5 * MB) for _ in range(2 * cpus)]
    return Simulation(specs, jobs, SimConfig(), seed=seed).run()


def unbalanced(nodes: int = 2, seed: int = 0, work_s: float = 100.0) -> SimResult:
    """The seed scenario with balancing off: the baseline."""
    specs = [NodeSpec() for _ in range(nodes)]
    jobs = [JobSpec(home=0, work=work_s, rss_bytes=5 * MB) for _ in range(2 * nodes)]
    return Simulation(specs, jobs, SimConfig(balance=False), seed=seed).run()


SCENARIOS: dict[str, Callable[..., SimResult]] = {
    "seed": seed,
    "hotspot": hotspot,
    "uneven": uneven,
    "mixed-speeds": mixed_speeds,
    "unbalanced": unbalanced,
}
