"""The balancing policy: a pure function from a snapshot of the cluster to migration decisions.

openMosix's idea, re-done: every node looks at its own jobs and at the loads it heard from a few
peers, and pushes work to a peer only when the job would run clearly faster there, counting what
the move costs. The same `decide` drives the node agent and the simulator (pymosix.sim).

Units: loads are normalised (pymosix.load.metric: reference CPUs of work per CPU), times are
seconds, sizes bytes. A node's *pressure* is what a unit of work costs there: its load, but never
less than 1/speed of the reference, since a job alone on a slow CPU is still slow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pymosix.ids import NodeId
from pymosix.load.metric import REFERENCE_SPEED, job_load, runnable_per_cpu

_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Tunables of the balancer; openMosix's "overhead" is `threshold` plus the cost term."""

    #: Pressure gap (source minus target after the move) a move must beat, before costs. It makes
    #: 2 vs 2 (gap -1) and 2 vs 1 (gap 0) stay put and lets 3 vs 1 (gap 1) move.
    threshold: float = 0.5
    #: Migration channel bandwidth, for the cost of moving an image.
    bandwidth_bytes_per_s: float = 50e6
    #: Fixed cost of a migration (CRIU freeze, dump, restore), in seconds of the job not running:
    #: measured 0.09 s for a 1 MB job on a quiet node (bench.freeze_time) to 0.19-0.24 s on the
    #: seed's busy node (bench.time_to_balance's logs), the image included.
    freeze_cost_s: float = 0.25
    #: A move must cost less than this fraction of the job's expected remaining run time.
    max_cost_fraction: float = 0.5
    #: Jobs younger than this are not moved automatically (most short jobs end where they start).
    #: The cost rule below keeps a job longer than this while its move would cost over half its
    #: expected remaining time (a 50 MB job: 2.5 s); this floor is for jobs whose image is tiny.
    min_age_s: float = 0.5
    #: A job that arrived here stays at least this long, doubled for each earlier migration.
    min_stay_s: float = 5.0
    #: Ceiling of the per-job cool-down.
    max_stay_s: float = 120.0
    #: Jobs wanting less than this many CPUs (I/O-bound) are not moved for load.
    min_cpu_demand: float = 0.5
    #: Peer information older than this is ignored.
    max_info_age_s: float = 5.0
    #: A node whose free memory falls below this fraction of its total ushers jobs away.
    mem_low_fraction: float = 0.1
    #: At most this many decisions per round.
    max_decisions: int = 4


@dataclass(frozen=True, slots=True)
class JobView:
    """One managed job as the node it runs on sees it."""

    home_pid: int
    #: The node it runs on now.
    node: NodeId
    #: Its home node (where the deputy is).
    home: NodeId
    age_s: float
    #: Recent share of one CPU it got (0..1 per thread); with the node's load it gives its demand.
    cpu_fraction: float
    #: The memory a move copies and frees here: anonymous RSS (clean file pages stay behind).
    rss_bytes: int
    #: Locked in place (mosrun -L, nomig, /proc/PID/lock in openMosix).
    locked: bool = False
    #: Nodes it may run on (mosrun -j); None: any. Its home node is always allowed.
    allowed_nodes: frozenset[NodeId] | None = None
    #: When it last arrived by migration; None if it never moved.
    last_migrated_at: float | None = None
    migrations: int = 0
    #: Nodes that refused it lately (pymosix.refusals): not tried again before their back-off.
    refused_targets: frozenset[NodeId] = frozenset()
    #: It cannot move at all for now (its own state, openMosix's cantmove).
    stuck: bool = False


@dataclass(frozen=True, slots=True)
class NodeView:
    """What is known of one node: its load vector entry plus its mosctl flags."""

    node_id: NodeId
    load: float
    speed: int = REFERENCE_SPEED
    ncpus: int = 1
    mem_total: int = 0
    mem_free: int = 0
    local_jobs: int = 0
    guest_jobs: int = 0
    #: mosctl stay: no automatic migration away from this node.
    stay: bool = False
    #: mosctl lstay: local jobs stay, guests may leave.
    lstay: bool = False
    #: mosctl block: refuse guests.
    block: bool = False
    #: Age of this information.
    age_s: float = 0.0


@dataclass(frozen=True, slots=True)
class RecentMove:
    """A migration this node sent lately; counted on the target until its load shows it."""

    target: NodeId
    at: float
    #: CPUs the job wanted.
    cpus: float = 1.0
    rss_bytes: int = 0


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """Everything one round of `decide` looks at."""

    self_id: NodeId
    now: float
    #: Jobs running on this node: its own and its guests.
    jobs: tuple[JobView, ...]
    peers: Mapping[NodeId, NodeView]
    me: NodeView
    config: PolicyConfig = field(default_factory=PolicyConfig)
    recent_moves: tuple[RecentMove, ...] = ()


@dataclass(frozen=True, slots=True)
class MigrationDecision:
    """Move job home_pid to node target, and why."""

    home_pid: int
    target: NodeId
    reason: str
    #: The target's load as this node saw it, before the move; the offer carries it so that
    #: the target can refuse offers made on stale information (see accept_offer).
    target_load: float = 0.0


def decide(snap: ClusterSnapshot) -> list[MigrationDecision]:
    """One balancing round at this node: memory ushering first, then load balancing."""
    cfg = snap.config
    if snap.me.stay or cfg.max_decisions <= 0:
        return []
    round_ = _Round(snap)
    movable = [j for j in snap.jobs if _may_leave(snap, j)]
    decisions: list[MigrationDecision] = []
    moved: set[int] = set()

    # Memory ushering: short of memory, move jobs to peers with room, whatever the load.
    low = cfg.mem_low_fraction * snap.me.mem_total
    for job in _usher_order(movable, low - round_.mem_free):
        if len(decisions) >= cfg.max_decisions or round_.mem_free >= low:
            break
        target = round_.best_for_memory(job)
        if target is not None:
            decisions.append(
                MigrationDecision(
                    job.home_pid,
                    target,
                    f"memory: {round_.mem_free / 2**20:.0f} MiB free of "
                    f"{snap.me.mem_total / 2**20:.0f} MiB",
                    round_.load[target],
                )
            )
            moved.add(job.home_pid)
            round_.apply(job, target)

    # Load balancing: best candidates first, each to the peer where it would run best.
    scores = {j.home_pid: _score(snap, round_, j) for j in movable if j.home_pid not in moved}
    candidates = sorted(
        (j for j in movable if scores.get(j.home_pid, 0.0) > 0.0),
        key=lambda j: (-scores[j.home_pid], j.rss_bytes, j.home_pid),
    )
    if candidates and not round_.any_load_gap():
        return decisions
    for job in candidates:
        if len(decisions) >= cfg.max_decisions:
            break
        best = round_.best_for_load(job)
        if best is None:
            continue
        target, gap, needed = best
        decisions.append(
            MigrationDecision(
                job.home_pid,
                target,
                f"load: pressure {round_.pressure_here():.2f} here, {gap:.2f} above the target's "
                f"after the move (needed {needed:.2f})",
                round_.load[target],
            )
        )
        round_.apply(job, target)
    return decisions


#: A round just after a job comes of age, not at the instant: there its move's cost term is at
#: its cap, the gap needed is threshold + max_cost_fraction (1.0), and the seed's second job
#: (a gap of exactly 1.0) would wait for the next round.
RIPE_MARGIN_S = 0.01


def ripe_in(snap: ClusterSnapshot) -> float | None:
    """Seconds until the first job here now too young to move for load (min_age_s, or its move
    costing over max_cost_fraction of its age) comes of age, and RIPE_MARGIN_S more; None if none
    waits for that. The balancer takes a round then, not up to a period later."""
    cfg = snap.config
    waits = [
        max(cfg.min_age_s, _cost_s(cfg, j) / cfg.max_cost_fraction) - j.age_s + RIPE_MARGIN_S
        for j in snap.jobs
        if j.cpu_fraction > 0.0 and _may_leave(snap, j)
    ]
    return min((w for w in waits if w > 0.0), default=None)


def best_node(snap: ClusterSnapshot, job: JobView, *, placing: bool = False) -> NodeId | None:
    """The best node for this job now, or None when where it is (this node) is best.

    For `migrate PID balance` and `mosrun -b`: cost, age and the stay/lstay/lock flags are not
    considered (the user asked), node lists and blocked targets are. With placing=True the job
    is not running yet, so this node's load does not include it.
    """
    round_ = _Round(snap)
    demand = 1.0 if placing else round_.demand(job)
    here = round_.pressure_with(snap.self_id, demand) if placing else round_.pressure_here()
    best: NodeId | None = None
    best_p = here - snap.config.threshold
    for nid in round_.usable_peers():
        if not _may_enter(snap, job, round_.peers[nid]):
            continue
        p = round_.pressure_with(nid, demand)
        if p < best_p - _EPS:
            best, best_p = nid, p
    return best


def accept_offer(
    me: NodeView, job_home: NodeId, believed_load: float, cpus: float = 1.0, on_way: int = 0
) -> bool:
    """The target's check of an incoming offer against its own fresh load.

    Refuses guests while blocked, and offers made on stale information: when this node's load
    (counting the `on_way` jobs already on their way here, beside this one) has risen by half a
    job or more since the source heard it, several nodes saw it idle at once; the sources will
    pick again with fresher news.
    """
    if me.block and job_home != me.node_id:
        return False
    load = me.load + on_way * job_load(1.0, me.ncpus, me.speed)
    return load < believed_load + 0.5 * job_load(cpus, me.ncpus, me.speed)


# --- helpers ---------------------------------------------------------------------------------


def _may_leave(snap: ClusterSnapshot, job: JobView) -> bool:
    """Whether locks, lstay and the per-job cool-down let the job leave automatically now."""
    if job.locked or job.stuck:
        return False
    if snap.me.lstay and job.home == snap.self_id:
        return False
    if job.last_migrated_at is not None:
        cfg = snap.config
        stay = min(cfg.max_stay_s, cfg.min_stay_s * 2.0 ** max(0, job.migrations - 1))
        if snap.now - job.last_migrated_at < stay:
            return False
    return True


def _may_enter(snap: ClusterSnapshot, job: JobView, target: NodeView) -> bool:
    """Whether the job may run on target: node lists, and block (home always takes its own)."""
    if target.node_id in job.refused_targets:
        return False
    if target.node_id == job.home:
        return True
    if target.block:
        return False
    return job.allowed_nodes is None or target.node_id in job.allowed_nodes


def _cost_s(cfg: PolicyConfig, job: JobView) -> float:
    """Seconds the job stands still to move: freeze plus image over bandwidth."""
    return cfg.freeze_cost_s + job.rss_bytes / cfg.bandwidth_bytes_per_s


def _score(snap: ClusterSnapshot, round_: _Round, job: JobView) -> float:
    """How much the job is worth moving for load: CPU demand times the share of time not lost."""
    cfg = snap.config
    if job.age_s < cfg.min_age_s:
        return 0.0
    demand = round_.demand(job)
    if demand < cfg.min_cpu_demand:
        return 0.0
    # A job that has run for t is expected to run about t more (Harchol-Balter and Downey).
    ratio = _cost_s(cfg, job) / max(job.age_s, _EPS)
    if ratio > cfg.max_cost_fraction:
        return 0.0
    return demand * (1.0 - ratio)


def _usher_order(jobs: list[JobView], deficit: float) -> list[JobView]:
    """Jobs to usher away: the smallest that covers the deficit alone, then largest first."""
    if deficit <= 0:
        return []
    by_size = sorted(jobs, key=lambda j: (-j.rss_bytes, j.home_pid))
    covering = [j for j in by_size if j.rss_bytes >= deficit]
    first = covering[-1:] if covering else []
    return first + [j for j in by_size if j not in first]


def _spread(a: int, b: int) -> int:
    """A fixed pseudo-random tie-break: nodes seeing the same idle peers pick different ones."""
    x = (a * 0x9E3779B1 ^ b * 0x85EBCA77) & 0xFFFFFFFF
    x ^= x >> 15
    return (x * 0x2C1B3C6D) & 0xFFFFFFFF


class _Round:
    """Projected loads and free memory during one round, updated by each decision."""

    def __init__(self, snap: ClusterSnapshot) -> None:
        self.snap = snap
        cfg = snap.config
        self.peers = {
            nid: v
            for nid, v in snap.peers.items()
            if nid != snap.self_id and v.age_s <= cfg.max_info_age_s
        }
        self.load: dict[NodeId, float] = {nid: v.load for nid, v in self.peers.items()}
        self.mem: dict[NodeId, float] = {nid: float(v.mem_free) for nid, v in self.peers.items()}
        # Moves this node made after a peer's information was measured are not in it yet; a
        # move at the same instant counts too (counting twice delays a move, missing it ping-pongs).
        for mv in snap.recent_moves:
            v = self.peers.get(mv.target)
            if v is not None and mv.at >= snap.now - v.age_s:
                self.load[mv.target] += job_load(mv.cpus, v.ncpus, v.speed)
                self.mem[mv.target] -= mv.rss_bytes
        self.my_load = snap.me.load
        self.mem_free = float(snap.me.mem_free)
        me = snap.me
        self._rpc = max(1.0, runnable_per_cpu(me.load, me.speed))
        self._order: list[NodeId] | None = None

    def usable_peers(self) -> list[NodeId]:
        """Fresh peers, in a per-node shuffled order for tie-breaks."""
        if self._order is None:
            me = self.snap.self_id
            self._order = sorted(self.peers, key=lambda nid: _spread(me, nid))
        return self._order

    def any_load_gap(self) -> bool:
        """Cheap test first: could any peer, even before adding a job, beat the threshold?"""
        floor = min(
            (max(self.load[nid], REFERENCE_SPEED / v.speed) for nid, v in self.peers.items()),
            default=None,
        )
        return floor is not None and self.pressure_here() - floor > self.snap.config.threshold

    def demand(self, job: JobView) -> float:
        """CPUs the job would use alone: its share here scaled by how crowded this node is."""
        return min(1.0, job.cpu_fraction * self._rpc)

    def pressure_here(self) -> float:
        """What a unit of work costs on this node now."""
        return max(self.my_load, REFERENCE_SPEED / self.snap.me.speed)

    def pressure_with(self, nid: NodeId, demand: float) -> float:
        """What a unit of work would cost on node nid with this job added."""
        v = self.snap.me if nid == self.snap.self_id else self.peers[nid]
        base = self.my_load if nid == self.snap.self_id else self.load[nid]
        return max(base + job_load(demand, v.ncpus, v.speed), REFERENCE_SPEED / v.speed)

    def best_for_load(self, job: JobView) -> tuple[NodeId, float, float] | None:
        """The allowed peer with the lowest pressure after the move, if the gap beats overhead."""
        cfg = self.snap.config
        demand = self.demand(job)
        needed = cfg.threshold + _cost_s(cfg, job) / max(job.age_s, _EPS)
        here = self.pressure_here()
        best: tuple[NodeId, float, float] | None = None
        for nid in self.usable_peers():
            if not _may_enter(self.snap, job, self.peers[nid]):
                continue
            gap = here - self.pressure_with(nid, demand)
            if gap > needed + _EPS and (best is None or gap > best[1] + _EPS):
                best = (nid, gap, needed)
        return best

    def best_for_memory(self, job: JobView) -> NodeId | None:
        """The allowed peer that keeps enough free memory with the job, least loaded first."""
        cfg = self.snap.config
        demand = self.demand(job)
        best: NodeId | None = None
        best_p = 0.0
        for nid in self.usable_peers():
            v = self.peers[nid]
            if not _may_enter(self.snap, job, v):
                continue
            if self.mem[nid] - job.rss_bytes < cfg.mem_low_fraction * v.mem_total:
                continue
            p = self.pressure_with(nid, demand)
            if best is None or p < best_p - _EPS:
                best, best_p = nid, p
        return best

    def apply(self, job: JobView, target: NodeId) -> None:
        """Project a decided move: the job's load and memory leave here and land on target."""
        me, v = self.snap.me, self.peers[target]
        demand = self.demand(job)
        self.my_load = max(0.0, self.my_load - job_load(demand, me.ncpus, me.speed))
        self.load[target] += job_load(demand, v.ncpus, v.speed)
        self.mem_free += job.rss_bytes
        self.mem[target] -= job.rss_bytes
