"""Load information on a real bed: cpuset-confined sampling, gossip, ageing, mosctl, mosmon, metrics."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pymosix.testbed import TestBed
from tests.kernel.conftest import wait_until

pytestmark = pytest.mark.kernel

MakeBed = Callable[..., TestBed]


def load_seen(bed: TestBed, viewer: int, node: int) -> float:
    rows = bed.call(viewer, "loads")["nodes"]
    row = next(r for r in rows if r["node_id"] == bed.node(node).node_id)
    assert row["up"], row
    return float(row["load"])


def test_three_loops_read_three_here_and_zero_there_from_both_nodes(make_bed: MakeBed) -> None:
    bed = make_bed(2)
    loops = [
        bed.popen(1, ["perl", "-e", "while(1){}"], stdout=subprocess.DEVNULL) for _ in range(3)
    ]
    try:
        for viewer in (1, 2):
            wait_until(
                f"node{viewer} sees node1 at about 3 and node2 at about 0",
                lambda v=viewer: abs(load_seen(bed, v, 1) - 3) < 0.4 and load_seen(bed, v, 2) < 0.4,  # type: ignore[misc]
                10.0,
            )
        assert bed.exec(2, ["mosctl", "isup", "0x640b"]).stdout == "yes\n"
        got = float(bed.exec(2, ["mosctl", "getload", "192.168.100.11"]).stdout)
        assert 2.5 < got < 3.5
        once = bed.exec(2, ["mosmon", "--once", "-V"]).stdout
        assert "25611" in once
        data = json.loads(bed.exec(1, ["mosmon", "--json"]).stdout)
        assert {r["node_id"] for r in data["nodes"]} == {0x640B, 0x640C}
    finally:
        for p in loops:
            p.kill()
            p.wait()


def test_entry_of_a_dead_node_ages_out(make_bed: MakeBed) -> None:
    bed = make_bed(3)
    wait_until("node1 hears node3's load", lambda: load_seen(bed, 1, 3) >= 0, 5.0)
    bed.kill_agent(3)
    wait_until(
        "node3 gone from node1's load vector",
        lambda: bed.node(3).node_id not in {r["node_id"] for r in bed.call(1, "loads")["nodes"]},
        6.0,
    )
    assert bed.exec(1, ["mosctl", "getload", "0x640d"]).returncode != 0


def test_quiet_stops_sending_and_noquiet_resumes(make_bed: MakeBed) -> None:
    bed = make_bed(2)
    wait_until("node2 hears node1", lambda: load_seen(bed, 2, 1) >= 0, 5.0)
    assert bed.exec(1, ["mosctl", "quiet"]).returncode == 0
    wait_until(
        "node1's load entry goes stale on node2",
        lambda: not next(r for r in bed.call(2, "loads")["nodes"] if r["node_id"] == 0x640B)["up"],
        8.0,
    )
    assert bed.exec(1, ["mosctl", "noquiet"]).returncode == 0
    wait_until("node2 hears node1 again", lambda: load_seen(bed, 2, 1) >= 0, 5.0)
    assert bed.exec(1, ["mosctl", "setspeed", "15000"]).returncode == 0
    wait_until(
        "node2 sees the new speed",
        lambda: bed.exec(2, ["mosctl", "getspeed", "0x640b"]).stdout == "15000\n",
        5.0,
    )


FETCH = "import urllib.request; print(urllib.request.urlopen('http://192.168.100.11:9177/metrics', timeout=5).read().decode())"


def test_prometheus_endpoint(make_bed: MakeBed) -> None:
    bed = make_bed(2, extra_args=["--set", "metrics_port=9177"])
    wait_until("node1 hears node2", lambda: load_seen(bed, 1, 2) >= 0, 5.0)
    text = bed.exec(2, ["python3", "-c", FETCH]).stdout
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    names = {name for name, _ in samples}
    # Each agent exports itself, and its view of the others under their own names.
    assert {"pymosix_load", "pymosix_peer_load", "pymosix_node_up"} <= names, names
    maps = {lb: v for (n, lb), v in samples.items() if n == "pymosix_map_nodes"}
    assert maps == {(("node", "0x640b"),): 2.0}, maps
    assert ("pymosix_peer_load", (("node", "0x640b"), ("peer", "0x640c"))) in samples
    assert any(
        n == "pymosix_datagrams_total" and ("outcome", "rejected_auth") in lb for n, lb in samples
    )
