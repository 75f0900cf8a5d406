"""Automatic balancing on a real bed: the seed's four loops spread out by themselves, and the
mosctl switches (block, expel, stay, bring) do what openMosix's did."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable

import pytest

from pymosix.testbed import TestBed
from tests.kernel.conftest import wait_until

pytestmark = pytest.mark.kernel

MakeBed = Callable[..., TestBed]
LOOP = ["perl", "-e", "$i=1; while($i) { $i++; }"]  # the seed's omtest.sh


def jobs_of(bed: TestBed, node: int) -> list[dict[str, object]]:
    # The agent's own answer (what mps prints), asked from here: a tool started inside the node
    # every poll would spend the node's CPU and so change the load the test is watching.
    rows: list[dict[str, object]] = bed.call(node, "jobs")["jobs"]
    return rows


def spread(bed: TestBed) -> dict[int, int]:
    where: dict[int, int] = {}
    for j in jobs_of(bed, 1):
        node = int(str(j["node"]))
        where[node] = where.get(node, 0) + 1
    return where


@pytest.fixture
def loops(procs: list[subprocess.Popen[bytes]]) -> list[subprocess.Popen[bytes]]:
    return procs


def start_loops(
    bed: TestBed,
    n: int,
    loops: list[subprocess.Popen[bytes]],
    node: int = 1,
    opts: list[str] | None = None,
) -> None:
    for _ in range(n):
        loops.append(bed.popen(node, ["mosrun", *(opts or []), *LOOP], stdout=subprocess.DEVNULL))
    wait_until(f"{n} jobs at node{node}", lambda: len(jobs_of(bed, node)) == n, 10.0)


def test_seed_scenario_four_loops_spread_two_and_two(
    make_bed: MakeBed, loops: list[subprocess.Popen[bytes]]
) -> None:
    bed = make_bed(2)
    start_loops(bed, 4, loops)
    wait_until("two of the four run on node2", lambda: spread(bed) == {0x640B: 2, 0x640C: 2}, 5.0)
    moves = {int(str(j["home_pid"])): int(str(j["migrations"])) for j in jobs_of(bed, 1)}
    # Over the next 60 s no job moves more than once more (no ping-pong).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for j in jobs_of(bed, 1):
            assert int(str(j["migrations"])) <= moves[int(str(j["home_pid"]))] + 1, j
        time.sleep(2)
    assert spread(bed) == {0x640B: 2, 0x640C: 2}
    for viewer in (1, 2):
        rows = json.loads(bed.exec(viewer, ["mosmon", "--json"]).stdout)["nodes"]
        loads = sorted(float(r["load"]) for r in rows)
        assert all(1.5 < x < 2.6 for x in loads), loads
        text = bed.exec(viewer, ["mosmon", "--once", "-V"]).stdout
        assert "25611" in text
        assert "25612" in text


def test_locked_and_stay_jobs_do_not_move(
    make_bed: MakeBed, loops: list[subprocess.Popen[bytes]]
) -> None:
    bed = make_bed(2)
    assert bed.exec(1, ["mosctl", "stay"]).returncode == 0
    start_loops(bed, 2, loops)
    time.sleep(4)
    assert spread(bed) == {0x640B: 2}
    assert bed.exec(1, ["mosctl", "nostay"]).returncode == 0
    wait_until("one moves once stay is off", lambda: spread(bed) == {0x640B: 1, 0x640C: 1}, 6.0)


def test_nomig_jobs_stay_home(make_bed: MakeBed, loops: list[subprocess.Popen[bytes]]) -> None:
    bed = make_bed(2)
    start_loops(bed, 3, loops, opts=["-L"])
    time.sleep(4)
    assert spread(bed) == {0x640B: 3}
    assert all(j["locked"] for j in jobs_of(bed, 1))


def test_block_keeps_guests_away_and_expel_sends_them_home(
    make_bed: MakeBed, loops: list[subprocess.Popen[bytes]]
) -> None:
    bed = make_bed(2)
    assert bed.exec(2, ["mosctl", "block"]).returncode == 0
    start_loops(bed, 3, loops)
    time.sleep(4)
    assert spread(bed) == {0x640B: 3}, "a blocked node takes no guests"
    pid = jobs_of(bed, 1)[0]["home_pid"]
    r = bed.exec(1, ["migrate", str(pid), "0x640c"])
    assert r.returncode != 0
    assert "blocks guests" in r.stderr
    assert bed.exec(2, ["mosctl", "noblock"]).returncode == 0
    wait_until("jobs move once block is off", lambda: spread(bed).get(0x640C, 0) >= 1, 6.0)
    r = bed.exec(2, ["mosctl", "expel"])
    assert r.returncode == 0, r.stderr
    assert spread(bed) == {0x640B: 3}
    assert jobs_of(bed, 2) == []
    assert json.loads(bed.exec(2, ["mosctl", "status", "--json"]).stdout)["flags"]["block"] is True


def test_bring_and_migrate_balance(make_bed: MakeBed, loops: list[subprocess.Popen[bytes]]) -> None:
    bed = make_bed(2)
    start_loops(bed, 2, loops)
    wait_until("one job moves to node2", lambda: spread(bed) == {0x640B: 1, 0x640C: 1}, 6.0)
    r = bed.exec(1, ["mosctl", "bring"])
    assert r.returncode == 0, r.stderr
    assert spread(bed) == {0x640B: 2}
    time.sleep(3)
    assert spread(bed) == {0x640B: 2}, "lstay keeps local jobs home after bring"
    pid = jobs_of(bed, 1)[0]["home_pid"]
    r = bed.exec(1, ["migrate", str(pid), "balance"])
    assert r.returncode == 0, r.stderr
    assert spread(bed) == {0x640B: 1, 0x640C: 1}
