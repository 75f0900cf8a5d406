"""The Prometheus endpoint of real bed agents, read with prometheus_client's own parser: each
agent exports itself, down nodes stay at 0, and a real move is counted on both sides."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pymosix.testbed import TestBed
from tests.kernel.conftest import wait_until

pytestmark = pytest.mark.kernel

MakeBed = Callable[..., TestBed]
PORT = 9100
LOOP = ["perl", "-e", "$i=1; while($i) { $i++; }"]
FETCH = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(bed: TestBed, node: int) -> tuple[dict[str, str], Samples]:
    """(family name -> type, (sample name, labels) -> value) of one agent's /metrics."""
    url = f"http://{bed.node(node).address}:{PORT}/metrics"
    r = bed.exec(node, [sys.executable, "-c", FETCH, url], timeout_s=20)
    assert r.returncode == 0, r.stderr
    types: dict[str, str] = {}
    samples: Samples = {}
    for fam in text_string_to_metric_families(r.stdout):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[s.name, frozenset(s.labels.items())] = s.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= ls]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


def count(samples: Samples, name: str) -> int:
    return sum(1 for n, _ in samples if n == name)


def test_scrape_families_units_and_a_counted_move(
    make_bed: MakeBed, procs: list[subprocess.Popen[bytes]]
) -> None:
    bed = make_bed(2, extra_args=["--set", f"metrics_port={PORT}", "--set", "balance=false"])
    for node in (1, 2):
        wait_until(
            f"node{node} to have its peer's load",
            lambda: count(scrape(bed, node)[1], "pymosix_peer_load") == 1,  # noqa: B023
            15.0,
            poll_s=0.3,
        )
    types, s1 = scrape(bed, 1)
    for name, kind in {
        "pymosix_build_info": "gauge",
        "pymosix_node_up": "gauge",
        "pymosix_load": "gauge",
        "pymosix_cpu_utilisation_ratio": "gauge",
        "pymosix_memory_total_bytes": "gauge",
        "pymosix_memory_free_bytes": "gauge",
        "pymosix_jobs": "gauge",
        "pymosix_peer_load": "gauge",
        "pymosix_migrations": "counter",
        "pymosix_balancer_decisions": "counter",
        "pymosix_datagrams": "counter",
        "pymosix_migration_freeze_seconds": "histogram",
        "pymosix_migration_image_bytes": "histogram",
    }.items():
        assert types.get(name) == kind, (name, types.get(name))
    info = next(dict(ls) for (n, ls) in s1 if n == "pymosix_build_info")
    assert info["version"] == "0.1.0"
    assert info["criu_version"][0].isdigit(), info
    # Each agent exports itself: one load row, its own; the other node only as its peer.
    _, s2 = scrape(bed, 2)
    assert count(s1, "pymosix_load") == count(s2, "pymosix_load") == 1
    assert value(s1, "pymosix_load", node="0x640b") >= 0
    assert value(s2, "pymosix_load", node="0x640c") >= 0
    assert count(s1, "pymosix_peer_load") == 1
    assert value(s1, "pymosix_peer_load", peer="0x640c") >= 0
    assert value(s1, "pymosix_node_up", node="0x640c") == 1
    assert 0 <= value(s1, "pymosix_cpu_utilisation_ratio") <= 1
    assert (
        value(s1, "pymosix_migrations_total", direction="out", result="ok", reason="request") == 0
    )

    procs.append(bed.popen(1, ["mosrun", *LOOP], stdout=subprocess.DEVNULL))
    wait_until("the job to start", lambda: len(bed.call(1, "jobs")["jobs"]) == 1, 15.0)
    pid = bed.call(1, "jobs")["jobs"][0]["home_pid"]
    # Refused first (node2 blocks guests), then done: both counted, each once, by result.
    assert bed.exec(2, ["mosctl", "block"]).returncode == 0
    r = bed.exec(1, ["migrate", str(pid), "0x640c"])
    assert r.returncode != 0
    assert "blocks guests" in r.stderr
    assert bed.exec(2, ["mosctl", "noblock"]).returncode == 0
    r = bed.exec(1, ["migrate", str(pid), "0x640c"])
    assert r.returncode == 0, r.stderr
    _, s1 = scrape(bed, 1)
    _, s2 = scrape(bed, 2)
    out = {"direction": "out", "reason": "request"}
    assert value(s1, "pymosix_migrations_total", result="refused", **out) == 1
    assert value(s1, "pymosix_migrations_total", result="ok", **out) == 1
    assert (
        value(s2, "pymosix_migrations_total", direction="in", result="refused", reason="request")
        == 1
    )
    assert value(s2, "pymosix_migrations_total", direction="in", result="ok", reason="request") == 1
    assert value(s1, "pymosix_migration_freeze_seconds_count") == 1
    assert 0 < value(s1, "pymosix_migration_freeze_seconds_sum") < 10
    assert value(s1, "pymosix_migration_freeze_seconds_bucket", le="+Inf") == 1
    assert value(s1, "pymosix_migration_image_bytes_count") == 1
    assert value(s1, "pymosix_migration_image_bytes_sum") > 100_000  # a perl process's image
    assert value(s1, "pymosix_balancer_decisions_total", result="ok") == 0
    # Jobs by kind: home here and away on node1, a guest on node2; local + guest counts it once.
    assert value(s1, "pymosix_jobs", kind="away", state="running") == 1
    assert value(s1, "pymosix_jobs", kind="local", state="running") == 0
    assert value(s2, "pymosix_jobs", kind="guest", state="running") == 1

    # The shipped Grafana dashboard asks only for series an agent exports.
    dashboard = json.loads((Path(__file__).parents[2] / "docs/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    wanted = {m for e in exprs for m in re.findall(r"pymosix_[a-z_]+", e)}
    assert wanted
    assert wanted <= {n for n, _ in s1} | {n for n, _ in s2}

    # A node that goes is kept at 0, not dropped.
    bed.stop_agent(2)
    wait_until(
        "node2 to read 0 in node1's pymosix_node_up",
        lambda: value(scrape(bed, 1)[1], "pymosix_node_up", node="0x640c") == 0,
        20.0,
        poll_s=0.5,
    )
