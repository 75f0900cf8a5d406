"""A Prometheus text endpoint on the agent (off unless `metrics_port` is set): the load vector
and the datagram counters, read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from pymosix.agent import NodeAgent
    from pymosix.load.component import LoadComponent

_GAUGES = (
    ("load", "Normalised load (reference CPUs of runnable work per CPU)"),
    ("util", "CPU utilisation, 0..1"),
    ("speed", "Relative speed (10000 = reference)"),
    ("ncpus", "CPUs"),
    ("mem_total", "Total memory, bytes"),
    ("mem_free", "Free memory, bytes"),
    ("local_jobs", "Managed jobs of this node running here"),
    ("guest_jobs", "Guest jobs running here"),
)


class _Collector(Collector):
    def __init__(self, agent: NodeAgent, load: LoadComponent) -> None:
        self.agent = agent
        self.load = load

    def collect(self) -> Iterator[Any]:
        rows = [r for r in self.load.rows() if r.get("up")]
        for name, doc in _GAUGES:
            g = GaugeMetricFamily(f"pymosix_node_{name}", doc, labels=["node_id", "address"])
            for r in rows:
                g.add_metric([str(r["node_id"]), r["address"]], float(r[name]))
            yield g
        c = CounterMetricFamily("pymosix_datagrams", "Datagrams by outcome", labels=["outcome"])
        counters = self.agent.counters
        for outcome in (
            "sent",
            "received",
            "rejected_malformed",
            "rejected_auth",
            "rejected_replay",
            "rejected_unknown",
        ):
            c.add_metric([outcome], float(getattr(counters, outcome)))
        yield c
        yield GaugeMetricFamily(
            "pymosix_map_nodes", "Nodes in this node's map", value=float(len(self.agent.cluster))
        )


class MetricsEndpoint:
    """Serves /metrics on this node's address and `metrics_port`."""

    def __init__(self, agent: NodeAgent, load: LoadComponent) -> None:
        self.agent = agent
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(agent, load))
        self._server: Any = None

    async def start(self) -> None:
        self._server, _thread = start_http_server(
            self.agent.config.metrics_port, self.agent.address, self.registry
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
