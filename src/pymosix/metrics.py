"""A Prometheus text endpoint on the agent (off unless `metrics_port` is set), read at scrape time.

Each agent exports itself: its own figures (`pymosix_load`, `pymosix_memory_free_bytes`, its jobs,
its moves) carry no other node's rows, so a sum over every agent's scrape counts each node once.
What it believes of the others goes under other names, labelled `peer`
(`pymosix_peer_load`, `pymosix_peer_info_age_seconds`) or `node` (`pymosix_node_up`, kept at 0
for a node that was seen and is gone). Base units in the names; see docs/web.md for the list.

Served by aiohttp inside the agent's event loop, so a scrape reads the agent's state between
two of its steps, never in the middle of one.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from pymosix import __version__
from pymosix.config import find_criu
from pymosix.errors import ConfigError
from pymosix.ids import format_node_id
from pymosix.membership import MapChanged
from pymosix.migration.moves import REASONS, RESULTS, MoveRecord

if TYPE_CHECKING:
    from pymosix.agent import NodeAgent
    from pymosix.load.component import LoadComponent
    from pymosix.migration.engine import MigrationEngine

#: Freeze times: a small job is frozen about 0.1 s, a GiB one a few seconds.
FREEZE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Image sizes, 64 KiB to 16 GiB in steps of 4.
IMAGE_BUCKETS = tuple(float(64 * 1024 * 4**i) for i in range(10))
_DATAGRAM_OUTCOMES = (
    "sent",
    "received",
    "rejected_malformed",
    "rejected_auth",
    "rejected_replay",
    "rejected_stale",
    "rejected_clock",
    "rejected_unknown",
)


@functools.cache
def criu_version(criu: str | None) -> str:
    """criu's version ("4.1.1"), or "none" when there is none, "unknown" when it will not say."""
    if not criu:
        return "none"
    try:
        out = subprocess.run([criu, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("Version")), "")
    return line.partition(":")[2].strip() or "unknown"


class MoveMetrics:
    """Counters and histograms of the engine's moves, fed by its move hook."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.migrations = Counter(
            "pymosix_migrations",
            "Job moves in and out of this node, by direction, result and reason",
            ["direction", "result", "reason"],
            registry=registry,
        )
        self.balancer = Counter(
            "pymosix_balancer_decisions",
            "Moves this node's balancer decided, by how they ended",
            ["result"],
            registry=registry,
        )
        self.freeze = Histogram(
            "pymosix_migration_freeze_seconds",
            "How long a job that moved out of this node was frozen",
            registry=registry,
            buckets=FREEZE_BUCKETS,
        )
        self.image = Histogram(
            "pymosix_migration_image_bytes",
            "Image size of a job that moved out of this node",
            registry=registry,
            buckets=IMAGE_BUCKETS,
        )
        # Every series exists from the start (at 0): rate() needs the zero before the first move.
        for direction in ("out", "in"):
            for result in RESULTS:
                for reason in REASONS:
                    self.migrations.labels(direction, result, reason)
        for result in RESULTS:
            self.balancer.labels(result)

    def moved(self, r: MoveRecord) -> None:
        self.migrations.labels(r.direction, r.result, r.reason).inc()
        if r.direction != "out":
            return
        if r.reason == "balance":
            self.balancer.labels(r.result).inc()
        if r.result == "ok":
            if r.freeze_s is not None:
                self.freeze.observe(r.freeze_s)
            if r.image_bytes:
                self.image.observe(r.image_bytes)


class _Collector(Collector):
    """Everything read from the agent's state at scrape time."""

    def __init__(self, agent: NodeAgent, load: LoadComponent, engine: MigrationEngine | None):
        self.agent = agent
        self.load = load
        self.engine = engine
        #: Every node ever in the map, so one that is gone still reads pymosix_node_up 0.
        self.seen: dict[int, str] = {agent.node_id: agent.address}
        agent.map_listeners.append(self._map_changed)
        self.criu = criu_version(find_criu(agent.config.criu))

    def _map_changed(self, change: MapChanged) -> None:
        for n in change.nodes:
            self.seen[n.node_id] = n.address

    def collect(self) -> Iterator[Any]:
        me = self.agent.node_id
        node = format_node_id(me)
        rows = {r["node_id"]: r for r in self.load.rows()}
        for n, r in rows.items():
            self.seen[n] = r["address"]
        info = InfoMetricFamily("pymosix_build", "pymosix and CRIU versions", labels=["node"])
        info.add_metric([node], {"version": __version__, "criu_version": self.criu})
        yield info
        own = rows.get(me, {})
        for name, key, doc in (
            ("load", "load", "Normalised load (reference CPUs of runnable work per CPU)"),
            ("cpu_utilisation_ratio", "util", "CPU utilisation, 0 to 1"),
            ("speed", "speed", "Relative speed (10000 = the reference machine)"),
            ("cpus", "ncpus", "CPUs"),
            ("memory_total_bytes", "mem_total", "Total memory"),
            ("memory_free_bytes", "mem_free", "Free memory"),
        ):
            g = GaugeMetricFamily(f"pymosix_{name}", doc, labels=["node"])
            if key in own:
                g.add_metric([node], float(own[key]))
            yield g
        flags = GaugeMetricFamily(
            "pymosix_flag", "mosctl switches of this node (1 on)", labels=["node", "flag"]
        )
        for flag in ("stay", "lstay", "block", "quiet"):
            flags.add_metric([node, flag], float(getattr(self.agent.flags, flag)))
        yield flags
        yield self._jobs(node)
        up = GaugeMetricFamily(
            "pymosix_node_up",
            "This agent's view: 1 if the node is in its map with fresh load, 0 if seen and gone",
            labels=["node", "address"],
        )
        for n, address in sorted(self.seen.items()):
            up.add_metric([format_node_id(n), address], float(bool(rows.get(n, {}).get("up"))))
        yield up
        peer_load = GaugeMetricFamily(
            "pymosix_peer_load", "This agent's view of a peer's load", labels=["node", "peer"]
        )
        peer_age = GaugeMetricFamily(
            "pymosix_peer_info_age_seconds",
            "Age of this agent's load information about a peer",
            labels=["node", "peer"],
        )
        for n, r in sorted(rows.items()):
            if n != me and r.get("up"):
                peer_load.add_metric([node, format_node_id(n)], float(r["load"]))
                peer_age.add_metric([node, format_node_id(n)], float(r["age_ms"]) / 1000)
        yield peer_load
        yield peer_age
        m = GaugeMetricFamily("pymosix_map_nodes", "Nodes in this agent's map", labels=["node"])
        m.add_metric([node], float(len(self.agent.cluster)))
        yield m
        c = CounterMetricFamily(
            "pymosix_datagrams", "Datagrams of this agent by outcome", labels=["outcome"]
        )
        counters = self.agent.counters
        for outcome in _DATAGRAM_OUTCOMES:
            c.add_metric([outcome], float(getattr(counters, outcome)))
        yield c
        b = CounterMetricFamily(
            "pymosix_datagram_bytes", "Datagram bytes of this agent", labels=["direction"]
        )
        b.add_metric(["sent"], float(counters.bytes_sent))
        b.add_metric(["received"], float(counters.bytes_received))
        yield b

    def _jobs(self, node: str) -> GaugeMetricFamily:
        """Jobs by where they are from this node's view and by state: `local` (home and running
        here), `guest` (running here, home elsewhere), `away` (home here, running elsewhere).
        Summing local and guest over all agents counts each running job once."""
        g = GaugeMetricFamily(
            "pymosix_jobs", "Jobs of this node by kind and state", labels=["node", "kind", "state"]
        )
        counts: dict[tuple[str, str], int] = {(k, "running"): 0 for k in ("local", "guest", "away")}
        if self.engine is not None:
            me = self.agent.node_id
            for h in self.engine.hosted.values():
                kind = "local" if h.meta.home_node == me else "guest"
                counts[kind, h.state] = counts.get((kind, h.state), 0) + 1
            for j in self.engine.home_jobs.values():
                if j.node != me:
                    counts["away", j.state] = counts.get(("away", j.state), 0) + 1
        for (kind, state), n in sorted(counts.items()):
            g.add_metric([node, kind, state], float(n))
        return g


class MetricsEndpoint:
    """Serves /metrics on `metrics_port` of this node's address, from the agent's event loop."""

    def __init__(
        self, agent: NodeAgent, load: LoadComponent, engine: MigrationEngine | None = None
    ) -> None:
        self.agent = agent
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(agent, load, engine))
        self.moves = MoveMetrics(self.registry)
        if engine is not None:
            engine.move_listeners.append(self.moves.moved)
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = self.agent.config.metrics_port
        try:
            await web.TCPSite(self._runner, self.agent.address, port).start()
        except OSError as e:
            await self._runner.cleanup()
            raise ConfigError(
                f"metrics: cannot listen on {self.agent.address}:{port} ({e.strerror}); "
                "change metrics_port"
            ) from None

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
