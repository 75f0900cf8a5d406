"""The agent's load component: samples this node, gossips signed load reports, answers `loads`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pymosix.control_server import ControlConnection
from pymosix.errors import DecodeError
from pymosix.load.gossip import LoadEntry, LoadTable, choose_peers
from pymosix.load.metric import LoadEstimate, adjust, cpu_utilisation, normalise, smooth
from pymosix.load.sampler import RawSample, Sampler
from pymosix.membership import MapChanged
from pymosix.wire.envelope import Envelope, Kind

if TYPE_CHECKING:
    from pymosix.agent import NodeAgent

log = logging.getLogger(__name__)

#: Samples per load interval: a CPU-bound task is always R, but short ones flicker.
SAMPLES_PER_INTERVAL = 4
#: Half-life of the recent load, the last half second or so (see load_now).
RECENT_HALF_LIFE_S = 0.25


class LoadComponent:
    """Keeps this node's load vector fresh and spreads it to a few random peers each interval."""

    def __init__(self, agent: NodeAgent, rng: random.Random | None = None) -> None:
        self.agent = agent
        self.config = agent.config
        self.rng = rng or random.Random()
        self.sampler = Sampler()
        self.table = LoadTable(agent.node_id, self.config.load_max_age_ms / 1000)
        self.estimate: LoadEstimate | None = None
        self.recent: LoadEstimate | None = None
        self._last: RawSample | None = None
        self.util = 0.0
        #: (local jobs, guest jobs) on this node; the migration engine replaces this.
        self.job_counts: Callable[[], tuple[int, int]] = lambda: (0, 0)
        self._tasks: list[asyncio.Task[None]] = []
        agent.on_datagram(Kind.LOAD, self._received)
        agent.control.register("loads", self._op_loads)
        agent.map_listeners.append(self._map_changed)

    async def start(self) -> None:
        self._take_sample()
        self._tasks = [
            asyncio.create_task(self._sample_loop()),
            asyncio.create_task(self._send_loop()),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    # --- this node ---------------------------------------------------------------------------

    @property
    def ncpus(self) -> int:
        return len(self.sampler.cpus)

    def own_load(self) -> float:
        runnable = self.estimate.runnable if self.estimate else 0.0
        return normalise(runnable, self.ncpus, self.agent.flags.speed)

    def load_now(self) -> float:
        """This node's load for its own balancer: the smoothed load, or less if the last half
        second says less. A burst that is over (four mosruns starting on a slow node: 6.8
        runnable tasks for 4 jobs) stops counting at once, not over seconds of decay, and the
        balancer does not move away the jobs it would have run (the gossiped load stays the
        smoothed one)."""
        if self.estimate is None or self.recent is None:
            return self.own_load()
        runnable = min(self.estimate.runnable, self.recent.runnable)
        return normalise(runnable, self.ncpus, self.agent.flags.speed)

    def job_moved(self, delta_jobs: float) -> None:
        """A job arrived (+1) or left (-1): shift our load now rather than wait for the decay."""
        if self.estimate is not None:
            self.estimate = adjust(self.estimate, delta_jobs)
            if self.recent is not None:
                self.recent = adjust(self.recent, delta_jobs)
            self._publish_own()

    def _take_sample(self) -> None:
        raw = self.sampler.sample()
        now = self.agent.now()
        self.estimate = smooth(self.estimate, raw.runnable, now)
        self.recent = smooth(self.recent, raw.runnable, now, RECENT_HALF_LIFE_S)
        if self._last is not None:
            self.util = cpu_utilisation(self._last.cpu, raw.cpu)
        self._last = raw
        self._publish_own()

    def _publish_own(self) -> None:
        raw = self._last
        if raw is None:
            return
        local, guest = self.job_counts()
        f = self.agent.flags
        self.table.set_own(
            LoadEntry(
                self.agent.node_id,
                self.own_load(),
                self.util,
                f.speed,
                raw.ncpus,
                raw.mem_total,
                raw.mem_free,
                local,
                guest,
                f.stay,
                f.lstay,
                f.block,
                self.agent.now(),
            )
        )

    async def _sample_loop(self) -> None:
        period = self.config.load_interval_ms / 1000 / SAMPLES_PER_INTERVAL
        while True:
            await asyncio.sleep(period)
            try:
                self._take_sample()
            except (OSError, ValueError) as e:
                log.warning("load sample failed: %s", e)

    async def _send_loop(self) -> None:
        period = self.config.load_interval_ms / 1000
        while True:
            await asyncio.sleep(period * self.rng.uniform(0.9, 1.1))
            self.table.expire(self.agent.now())
            if self.agent.flags.quiet:
                continue
            peers: dict[int, Any] = {p.node_id: p for p in self.agent.cluster.peers()}
            report = {"e": self.table.report(self.agent.now(), self.rng)}
            for node_id in choose_peers(sorted(peers), self.config.gossip_fanout, self.rng):
                p = peers[node_id]
                self.agent.send_datagram(Kind.LOAD, report, p.address, p.gossip_port or None)

    # --- others ------------------------------------------------------------------------------

    def _received(self, env: Envelope, source: str) -> None:
        entries = env.payload.get("e")
        if not isinstance(entries, list) or not entries or len(entries) > 32:
            raise DecodeError("load report without entries")
        now = self.agent.now()
        known: set[int] = {n.node_id for n in self.agent.cluster.nodes()}
        parsed = [LoadEntry.from_wire(e, now) for e in entries]
        if parsed[0].node_id != env.sender:
            raise DecodeError("load report does not start with the sender's own entry")
        for entry in parsed:
            self.table.update(entry, known)

    def _map_changed(self, change: MapChanged) -> None:
        for node_id in change.left:
            self.table.forget(node_id)

    def rows(self) -> list[dict[str, Any]]:
        """Every node of the map with what is known of its load."""
        now = self.agent.now()
        self._publish_own()
        out = []
        for n in self.agent.cluster.nodes():
            e = self.table.entries.get(n.node_id)
            row: dict[str, Any] = {
                "node_id": n.node_id,
                "address": n.address,
                "self": n.node_id == self.agent.node_id,
            }
            if e is None:
                row.update(up=False, age_ms=None)
            else:
                row.update(e.to_row(now))
                row["up"] = now - e.measured_at <= self.table.max_age_s
            out.append(row)
        return out

    async def _op_loads(self, req: dict[str, Any], conn: ControlConnection) -> dict[str, Any]:
        return {"node_id": self.agent.node_id, "nodes": self.rows()}
