"""Node names on a real bed: a static map's numbers work as node names, a host name that does
not resolve is one line (no traceback), and mosrun to an absent node starts nothing."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pymosix.testbed import TestBed
from pymosix.testbed.bed import ROOT
from tests.kernel.conftest import wait_until

pytestmark = pytest.mark.kernel

MakeBed = Callable[..., TestBed]


def test_mosrun_to_an_absent_node_starts_nothing(make_bed: MakeBed) -> None:
    bed = make_bed(2)
    marker = Path(bed.node(1).dir) / "started"  # not in /tmp, which a node may have its own of
    cmd = ["sh", "-c", f"touch {marker}; sleep 30"]
    r = bed.exec(1, ["mosrun", "-0x9999", *cmd], timeout_s=30)
    assert r.returncode == 1
    assert "0x9999 (#39321) is not in this node's map" in r.stderr
    assert "nothing was started" in r.stderr
    assert not marker.exists()
    assert json.loads(bed.exec(1, ["mps", "--json"]).stdout)["jobs"] == []
    # A node that resolves to no node at all: the same, one line.
    r = bed.exec(1, ["mosrun", "-no-such-host.invalid", *cmd], timeout_s=30)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert not marker.exists()
    # With -F it runs at home, and says so.
    r = bed.exec(1, ["mosrun", "-F", "-0x9999", "sh", "-c", f"touch {marker}"], timeout_s=30)
    assert r.returncode == 0, r.stderr
    assert "running at home (-F)" in r.stderr
    assert marker.exists()
    # A node that is there (its load heard, which takes a gossip interval after the maps meet):
    # the job starts on it.
    wait_until(
        "node1 hears node2's load",
        lambda: bed.exec(1, ["mosctl", "isup", "0x640c"]).stdout.strip() == "yes",
        10.0,
    )
    job = bed.popen(1, ["mosrun", "-192.168.100.12", "perl", "-e", "sleep 1 while 1"])
    try:
        wait_until(
            "the job is a guest on node2",
            lambda: json.loads(bed.exec(2, ["mps", "--json"]).stdout)["jobs"] != [],
            20.0,
        )
    finally:
        job.kill()
        job.wait()


def test_a_static_maps_numbers_name_nodes(make_bed: MakeBed) -> None:
    map_file = ROOT / f"names-{secrets.token_hex(3)}.map"  # readable by every node's agent
    bed = None
    try:
        map_file.parent.mkdir(parents=True, exist_ok=True)
        map_file.write_text("# openMosix numbering\n1 192.168.100.11 2\n")
        bed = make_bed(2, extra_args=["--map-file", str(map_file)])
        rows = bed.call(1, "map")["nodes"]
        assert {r["node_id"]: r["number"] for r in rows} == {0x640B: 1, 0x640C: 2}
        job = bed.popen(
            1,
            ["mosrun", "perl", "-e", "$|=1; print qq(go\\n); sleep 1 while 1"],
            stdout=subprocess.PIPE,
        )
        try:
            assert job.stdout is not None
            assert job.stdout.readline() == b"go\n"
            r = bed.exec(1, ["migrate", str(job.pid), "2"], timeout_s=120)
            assert r.returncode == 0, r.stderr
            assert "now runs on node 0x640c (#25612)" in r.stdout
            wait_until(
                "the job runs on node 2",
                lambda: json.loads(bed.exec(2, ["mps", "--json"]).stdout)["jobs"] != [],
                10.0,
            )
            r = bed.exec(2, ["mosctl", "whois", "1"])
            assert r.returncode == 0, r.stderr
            assert "192.168.100.11" in r.stdout
            r = bed.exec(1, ["mosctl", "getload", "no-such-host.invalid"])
            assert r.returncode == 1
            assert r.stderr.startswith("mosctl: ")
            assert "Traceback" not in r.stderr
        finally:
            job.kill()
            job.wait()
            if job.stdout is not None:
                job.stdout.close()
    finally:
        if bed is not None:
            bed.down()
        map_file.unlink(missing_ok=True)
