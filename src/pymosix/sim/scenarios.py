"""Named, seeded scenarios for the simulator; each returns a SimResult.

Every scenario takes `nodes`, `seed` and `config` (a SimConfig, e.g. another hello scheme).
Clusters of up to 100 nodes are sampled every 0.1 s (time to balance to 0.1 s), bigger ones every
second.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence

from pymosix.sim.engine import (
    JobSpec,
    NodeChange,
    NodeSpec,
    OwnerLoad,
    Partition,
    SimConfig,
    SimResult,
    Simulation,
)

MB = 2**20


def _cfg(config: SimConfig | None, nodes: int, **changes: object) -> SimConfig:
    cfg = config or SimConfig()
    sample = 0.1 if nodes <= 100 else 1.0
    return dataclasses.replace(cfg, sample_s=sample, **changes)  # type: ignore[arg-type]


def seed(
    nodes: int = 2, seed: int = 0, work_s: float = 100.0, config: SimConfig | None = None
) -> SimResult:
    """The seed's section 5.3: two CPU-bound loops per node, all started on the first node."""
    specs = [NodeSpec() for _ in range(nodes)]
    jobs = [JobSpec(home=0, work=work_s, rss_bytes=5 * MB) for _ in range(2 * nodes)]
    return Simulation(specs, jobs, _cfg(config, nodes), seed=seed).run()


def hotspot(
    nodes: int = 1000,
    seed: int = 0,
    hot_fraction: float = 0.02,
    work_s: float = 120.0,
    config: SimConfig | None = None,
    until_balanced: bool = False,
) -> SimResult:
    """A few hot nodes start one job per node of the cluster between them; the rest are idle.
    until_balanced: stop when every node has its job (for scale runs)."""
    rng = random.Random(seed)
    specs = [NodeSpec() for _ in range(nodes)]
    hot = max(1, int(nodes * hot_fraction))
    jobs = [
        JobSpec(home=i % hot, work=work_s, rss_bytes=rng.randint(2, 40) * MB) for i in range(nodes)
    ]
    return Simulation(specs, jobs, _cfg(config, nodes), seed=seed).run(
        until_balanced=until_balanced
    )


def uneven(
    nodes: int = 2,
    seed: int = 0,
    jobs_per_node: int = 8,
    span_s: float = 60.0,
    config: SimConfig | None = None,
) -> SimResult:
    """Jobs of mixed, unknown lengths (1 s to 4 min) arriving at random times at the first node."""
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
    return Simulation(specs, jobs, _cfg(config, nodes), seed=seed).run()


def mixed_speeds(
    nodes: int = 8, seed: int = 0, work_s: float = 100.0, config: SimConfig | None = None
) -> SimResult:
    """Half the nodes twice as fast, two CPUs on some; all jobs start on a slow node."""
    rng = random.Random(seed)
    specs = [
        NodeSpec(speed=20000 if i % 2 else 10000, ncpus=rng.choice((1, 2))) for i in range(nodes)
    ]
    cpus = sum(s.ncpus for s in specs)
    jobs = [JobSpec(home=0, work=work_s, rss_bytes=5 * MB) for _ in range(2 * cpus)]
    return Simulation(specs, jobs, _cfg(config, nodes), seed=seed).run()


def owner_returns(
    nodes: int = 2,
    seed: int = 0,
    work_s: float = 30.0,
    owner_at_s: float = 10.0,
    owner_tasks: int = 4,
    config: SimConfig | None = None,
    balance: bool = True,
    speed: int = 10000,
    arrivals: Sequence[float] | None = None,
    works: Sequence[float] | None = None,
) -> SimResult:
    """One job per node, all started at the first node; at owner_at_s the owners of the second
    half of the nodes come back and run owner_tasks CPU-bound processes each, to the end
    (bench/owner_returns.py runs the same on the bed; bench/owner_returns4.py on 0.4-CPU nodes,
    speed 4000). work_s is in reference seconds (a job takes 2.5 times that at speed 4000).
    `arrivals`: when each job starts (default all at 0; the bed's benches pass when its jobs
    came to exist, after their mosruns' start); `works`: each job's work instead of work_s (what
    the bed's jobs used). A job's image: a perl loop's 0.5 MB."""
    specs = [NodeSpec(speed=speed) for _ in range(nodes)]
    starts = list(arrivals) if arrivals is not None else [0.0] * nodes
    each = list(works) if works is not None else [work_s] * nodes
    if len(starts) != nodes or len(each) != nodes:
        raise ValueError(f"{len(starts)} arrivals and {len(each)} works for {nodes} jobs")
    jobs = [
        JobSpec(home=0, work=w, rss_bytes=MB // 2, arrival_s=a)
        for a, w in zip(starts, each, strict=True)
    ]
    owners = [OwnerLoad(i, owner_at_s, tasks=owner_tasks) for i in range(nodes // 2, nodes)]
    return Simulation(
        specs,
        jobs,
        _cfg(config, nodes, balance=balance),
        seed=seed,
        owners=owners,
        balance_from_s=owner_at_s,
    ).run()


def churn(
    nodes: int = 100,
    seed: int = 0,
    work_s: float = 60.0,
    churn_fraction: float = 0.3,
    span_s: float = 120.0,
    config: SimConfig | None = None,
) -> SimResult:
    """Jobs arrive over span_s at a few home nodes while a share of the other nodes leave (with a
    bye, guests sent home) and others join that were not up at the start."""
    rng = random.Random(seed)
    specs = [NodeSpec() for _ in range(nodes)]
    homes = max(1, nodes // 20)
    jobs = [
        JobSpec(home=i % homes, work=work_s, arrival_s=rng.uniform(0, span_s), rss_bytes=8 * MB)
        for i in range(nodes)
    ]
    others = list(range(homes, nodes))
    rng.shuffle(others)
    k = int(len(others) * churn_fraction / 2)
    leaving, joining = others[:k], others[k : 2 * k]
    changes = [NodeChange(i, rng.uniform(10, span_s), up=False) for i in leaving]
    changes += [NodeChange(i, rng.uniform(10, span_s), up=True) for i in joining]
    return Simulation(
        specs, jobs, _cfg(config, nodes), seed=seed, changes=changes, absent=joining
    ).run()


def partition(
    nodes: int = 100,
    seed: int = 0,
    work_s: float = 120.0,
    start_s: float = 0.5,
    heal_s: float = 30.0,
    config: SimConfig | None = None,
) -> SimResult:
    """The hotspot, but at start_s the cluster splits in halves (all hot nodes on one side)
    until heal_s: the far half can only be used after the heal. Time to balance counts from it."""
    rng = random.Random(seed)
    specs = [NodeSpec() for _ in range(nodes)]
    hot = max(1, nodes // 50)
    jobs = [
        JobSpec(home=i % hot, work=work_s, rss_bytes=rng.randint(2, 40) * MB) for i in range(nodes)
    ]
    far = frozenset(range(nodes // 2, nodes))
    return Simulation(
        specs,
        jobs,
        _cfg(config, nodes),
        seed=seed,
        partition=Partition(start_s, heal_s, far),
        balance_from_s=heal_s,
    ).run()


def unbalanced(
    nodes: int = 2, seed: int = 0, work_s: float = 100.0, config: SimConfig | None = None
) -> SimResult:
    """The seed scenario with balancing off: the baseline."""
    specs = [NodeSpec() for _ in range(nodes)]
    jobs = [JobSpec(home=0, work=work_s, rss_bytes=5 * MB) for _ in range(2 * nodes)]
    return Simulation(specs, jobs, _cfg(config, nodes, balance=False), seed=seed).run()


SCENARIOS: dict[str, Callable[..., SimResult]] = {
    "seed": seed,
    "hotspot": hotspot,
    "arrivals": uneven,
    "mixed-speeds": mixed_speeds,
    "owner-returns": owner_returns,
    "churn": churn,
    "partition": partition,
    "unbalanced": unbalanced,
}
