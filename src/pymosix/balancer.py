"""The balancer: each interval, a snapshot of this node's jobs and its load vector goes through
the pure policy (pymosix.policy.decide), and the engine carries out what it decides."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from pymosix.errors import CriuError, MigrationError
from pymosix.ids import NodeId
from pymosix.load.gossip import LoadEntry
from pymosix.load.quota import cpu_capacity
from pymosix.migration.hosted import HostedJob
from pymosix.migration.lifecycle import JobMeta
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
from pymosix.refusals import STALE_OFFER, Refusals

if TYPE_CHECKING:
    from pymosix.agent import NodeAgent
    from pymosix.load.component import LoadComponent
    from pymosix.migration.engine import MigrationEngine

log = logging.getLogger(__name__)

#: How long a move this node made is counted on its target (until the target's load shows it).
RECENT_MOVE_S = 3.0
#: How often the node's CPU quota is read again (it can be changed while the agent runs).
CAPACITY_EVERY_S = 10.0


def node_view(e: LoadEntry, now: float) -> NodeView:
    return NodeView(
        NodeId(e.node_id),
        e.load,
        e.speed,
        e.ncpus,
        e.mem_total,
        e.mem_free,
        e.local_jobs,
        e.guest_jobs,
        e.stay,
        e.lstay,
        e.block,
        max(0.0, now - e.measured_at),
    )


def job_view(
    job: HostedJob,
    self_id: int,
    now: float,
    refusals: Refusals | None = None,
    capacity: float = 1.0,
) -> JobView:
    """The policy's view of a job; `capacity` is the share of its CPUs a quota leaves the node
    (load.quota), against which the job's share of a CPU is counted."""
    meta = job.meta
    return JobView(
        home_pid=meta.home_pid,
        node=NodeId(self_id),
        home=NodeId(meta.home_node),
        age_s=max(0.0, time.time() - meta.started_at),
        cpu_fraction=min(1.0, job.cpu_percent / 100.0 / capacity),
        rss_bytes=job.anon,
        locked=meta.locked,
        allowed_nodes=frozenset(NodeId(n) for n in meta.allowed_nodes)
        if meta.allowed_nodes
        else None,
        last_migrated_at=job.arrived_at if meta.migrations > 0 else None,
        migrations=meta.migrations,
        refused_targets=frozenset(NodeId(n) for n in refusals.refused_targets(meta.home_pid, now))
        if refusals
        else frozenset(),
        stuck=refusals.stuck(meta.home_pid, now) if refusals else False,
    )


class Balancer:
    """openMosix's automatic load balancing on this node."""

    def __init__(self, agent: NodeAgent, load: LoadComponent, engine: MigrationEngine) -> None:
        self.agent = agent
        self.load = load
        self.engine = engine
        self.policy = PolicyConfig(max_info_age_s=agent.config.load_max_age_ms / 1000)
        self.recent: list[RecentMove] = []
        self.moves = 0
        self._capacity, self._capacity_at = 1.0, float("-inf")
        self._task: asyncio.Task[None] | None = None
        #: Set when a job here gets its first CPU figure: a round then, not up to a period later.
        self._wake = asyncio.Event()
        engine.measure_listeners.append(self._wake.set)
        agent.balancer = self  # type: ignore[attr-defined]
        engine.accept = self.accept

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def snapshot(self) -> ClusterSnapshot:
        now = self.agent.now()
        self.load._publish_own()
        entries = self.load.table.entries
        me_id = self.agent.node_id
        # Its own load as of now (a burst that is over does not count), not as gossiped.
        me = dataclasses.replace(node_view(entries[me_id], now), load=self.load.load_now())
        peers = {NodeId(n): node_view(e, now) for n, e in entries.items() if n != me_id}
        if now >= self._capacity_at + CAPACITY_EVERY_S:
            self._capacity = cpu_capacity(entries[me_id].ncpus)
            self._capacity_at = now
        jobs = tuple(
            job_view(j, me_id, now, self.engine.refusals, self._capacity)
            for j in self.engine.hosted.values()
            if j.state == "running"
        )
        self.recent = [m for m in self.recent if now - m.at < RECENT_MOVE_S]
        return ClusterSnapshot(NodeId(me_id), now, jobs, peers, me, self.policy, tuple(self.recent))

    async def _loop(self) -> None:
        # Twice per load interval, and as soon as a new job has its first CPU figure (at about
        # its minimum age); the policy's cool-downs and recent moves keep the extra rounds from
        # moving anything twice.
        # Sooner when a job here comes of age before that (policy.ripe_in).
        period = self.agent.config.load_interval_ms / 2000
        wait = period
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()
            wait = period
            if not self.agent.config.balance:
                continue
            try:
                ripe = await self.round()
            except Exception:
                log.exception("balancing round failed")
                continue
            if ripe is not None:
                wait = min(period, max(0.01, ripe))

    async def round(self) -> float | None:
        """Decide and carry out the moves; seconds until a job here comes of age (or None)."""
        snap = self.snapshot()
        ripe = ripe_in(snap)
        if ripe is not None:
            ripe += snap.now  # the moves below take time: made relative again at the end
        for d in decide(snap):
            job = next(
                (
                    j
                    for j in self.engine.hosted.values()
                    if j.meta.home_pid == d.home_pid and j.state == "running"
                ),
                None,
            )
            if job is None:
                continue
            log.info("balancer: moving job %d to node %d (%s)", d.home_pid, d.target, d.reason)
            try:
                await self.engine.migrate_hosted(job, d.target, offer_load=d.target_load)
            except (MigrationError, CriuError, OSError) as e:
                log.info("balancer: job %d stays: %s", d.home_pid, e)
                continue
            self.moves += 1
            self.recent.append(RecentMove(d.target, self.agent.now(), 1.0, job.anon))
        return None if ripe is None else ripe - self.agent.now()

    def best_node_for(self, meta: JobMeta, current: int | None = None) -> int | None:
        """For `migrate PID balance` and `mosrun -b`: the best node now, None for where it is."""
        snap = self.snapshot()
        here = NodeId(current if current is not None else self.agent.node_id)
        job = JobView(
            meta.home_pid,
            here,
            NodeId(meta.home_node),
            0.0,
            1.0,
            0,
            meta.locked,
            frozenset(NodeId(n) for n in meta.allowed_nodes) if meta.allowed_nodes else None,
        )
        if here != self.agent.node_id:
            # The job runs elsewhere: judge from that node's point of view as we know it.
            peers = dict(snap.peers)
            me_entry = peers.pop(here, None)
            if me_entry is None:
                return None
            peers[snap.self_id] = snap.me
            snap = ClusterSnapshot(here, snap.now, (), peers, me_entry, snap.config)
            return best_node(snap, job, placing=False)
        return best_node(snap, job, placing=current is None)

    def accept(self, job_home: int, believed_load: float | None) -> str | None:
        """The target's check of an automatic offer; a reason to refuse, or None to accept."""
        snap = self.snapshot()
        if snap.me.block and job_home != self.agent.node_id:
            return f"node {self.agent.node_id} blocks guests (mosctl noblock)"
        # Jobs this node is taking now count (several nodes may have seen it idle at once).
        on_way = max(0, self.engine.incoming - 1)
        if believed_load is not None and not accept_offer(
            snap.me, NodeId(job_home), believed_load, on_way=on_way
        ):
            return STALE_OFFER
        return None
