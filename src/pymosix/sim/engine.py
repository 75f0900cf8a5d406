"""A discrete-event simulator of a pymosix cluster that runs the agent's own policy at every node.

Virtual seconds on a heap of events; one seeded random.Random. Nodes share their CPUs among their
jobs (processor sharing), sample and smooth their load with pymosix.load.metric, send their load
vector to a few random peers each interval (openMosix's exchange), and call pymosix.policy.decide
each interval. A migrating job does not run: the freeze costs `freeze_cost_s`, and its image
crosses the source's link (one image at a time) at `bandwidth_bytes_per_s`.
"""

from __future__ import annotations

import heapq
import operator
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from pymosix.ids import NodeId
from pymosix.load.metric import REFERENCE_SPEED, LoadEstimate, adjust, normalise, smooth
from pymosix.policy import (
    ClusterSnapshot,
    JobView,
    NodeView,
    PolicyConfig,
    RecentMove,
    accept_offer,
    decide,
)

_DONE_EPS = 1e-9
_MEASURED_AT = operator.attrgetter("measured_at")
_LOAD = operator.attrgetter("view.load")


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A simulated node."""

    speed: int = REFERENCE_SPEED
    ncpus: int = 1
    mem_total: int = 4 * 2**30


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A CPU-bound job: `work` reference-CPU seconds, started at `arrival_s` on node `home`."""

    home: int
    work: float
    arrival_s: float = 0.0
    rss_bytes: int = 8 * 2**20


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Timing of the simulated agents and the network."""

    interval_s: float = 1.0
    half_life_s: float = 1.0
    #: Peers each node sends its load vector to per interval.
    fanout: int = 3
    #: Entries a node keeps of other nodes' loads (openMosix's load vector).
    vector_size: int = 16
    #: Entries from the vector relayed along with a node's own load.
    relay: int = 4
    bandwidth_bytes_per_s: float = 50e6
    freeze_cost_s: float = 0.3
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    balance: bool = True
    #: How often imbalance is sampled.
    sample_s: float = 1.0


@dataclass(slots=True)
class _Job:
    jid: int
    home: int
    work: float
    total: float
    arrival: float
    rss: int
    last_migrated_at: float | None = None
    migrations: int = 0
    done_at: float | None = None


@dataclass(slots=True)
class _Entry:
    """A node's load as some node heard it: the NodeView with age 0 and when it was measured."""

    view: NodeView
    measured_at: float


@dataclass(slots=True)
class _Node:
    idx: int
    spec: NodeSpec
    jobs: list[_Job] = field(default_factory=list)
    est: LoadEstimate = field(default_factory=lambda: LoadEstimate(0.0, 0.0))
    last_update: float = 0.0
    version: int = 0
    incoming: int = 0
    incoming_rss: int = 0
    link_free_at: float = 0.0
    table: dict[int, _Entry] = field(default_factory=dict)
    recent: list[RecentMove] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SimResult:
    """What a run measured."""

    nodes: int
    jobs: int
    makespan_s: float
    lower_bound_s: float
    migrations: int
    #: Migrations decided before the first job ended (the rest rebalance the tail of the run).
    migrations_before_first_exit: int
    #: Offers the target refused (made on stale load information).
    refusals: int
    max_migrations_per_job: int
    #: Largest spread of jobs per CPU between nodes over the samples (jobs in flight not counted).
    max_imbalance: float
    #: Largest spread after `settle_s` while no job had finished yet (what balancing controls).
    settled_imbalance: float
    #: First time every node had a job, or None.
    all_busy_s: float | None
    finished: int
    events: int

    @property
    def ratio(self) -> float:
        """Makespan over the lower bound (1.0 is ideal)."""
        return self.makespan_s / self.lower_bound_s if self.lower_bound_s > 0 else float("inf")


def lower_bound(nodes: Sequence[NodeSpec], jobs: Sequence[JobSpec]) -> float:
    """No schedule can finish before this: all work over all capacity, or the latest job alone."""
    if not jobs:
        return 0.0
    capacity = sum(n.speed * n.ncpus for n in nodes) / REFERENCE_SPEED
    fastest = max(n.speed for n in nodes) / REFERENCE_SPEED
    first = min(j.arrival_s for j in jobs)
    return max(
        first + sum(j.work for j in jobs) / capacity,
        max(j.arrival_s + j.work / fastest for j in jobs),
    )


class Simulation:
    """One seeded run over a simulated cluster."""

    def __init__(
        self,
        nodes: Sequence[NodeSpec],
        jobs: Sequence[JobSpec],
        config: SimConfig | None = None,
        seed: int = 0,
        settle_s: float = 10.0,
    ) -> None:
        self.cfg = config or SimConfig()
        self.rng = random.Random(seed)
        self.specs = list(nodes)
        self.job_specs = list(jobs)
        self.nodes = [_Node(i, s) for i, s in enumerate(self.specs)]
        self.jobs = [
            _Job(i, j.home, j.work, j.work, j.arrival_s, j.rss_bytes) for i, j in enumerate(jobs)
        ]
        self.settle_s = settle_s
        self._heap: list[tuple[float, int, int, int, int]] = []
        self._seq = 0
        self.now = 0.0
        self.migrations = 0
        self.refusals = 0
        self._early_migrations = 0
        self.finished = 0
        self.events = 0
        self.max_imbalance = 0.0
        self.settled_imbalance = 0.0
        self.all_busy_s: float | None = None
        self._first_done: float | None = None

    # Event kinds, with (a, b) meaning: arrive (job, -), tick (node, -), land (job, node),
    # done (node, version), sample (-, -).
    _ARRIVE, _TICK, _LAND, _DONE, _SAMPLE = range(5)

    def _push(self, t: float, kind: int, a: int = 0, b: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, a, b))

    def run(self, until_s: float = float("inf")) -> SimResult:
        """Run until every job has finished or until_s; return the measurements."""
        for j in self.jobs:
            self._push(j.arrival, self._ARRIVE, j.jid)
        for n in self.nodes:
            self._push(self.rng.uniform(0, self.cfg.interval_s), self._TICK, n.idx)
        self._push(0.0, self._SAMPLE)
        while self._heap and self.finished < len(self.jobs):
            t, _, kind, a, b = heapq.heappop(self._heap)
            if t > until_s:
                break
            self.now = t
            self.events += 1
            if kind == self._TICK:
                self._tick(self.nodes[a])
            elif kind == self._DONE:
                self._done(self.nodes[a], b)
            elif kind == self._ARRIVE:
                job = self.jobs[a]
                self._enter(self.nodes[job.home], job)
            elif kind == self._LAND:
                node = self.nodes[b]
                node.incoming -= 1
                node.incoming_rss -= self.jobs[a].rss
                job = self.jobs[a]
                job.last_migrated_at = t
                job.migrations += 1
                node.est = adjust(node.est, 1.0)
                self._enter(node, job)
            else:
                self._sample()
        done = [j.done_at for j in self.jobs if j.done_at is not None]
        return SimResult(
            nodes=len(self.nodes),
            jobs=len(self.jobs),
            makespan_s=max(done) if len(done) == len(self.jobs) and done else float("inf"),
            lower_bound_s=lower_bound(self.specs, self.job_specs),
            migrations=self.migrations,
            migrations_before_first_exit=self._early_migrations,
            refusals=self.refusals,
            max_migrations_per_job=max((j.migrations for j in self.jobs), default=0),
            max_imbalance=self.max_imbalance,
            settled_imbalance=self.settled_imbalance,
            all_busy_s=self.all_busy_s,
            finished=self.finished,
            events=self.events,
        )

    # --- processor sharing ------------------------------------------------------------------

    def _rate(self, node: _Node) -> float:
        """Reference-CPU seconds each job on the node gets per second."""
        k = len(node.jobs)
        if k == 0:
            return 0.0
        return node.spec.speed / REFERENCE_SPEED * min(1.0, node.spec.ncpus / k)

    def _advance(self, node: _Node) -> None:
        dt = self.now - node.last_update
        if dt > 0 and node.jobs:
            step = self._rate(node) * dt
            for j in node.jobs:
                j.work -= step
        node.last_update = self.now

    def _reschedule(self, node: _Node) -> None:
        node.version += 1
        if node.jobs:
            least = min(j.work for j in node.jobs)
            t = self.now + max(0.0, least) / self._rate(node)
            self._push(t, self._DONE, node.idx, node.version)

    def _enter(self, node: _Node, job: _Job) -> None:
        self._advance(node)
        node.jobs.append(job)
        self._reschedule(node)

    def _done(self, node: _Node, version: int) -> None:
        if version != node.version:
            return
        self._advance(node)
        left = []
        for j in node.jobs:
            if j.work <= _DONE_EPS:
                j.done_at = self.now
                self.finished += 1
                node.est = adjust(node.est, -1.0)
                if self._first_done is None:
                    self._first_done = self.now
                    self._early_migrations = self.migrations
            else:
                left.append(j)
        node.jobs = left
        self._reschedule(node)

    # --- the agent's interval ---------------------------------------------------------------

    def _view(self, node: _Node) -> NodeView:
        s = node.spec
        used = sum(j.rss for j in node.jobs) + node.incoming_rss
        return NodeView(
            node_id=NodeId(node.idx + 1),
            load=normalise(node.est.runnable + node.incoming, s.ncpus, s.speed),
            speed=s.speed,
            ncpus=s.ncpus,
            mem_total=s.mem_total,
            mem_free=max(0, s.mem_total - used),
        )

    def _tick(self, node: _Node) -> None:
        cfg = self.cfg
        self._advance(node)
        node.est = smooth(node.est, len(node.jobs), self.now, cfg.half_life_s)
        mine = _Entry(self._view(node), self.now)
        self._gossip(node, mine)
        if cfg.balance and node.jobs:
            self._balance(node, mine.view)
        self._reschedule(node)
        self._push(self.now + cfg.interval_s, self._TICK, node.idx)

    def _gossip(self, node: _Node, mine: _Entry) -> None:
        """Trim this node's load vector, then send its load and some entries to random peers."""
        cfg, n = self.cfg, len(self.nodes)
        if n < 2:
            return
        # Received entries pile up between ticks; the owner keeps the freshest, once per interval.
        entries = sorted(node.table.values(), key=_MEASURED_AT, reverse=True)
        if len(entries) > cfg.vector_size:
            del entries[cfg.vector_size :]
            node.table = {e.view.node_id - 1: e for e in entries}
        # Pass on the freshest entries and the least loaded ones: news of idle nodes is what
        # loaded nodes lack (MOSIX's gossip likewise favours what is useful to the receiver).
        half = cfg.relay // 2
        relay = entries[:half]
        relay += sorted(entries[half:], key=_LOAD)[: cfg.relay - half]
        relay.append(mine)
        for _ in range(cfg.fanout):
            peer = self.nodes[(node.idx + self.rng.randrange(1, n)) % n]
            ptable = peer.table
            for e in relay:
                nid = e.view.node_id - 1
                if nid == peer.idx:
                    continue
                old = ptable.get(nid)
                if old is None or old.measured_at < e.measured_at:
                    ptable[nid] = e

    def _balance(self, node: _Node, me: NodeView) -> None:
        cfg, now = self.cfg, self.now
        pol = cfg.policy
        node.recent = [m for m in node.recent if now - m.at <= pol.max_info_age_s]
        peers = {}
        for e in node.table.values():
            v = e.view
            peers[v.node_id] = NodeView(
                v.node_id, v.load, v.speed, v.ncpus, v.mem_total, v.mem_free,
                age_s=now - e.measured_at,
            )  # fmt: skip
        share = min(1.0, node.spec.ncpus / len(node.jobs))
        jobs = tuple(
            JobView(
                j.jid,
                me.node_id,
                NodeId(j.home + 1),
                now - j.arrival,
                share,
                j.rss,
                last_migrated_at=j.last_migrated_at,
                migrations=j.migrations,
            )
            for j in node.jobs
        )
        snap = ClusterSnapshot(me.node_id, now, jobs, peers, me, pol, tuple(node.recent))
        decisions = decide(snap)
        if not decisions:
            return
        by_id = {j.jid: j for j in node.jobs}
        for d in decisions:
            target = self.nodes[d.target - 1]
            fresh = self._view(target)
            if not accept_offer(fresh, NodeId(by_id[d.home_pid].home + 1), d.target_load):
                # The refusal carries the target's load: the source's entry is fresh again.
                node.table[target.idx] = _Entry(fresh, now)
                self.refusals += 1
                continue
            job = by_id.pop(d.home_pid)
            # A CPU-bound job is one runnable task, whatever share of the CPU it was getting.
            node.est = adjust(node.est, -1.0)
            target.incoming += 1
            target.incoming_rss += job.rss
            # The freeze runs at once; the image then waits for the source's link.
            start = max(now + cfg.freeze_cost_s, node.link_free_at)
            node.link_free_at = start + job.rss / cfg.bandwidth_bytes_per_s
            self._push(node.link_free_at, self._LAND, job.jid, target.idx)
            node.recent.append(RecentMove(d.target, now, 1.0, job.rss))
            self.migrations += 1
        node.jobs = [j for j in node.jobs if j.jid in by_id]

    def _sample(self) -> None:
        per_cpu = [len(n.jobs) / n.spec.ncpus for n in self.nodes]
        spread = max(per_cpu) - min(per_cpu)
        self.max_imbalance = max(self.max_imbalance, spread)
        if self.now >= self.settle_s and self._first_done is None:
            self.settled_imbalance = max(self.settled_imbalance, spread)
        if self.all_busy_s is None and min(per_cpu) > 0:
            self.all_busy_s = self.now
        self._push(self.now + self.cfg.sample_s, self._SAMPLE)
