"""A discrete-event simulator of a pymosix cluster that runs the agent's own policy at every node.

Virtual seconds on a heap of events; one seeded random.Random. Nodes share their CPUs among their
jobs (processor sharing), sample and smooth their load with pymosix.load.metric, send their load
vector to a few random peers each interval (openMosix's exchange), and call pymosix.policy.decide
every half interval, as the agent's balancer does. A node carries out a round's decisions one
after the other, as the agent's balancer does (offer, freeze, image, restore; then the next): a
moving job does not run, for `freeze_cost_s` (at the reference speed; optionally stretched by the
node's other runnable tasks, `agent_weight`) plus its image at `bandwidth_bytes_per_s`.
Membership comes from hellos (sim/membership.py, the scheme of pymosix.discovery): a node gossips
only to nodes in its map, and keeps load entries only of those. Scenarios can add load pymosix
does not manage (an owner's processes), nodes that join and leave, and a partition that heals.
"""

from __future__ import annotations

import functools
import heapq
import operator
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pymosix.ids import NodeId
from pymosix.load.metric import REFERENCE_SPEED, LoadEstimate, adjust, normalise, smooth
from pymosix.policy import (
    ClusterSnapshot,
    JobView,
    MigrationDecision,
    NodeView,
    PolicyConfig,
    RecentMove,
    accept_offer,
    decide,
    ripe_in,
)
from pymosix.refusals import STALE_OFFER, Refusals
from pymosix.sim.membership import Membership

_DONE_EPS = 1e-9
#: pymosix.balancer.RECENT_MOVE_S (not imported: the balancer pulls in asyncio and the engine;
#: tests/unit/test_sim_serial.py checks they agree).
RECENT_MOVE_S = 3.0
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
class OwnerLoad:
    """`tasks` CPU-bound processes pymosix does not manage, on node `node` from start_s to end_s."""

    node: int
    start_s: float
    end_s: float = float("inf")
    tasks: int = 1


@dataclass(frozen=True, slots=True)
class NodeChange:
    """Node `node` goes up (joins) or down (leaves with a bye, sending its guests home) at at_s."""

    node: int
    at_s: float
    up: bool


@dataclass(frozen=True, slots=True)
class Partition:
    """From start_s to end_s the nodes in `side` and the others cannot reach each other."""

    start_s: float
    end_s: float
    side: frozenset[int]


@dataclass(frozen=True, slots=True)
class Sample:
    """One point of the time series."""

    t: float
    #: Largest minus smallest pressure (runnable tasks per reference CPU) over live nodes.
    imbalance: float
    #: Share of live nodes with at least one job.
    busy: float
    alive: int
    in_flight: int


@dataclass(frozen=True, slots=True)
class Move:
    """One move carried out: its job frozen from started_at, running on the target at ended_at."""

    job: int
    source: int
    target: int
    #: When the balancing round that decided it ran (None: a leaving node's guest going home).
    decided_at: float | None
    started_at: float
    ended_at: float


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Timing of the simulated agents and the network."""

    interval_s: float = 1.0
    #: Balancing rounds: twice per load interval, as in the agent (balancer.py).
    balance_s: float = 0.5
    half_life_s: float = 1.0
    #: Peers each node sends its load vector to per interval.
    fanout: int = 3
    #: Entries a node keeps of other nodes' loads (openMosix's load vector).
    vector_size: int = 16
    #: Entries from the vector relayed along with a node's own load.
    relay: int = 4
    bandwidth_bytes_per_s: float = 50e6
    #: How long one move freezes its job on a reference-speed node, besides its image on the link:
    #: the agent's offer, CRIU's dump and restore, the commit; longer in proportion on a slower
    #: node. The policy's own estimate (PolicyConfig.freeze_cost_s), within what was measured:
    #: 0.12 s for a small job on a quiet one-CPU node (bench/results/freeze_time.csv), 0.25 s
    #: (0.5 s at half a CPU) on the busy 4-node bed (docs/simulator.md).
    freeze_cost_s: float = 0.3
    #: If set, the move also shares the source's CPU with its k other runnable tasks at the
    #: agent's CFS weight over a job's (nice -5: 3121 / 1024): freeze_cost_s is then the move on an
    #: idle node, stretched by (1 + k / agent_weight) on a one-CPU node. The 4-node bed's 30 moves
    #: fit freeze_cost_s 0.09 s and agent_weight 2.15 (docs/simulator.md).
    agent_weight: float | None = None
    #: Whether a target counts a job it accepted in its load (the one it gossips, and the
    #: balancer's own) from the offer on. The agent does not: a job is in its target's load only
    #: once restored (engine.add_hosted -> job_moved); only its check of a further offer counts
    #: the moves it is taking (Balancer.accept, policy.accept_offer's on_way), as here.
    count_incoming: bool = False
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    balance: bool = True
    #: How often imbalance is sampled (and time to balance resolved).
    sample_s: float = 1.0
    #: Discovery: the configured hello interval and dead_after, and pymosix.discovery's budget
    #: (None: the fixed interval of the old scheme, every node every hello_s).
    hello_s: float = 0.5
    dead_after_s: float = 3.0
    hello_budget: int | None = 32


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
    #: Jobs accepted and on their way here, and their memory.
    incoming: int = 0
    incoming_rss: int = 0
    link_free_at: float = 0.0
    #: The round's decisions still to carry out, last first (the agent's `for d in decide(...)`).
    plan: list[MigrationDecision] = field(default_factory=list)
    #: When the round whose plan it is ran.
    decided_at: float = 0.0
    #: When a job there comes of age for a move (policy.ripe_in): the next round then, if sooner.
    ripe_at: float | None = None
    #: The job being moved out (frozen, on no node's run queue) and its target, or None.
    moving: tuple[_Job, int] | None = None
    refusals: Refusals = field(default_factory=Refusals)
    table: dict[int, _Entry] = field(default_factory=dict)
    recent: list[RecentMove] = field(default_factory=list)
    #: Runnable processes pymosix does not manage (an owner's).
    foreign: int = 0
    alive: bool = True
    #: Bumped when the node goes down: its pending ticks, rounds and hellos are void.
    epoch: int = 0
    up_since: float = 0.0
    #: Whether a balancing round is scheduled.
    rounds: bool = False


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
    #: First sample at or after `balance_from_s` with imbalance <= 1 and nothing in flight, minus
    #: balance_from_s; None if never.
    time_to_balance_s: float | None = None
    #: From an owner's load appearing to the last guest leaving that node (worst node); None if a
    #: guest stayed while the owner's load lasted.
    guests_left_s: float | None = None
    #: Datagrams sent plus received per live node per second: load reports, hellos, offers.
    messages_per_node_s: float = 0.0
    hellos_per_node_s: float = 0.0
    #: Offers that could not reach their target (partition, node gone).
    lost_offers: int = 0
    series: tuple[Sample, ...] = ()
    #: Every move, in the order they started.
    moves: tuple[Move, ...] = ()

    @property
    def ratio(self) -> float:
        """Makespan over the lower bound (1.0 is ideal)."""
        return self.makespan_s / self.lower_bound_s if self.lower_bound_s > 0 else float("inf")


def lower_bound(
    nodes: Sequence[NodeSpec], jobs: Sequence[JobSpec], owners: Sequence[OwnerLoad] = ()
) -> float:
    """No schedule can finish before this: all work over all capacity, or the latest job alone.

    With owners, a node is its owner's while their load lasts: it gives the batch nothing then
    (what openMosix promised a workstation's owner; a batch that shares the owner's CPU instead
    can do a little better than this bound).
    """
    if not jobs:
        return 0.0
    fastest = max(n.speed for n in nodes) / REFERENCE_SPEED
    first = min(j.arrival_s for j in jobs)
    left = sum(j.work for j in jobs)
    cuts = sorted({first, *(t for o in owners for t in (o.start_s, o.end_s) if t > first)})
    t = first
    for i, start in enumerate(cuts):
        end = cuts[i + 1] if i + 1 < len(cuts) else float("inf")
        owned = {o.node for o in owners if o.start_s <= start < o.end_s}
        cap = (
            sum(n.speed * n.ncpus for k, n in enumerate(nodes) if k not in owned) / REFERENCE_SPEED
        )
        if cap > 0 and left <= cap * (end - start):
            t = start + left / cap
            break
        left -= cap * (end - start) if end != float("inf") else 0.0
        t = end
    return max(t, max(j.arrival_s + j.work / fastest for j in jobs))


class Simulation:
    """One seeded run over a simulated cluster."""

    def __init__(
        self,
        nodes: Sequence[NodeSpec],
        jobs: Sequence[JobSpec],
        config: SimConfig | None = None,
        seed: int = 0,
        settle_s: float = 10.0,
        owners: Sequence[OwnerLoad] = (),
        changes: Sequence[NodeChange] = (),
        partition: Partition | None = None,
        absent: Sequence[int] = (),
        balance_from_s: float = 0.0,
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
        cfg = self.cfg
        self.members = Membership(len(self.nodes), cfg.hello_s, cfg.dead_after_s, cfg.hello_budget)
        for i in absent:
            self.nodes[i].alive = False
            self.members.absent(i)
        self.balance_from_s = balance_from_s
        self.owners = list(owners)
        self.time_to_balance_s: float | None = None
        self.lost_offers = 0
        self.load_sent = self.load_received = self.offers = 0
        self.series: list[Sample] = []
        self.moves: list[Move] = []
        self._node_seconds = 0.0
        self._in_flight = 0
        self._recounted = 0.0
        # Scenario events, in time order: (time, action).
        self._timeline: list[tuple[float, Callable[[], None]]] = []
        self._owner_since: dict[int, float] = {}
        self._guests_left: dict[int, float | None] = {}
        for o in owners:
            self._at(o.start_s, functools.partial(self._owner, o.node, o.tasks, o.start_s))
            if o.end_s != float("inf"):
                self._at(o.end_s, functools.partial(self._owner, o.node, -o.tasks, None))
        for c in changes:
            self._at(
                c.at_s, functools.partial(self._up if c.up else self._down, self.nodes[c.node])
            )
        if partition is not None:
            self._at(partition.start_s, functools.partial(self.members.split, set(partition.side)))
            self._at(partition.end_s, self.members.heal)

    # Event kinds, with (a, b) meaning: arrive (job, -), tick (node, epoch), land (job, node),
    # done (node, version), sample (-, -), round (node, epoch), hello (node, epoch),
    # timeline (index, -), moved (node, epoch: the source's move ended).
    _ARRIVE, _TICK, _LAND, _DONE, _SAMPLE, _ROUND, _HELLO, _TIMELINE, _MOVED = range(9)

    def _at(self, t: float, action: Callable[[], None]) -> None:
        self._timeline.append((t, action))

    def _push(self, t: float, kind: int, a: int = 0, b: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, a, b))

    def run(self, until_s: float = float("inf"), until_balanced: bool = False) -> SimResult:
        """Run until every job has finished, until_s, or (until_balanced) time to balance is
        known; return the measurements (makespan is inf unless every job finished)."""
        for j in self.jobs:
            self._push(j.arrival, self._ARRIVE, j.jid)
        for n in self.nodes:
            if n.alive:
                self._start_chains(n, first=True)
        for i, (t, _) in enumerate(self._timeline):
            self._push(t, self._TIMELINE, i)
        self._push(0.0, self._SAMPLE)
        while self._heap and self.finished < len(self.jobs):
            t, _, kind, a, b = heapq.heappop(self._heap)
            if t > until_s or (until_balanced and self.time_to_balance_s is not None):
                break
            self.now = t
            self.events += 1
            if kind == self._TICK:
                if self.nodes[a].epoch == b:
                    self._tick(self.nodes[a])
            elif kind == self._ROUND:
                if self.nodes[a].epoch == b:
                    self._round(self.nodes[a])
            elif kind == self._HELLO:
                if self.nodes[a].epoch == b:
                    self._push(self.members.hello(a, t), self._HELLO, a, b)
            elif kind == self._TIMELINE:
                self._timeline[a][1]()
            elif kind == self._DONE:
                self._done(self.nodes[a], b)
            elif kind == self._ARRIVE:
                job = self.jobs[a]
                # The agent counts a job it starts at once (engine._add_hosted -> job_moved).
                node = self.nodes[job.home]
                node.est = adjust(node.est, 1.0)
                self._enter(node, job)
            elif kind == self._MOVED:
                if self.nodes[a].epoch == b:
                    self._moved(self.nodes[a])
            elif kind == self._LAND:
                node = self.nodes[b]
                node.incoming -= 1
                node.incoming_rss -= self.jobs[a].rss
                job = self.jobs[a]
                self._in_flight -= 1
                job.last_migrated_at = t
                job.migrations += 1
                node.est = adjust(node.est, 1.0)
                self._enter(node, job)
            else:
                self._sample()
        for n in self.nodes:
            if n.alive:
                self._node_seconds += self.now - n.up_since
        node_s = max(self._node_seconds, 1e-9)
        m = self.members
        messages = self.load_sent + self.load_received + 2 * self.offers
        messages += m.hellos_sent + m.hellos_received
        left = list(self._guests_left.values())
        done = [j.done_at for j in self.jobs if j.done_at is not None]
        return SimResult(
            nodes=len(self.nodes),
            jobs=len(self.jobs),
            makespan_s=max(done) if len(done) == len(self.jobs) and done else float("inf"),
            lower_bound_s=lower_bound(self.specs, self.job_specs, self.owners),
            migrations=self.migrations,
            migrations_before_first_exit=self._early_migrations,
            refusals=self.refusals,
            max_migrations_per_job=max((j.migrations for j in self.jobs), default=0),
            max_imbalance=self.max_imbalance,
            settled_imbalance=self.settled_imbalance,
            all_busy_s=self.all_busy_s,
            finished=self.finished,
            events=self.events,
            time_to_balance_s=self.time_to_balance_s,
            guests_left_s=None
            if not left or None in left
            else max(v for v in left if v is not None),
            messages_per_node_s=messages / node_s,
            hellos_per_node_s=(m.hellos_sent + m.hellos_received) / node_s,
            lost_offers=self.lost_offers,
            series=tuple(self.series),
            moves=tuple(self.moves),
        )

    # --- processor sharing ------------------------------------------------------------------

    def _rate(self, node: _Node) -> float:
        """Reference-CPU seconds each job on the node gets per second."""
        k = len(node.jobs)
        if k == 0:
            return 0.0
        return node.spec.speed / REFERENCE_SPEED * min(1.0, node.spec.ncpus / (k + node.foreign))

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
        self._arm_rounds(node)

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
        # The agent counts a job here once it runs (see SimConfig.count_incoming).
        runnable = node.est.runnable + (node.incoming if self.cfg.count_incoming else 0)
        return NodeView(
            node_id=NodeId(node.idx + 1),
            load=normalise(runnable, s.ncpus, s.speed),
            speed=s.speed,
            ncpus=s.ncpus,
            mem_total=s.mem_total,
            mem_free=max(0, s.mem_total - used),
        )

    def _start_chains(self, node: _Node, first: bool = False) -> None:
        """A node's periodic work: load ticks, balancing rounds, hellos (at random phases)."""
        cfg, e = self.cfg, node.epoch
        self._push(self.now + self.rng.uniform(0, cfg.interval_s), self._TICK, node.idx, e)
        node.rounds = False
        if node.jobs:
            self._arm_rounds(node)
        # Already-running nodes are at a random point of their hello cycle; a joiner says hello.
        hello = self.rng.uniform(0, self.members.interval(0)) if first else 0.0
        self._push(self.now + hello, self._HELLO, node.idx, e)

    def _mine(self, node: _Node) -> _Entry:
        self._advance(node)
        node.est = smooth(node.est, len(node.jobs) + node.foreign, self.now, self.cfg.half_life_s)
        return _Entry(self._view(node), self.now)

    def _tick(self, node: _Node) -> None:
        self._gossip(node, self._mine(node))
        self._push(self.now + self.cfg.interval_s, self._TICK, node.idx, node.epoch)

    def _round(self, node: _Node) -> None:
        if not node.jobs:
            # Nothing to decide: the chain rests until a job enters (same phase distribution).
            node.rounds = False
            return
        if self.cfg.balance:
            node.plan, ripe = self._decide(node, self._mine(node).view)
            node.ripe_at = None if ripe is None else self.now + ripe
            node.plan.reverse()
            node.decided_at = self.now
        self._next_move(node)

    def _next_move(self, node: _Node) -> None:
        """Carry out the round's next decision; after the last, the next round is a period on
        (the agent's loop: `await round()`, then sleep)."""
        while node.plan:
            if self._start_move(node, node.plan.pop()):
                return
        at = self.now + self.cfg.balance_s
        if node.ripe_at is not None:
            at = min(at, max(self.now + 0.01, node.ripe_at))
        self._push(at, self._ROUND, node.idx, node.epoch)

    def _arm_rounds(self, node: _Node) -> None:
        if not node.rounds and node.alive:
            node.rounds = True
            delay = self.rng.uniform(0, self.cfg.balance_s)
            self._push(self.now + delay, self._ROUND, node.idx, node.epoch)

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
        m, now = self.members, self.now
        for _ in range(cfg.fanout):
            peer = self._known_peer(node)
            if peer is None:
                return
            self.load_sent += 1
            if not m.reachable(node.idx, peer.idx):
                continue
            self.load_received += 1
            ptable = peer.table
            for e in relay:
                nid = e.view.node_id - 1
                # Entries of nodes the receiver has not heard of are dropped (gossip.LoadTable).
                if nid == peer.idx or not m.knows(peer.idx, nid, now):
                    continue
                old = ptable.get(nid)
                if old is None or old.measured_at < e.measured_at:
                    ptable[nid] = e

    def _known_peer(self, node: _Node) -> _Node | None:
        """A random node of this node's map (rejection sampling: the map is not materialised)."""
        n, m = len(self.nodes), self.members
        for _ in range(64):
            peer = (node.idx + self.rng.randrange(1, n)) % n
            if m.knows(node.idx, peer, self.now):
                return self.nodes[peer]
        return None

    def _decide(self, node: _Node, me: NodeView) -> tuple[list[MigrationDecision], float | None]:
        """The agent's Balancer.snapshot and decide, on what this node has heard; and when a
        job there comes of age (policy.ripe_in)."""
        now = self.now
        node.recent = [m for m in node.recent if now - m.at < RECENT_MOVE_S]
        peers = {}
        for e in node.table.values():
            v = e.view
            if v.node_id == me.node_id:
                continue
            peers[v.node_id] = NodeView(
                v.node_id, v.load, v.speed, v.ncpus, v.mem_total, v.mem_free,
                age_s=now - e.measured_at,
            )  # fmt: skip
        share = min(1.0, node.spec.ncpus / (len(node.jobs) + node.foreign))
        refusals = node.refusals
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
                refused_targets=frozenset(NodeId(t) for t in refusals.refused_targets(j.jid, now)),
                stuck=refusals.stuck(j.jid, now),
            )
            for j in node.jobs
        )
        pol = self.cfg.policy
        snap = ClusterSnapshot(me.node_id, now, jobs, peers, me, pol, tuple(node.recent))
        return decide(snap), ripe_in(snap)

    def move_time(self, node: _Node, job: _Job) -> float:
        """How long moving `job` out of `node` freezes it (the job already off node.jobs): the
        move's own time on this node's CPU, then the image on the link."""
        cfg, s = self.cfg, node.spec
        cpu = s.speed / REFERENCE_SPEED
        if cfg.agent_weight is not None:
            w = cfg.agent_weight
            cpu *= min(1.0, s.ncpus * w / (w + len(node.jobs) + node.foreign))
        return cfg.freeze_cost_s / cpu + job.rss / cfg.bandwidth_bytes_per_s

    def _start_move(self, node: _Node, d: MigrationDecision) -> bool:
        """Offer the decision's job to its target; if it accepts, freeze the job and start the
        move. False if there is nothing to wait for (job gone, offer lost or refused)."""
        now = self.now
        job = next((j for j in node.jobs if j.jid == d.home_pid), None)
        if job is None:
            return False  # it ended since the round decided
        target = self.nodes[d.target - 1]
        self.offers += 1
        if not self.members.reachable(node.idx, target.idx) or not target.alive:
            self.lost_offers += 1
            node.refusals.record(job.jid, d.target, "cannot reach", now)
            return False
        fresh = self._view(target)
        # The agent's check counts the moves it is taking already (Balancer.accept).
        if not accept_offer(fresh, NodeId(job.home + 1), d.target_load, on_way=target.incoming):
            # The refusal carries only its reason (engine: Frame.FAILED), no load.
            node.refusals.record(job.jid, d.target, STALE_OFFER, now)
            self.refusals += 1
            return False
        self._advance(node)
        node.jobs.remove(job)
        took = self.move_time(node, job)
        self._reschedule(node)
        node.moving = (job, target.idx)
        target.incoming += 1
        target.incoming_rss += job.rss
        node.link_free_at = now + took
        self.moves.append(Move(job.jid, node.idx, target.idx, node.decided_at, now, now + took))
        self._push(now + took, self._LAND, job.jid, target.idx)
        self._push(now + took, self._MOVED, node.idx, node.epoch)
        self._in_flight += 1
        self.migrations += 1
        return True

    def _moved(self, node: _Node) -> None:
        """The source's side of a move that ended (the job runs on the target: _LAND came first)."""
        assert node.moving is not None
        job, t = node.moving
        node.moving = None
        # hosted_gone -> job_moved(-1); the engine shifts its entry of the target; the balancer
        # notes the move for the policy.
        node.est = adjust(node.est, -1.0)
        node.refusals.cleared(job.jid)
        old = node.table.get(t)
        if old is not None:
            v = old.view
            moved_view = NodeView(
                v.node_id, v.load + 1.0, v.speed, v.ncpus, v.mem_total, v.mem_free
            )
            node.table[t] = _Entry(moved_view, old.measured_at)
        node.recent.append(RecentMove(NodeId(t + 1), self.now, 1.0, job.rss))
        self._check_guests(node)
        self._next_move(node)

    def _send_home(self, node: _Node, job: _Job) -> None:
        """A leaving node's guest goes home, after the guests before it (one move at a time)."""
        target = self.nodes[job.home]
        target.incoming += 1
        target.incoming_rss += job.rss
        start = max(self.now, node.link_free_at)
        node.link_free_at = start + self.move_time(node, job)
        self.moves.append(Move(job.jid, node.idx, target.idx, None, start, node.link_free_at))
        self._push(node.link_free_at, self._LAND, job.jid, target.idx)
        self._in_flight += 1
        self.migrations += 1

    # --- scenario events ----------------------------------------------------------------------

    def _owner(self, idx: int, delta: int, since: float | None) -> None:
        node = self.nodes[idx]
        self._advance(node)
        node.foreign = max(0, node.foreign + delta)
        self._reschedule(node)
        if since is not None:
            self._owner_since[idx] = since
            self._guests_left[idx] = None
            self._check_guests(node)
        else:
            self._owner_since.pop(idx, None)

    def _check_guests(self, node: _Node) -> None:
        """While an owner's load is on node: when its last guest has left, note how long it took."""
        since = self._owner_since.get(node.idx)
        if since is None or self._guests_left.get(node.idx) is not None:
            return
        moving = node.moving is not None and node.moving[0].home != node.idx
        if not moving and all(j.home == node.idx for j in node.jobs):
            self._guests_left[node.idx] = self.now - since

    def _up(self, node: _Node) -> None:
        if node.alive:
            return
        node.alive = True
        node.up_since = self.now
        node.table = {}
        node.est = LoadEstimate(0.0, self.now)
        node.last_update = self.now
        self.members.join(node.idx, self.now)
        self._start_chains(node)

    def _down(self, node: _Node) -> None:
        """A clean leave: guests go home first (as `mosctl expel` does), then the bye."""
        if not node.alive:
            return
        if any(j.home == node.idx for j in self.jobs if j.done_at is None):
            raise ValueError(f"node {node.idx} is the home of unfinished jobs and cannot leave")
        self._advance(node)
        guests, node.jobs = node.jobs, []
        for job in guests:
            self._send_home(node, job)
        node.plan = []
        node.moving = None
        self._reschedule(node)
        node.alive = False
        node.epoch += 1
        self._node_seconds += self.now - node.up_since
        self.members.bye(node.idx)

    def _sample(self) -> None:
        live = [n for n in self.nodes if n.alive]
        if not live:
            self._push(self.now + self.cfg.sample_s, self._SAMPLE)
            return
        per_cpu = [
            (len(n.jobs) + n.foreign) / n.spec.ncpus * REFERENCE_SPEED / n.spec.speed for n in live
        ]
        spread = max(per_cpu) - min(per_cpu)
        busy = sum(1 for n in live if n.jobs) / len(live)
        self.series.append(Sample(self.now, spread, busy, len(live), self._in_flight))
        self.max_imbalance = max(self.max_imbalance, spread)
        if self.now >= self.settle_s and self._first_done is None:
            self.settled_imbalance = max(self.settled_imbalance, spread)
        if self.all_busy_s is None and busy == 1.0:
            self.all_busy_s = self.now
        if (
            self.time_to_balance_s is None
            and self.now >= self.balance_from_s
            and spread <= 1.0 + _DONE_EPS
            and self._in_flight == 0
        ):
            self.time_to_balance_s = self.now - self.balance_from_s
        # Map sizes change slowly; an O(N) recount every few seconds is plenty.
        if self.now - self._recounted >= 5.0:
            self._recounted = self.now
            self.members.recount(self.now)
        self._push(self.now + self.cfg.sample_s, self._SAMPLE)
