"""The test bed itself: nodes are real namespaces with their own CPUs, and down leaves nothing."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import pytest

from pymosix import cgroups
from pymosix.testbed import TestBed, down
from pymosix.testbed.bed import ROOT
from pymosix.testbed.kernel import cgroup_tree, links, netns_list
from tests.kernel.conftest import wait_until

pytestmark = pytest.mark.kernel


def leftovers(bed: TestBed) -> list[str]:
    out = [ns for ns in netns_list() if ns.startswith(f"pmx-{bed.name}-")]
    out += [ln for ln in links() if ln in {bed.bridge, *(n.veth for n in bed.nodes)}]
    out += [str(p) for t in cgroups.hierarchies() for p in t.find(f"pmx-{bed.name}-")]
    if (ROOT / bed.name).exists():
        out.append(str(ROOT / bed.name))
    return out


def test_nodes_are_namespaces_with_their_own_cpus_and_reach_each_other() -> None:
    bed = TestBed.up(nodes=2, name=f"t{secrets.token_hex(3)}", agents=[])
    try:
        r = bed.exec(
            1,
            [
                "sh",
                "-c",
                "cat /proc/self/cgroup; ip -o -4 addr show eth0; readlink /proc/self/ns/net",
            ],
        )
        assert r.returncode == 0, r.stderr
        tree = cgroup_tree()
        assert f":/{bed.node(1).cpuset}\n" in r.stdout
        assert "192.168.100.11/24" in r.stdout
        assert r.stdout.split()[-1] != Path("/proc/self/ns/net").readlink().name
        cpus = [tree.cpus(tree.path(n.cpuset)) for n in bed.nodes]
        if len({c for cs in cpus for c in cs}) >= 2:
            assert cpus[0] != cpus[1], "with two host CPUs each node gets its own"
        ping = (
            bed.exec(1, ["ping", "-c", "1", "-W", "2", "192.168.100.12"])
            if shutil.which("ping")
            else None
        )
        if ping is not None:
            assert ping.returncode == 0, ping.stdout
        assert bed.exec(2, ["sh", "-c", "exit 7"]).returncode == 7
    finally:
        bed.down()
    assert leftovers(bed) == []


def test_down_cleans_up_after_a_crash_half_way() -> None:
    name = f"t{secrets.token_hex(3)}"
    bed = TestBed.up(nodes=2, name=name, agents=[1])
    # A crashed `up`: the state file is gone but namespaces, links, cgroups and an agent remain.
    (ROOT / name / "bed.json").unlink()
    assert leftovers(bed)
    down(name)
    assert leftovers(bed) == []


def test_up_on_top_of_leftovers_starts_clean() -> None:
    name = f"t{secrets.token_hex(3)}"
    TestBed.up(nodes=2, name=name)
    bed = TestBed.up(nodes=3, name=name)
    try:
        wait_until("three nodes", lambda: len(bed.call(1, "map")["nodes"]) == 3, 3.0)
    finally:
        bed.down()
    assert leftovers(bed) == []


def test_static_map_without_discovery() -> None:
    name = f"t{secrets.token_hex(3)}"
    # Not in /tmp: each node has its own.
    ROOT.mkdir(parents=True, exist_ok=True)
    mapfile = ROOT / f"{name}.map"
    mapfile.write_text("# two nodes, no multicast\n1 192.168.100.11 2\n")
    bed = TestBed.up(nodes=2, name=name, extra_args=["--map-file", str(mapfile)])
    try:
        for i in (1, 2):
            reply = bed.call(i, "map")
            assert reply["nodes"][0]["node_id"] == bed.node(i).node_id
            assert {n["node_id"] for n in reply["nodes"]} == {0x640B, 0x640C}
            assert bed.call(i, "status")["discovery"] is False
    finally:
        bed.down()
        mapfile.unlink(missing_ok=True)
