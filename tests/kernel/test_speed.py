"""Speeds measured, not typed: a bed node slowed to half its CPU by a CFS quota measures about
half the speed of its twin, and every node's tools show the measured speeds."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable

import pytest

from pymosix.testbed import TestBed
from pymosix.testbed.cpuquota import cpu_cgroup, set_cpu_quota
from tests.kernel.conftest import wait_until

pytestmark = pytest.mark.kernel

MakeBed = Callable[..., TestBed]


def speeds_seen(bed: TestBed, viewer: int) -> dict[int, int]:
    rows = json.loads(bed.exec(viewer, ["mosmon", "--json"]).stdout)["nodes"]
    return {int(r["node_id"]): int(r["speed"]) for r in rows if r.get("speed")}


def own_speed(bed: TestBed, which: int) -> int:
    """The speed node `which`'s agent holds for itself (mosctl getspeed's, read from here)."""
    return int(next(r for r in bed.call(which, "loads")["nodes"] if r["self"])["speed"])


def measured_in(bed: TestBed, which: int) -> int:
    """The speed the agent's benchmark measures inside node `which` now."""
    out = bed.exec(which, [sys.executable, "-m", "pymosix.load.speed"], check=True).stdout
    m = re.match(r"speed (\d+)", out)
    assert m, out
    return int(m.group(1))


def test_half_quota_measures_half_speed(make_bed: MakeBed) -> None:
    # A quota of half a CPU slows a node only if it would otherwise get more than half: on a
    # saturated machine other work already holds each node below it, and the ratio means nothing.
    cpus = os.cpu_count() or 1
    if os.getloadavg()[0] > 1.5 * cpus:
        pytest.skip(f"load average {os.getloadavg()[0]:.1f} on {cpus} CPUs: speeds not comparable")
    bed = make_bed(2, agents=[], measure_speed=True)
    slow = bed.node(2)
    path = set_cpu_quota(slow, 0.5)
    assert (path / "cpu.cfs_quota_us").read_text().strip() == "5000"
    assert (path / "cpu.cfs_period_us").read_text().strip() == "10000"
    for i in (1, 2):
        bed.start_agent(i)
    bed.wait_converged(30)
    assert slow.agent_pid in {int(x) for x in (cpu_cgroup(slow) / "tasks").read_text().split()}
    fast_id, slow_id = bed.node(1).node_id, slow.node_id
    for viewer in (1, 2):
        wait_until(
            f"node{viewer} knows both speeds",
            lambda v=viewer: set(speeds_seen(bed, v)) == {fast_id, slow_id},  # type: ignore[misc]
            10.0,
        )
    seen = speeds_seen(bed, 1)
    assert seen == speeds_seen(bed, 2), "both nodes see the same measured speeds"
    ratio = seen[slow_id] / seen[fast_id]
    # A measurement is a fraction of a second on a shared machine: a neighbour busy during one
    # node's runs can hold that node's best run down by a third (CI once read 0.82 here: the fast
    # node at 6778, about two thirds of this machine's usual speed). The quota's effect is
    # systematic, such a disturbance is not: out of bounds, the benchmark runs again in both
    # nodes, up to three times, and every ratio read is reported.
    ratios = [ratio]
    while not 0.25 <= ratio <= 0.7 and len(ratios) < 4:
        ratio = measured_in(bed, 2) / measured_in(bed, 1)
        ratios.append(ratio)
    # Ideal 0.5. The quota can let one unthrottled 5 ms burst into a 50 ms run (at most +11 %,
    # 0.49 to 0.52 measured); best of 5 runs repeats within about 3 % on this shared machine, and
    # the two nodes' CPUs are shared with other work unevenly (a neighbour that stays busy costs
    # a measurement up to ~15 %): 0.40 to 0.62 when all is quiet. With other work on the
    # machine both ends move (0.63 and 0.31 seen in full test runs: the throttled runs can all
    # land badly against the quota's period): 0.25 to 0.7 still tells a node held to half a CPU
    # from a whole one, which is what the balancer needs to know.
    assert 0.25 <= ratio <= 0.7, (seen, ratios)
    # What the agent measured is what it gossips and what mosctl reports.
    got = bed.exec(1, ["mosctl", "getspeed", f"{slow_id:#x}"]).stdout.strip()
    assert int(got) == seen[slow_id]


def test_a_low_reading_at_start_is_raised_once_the_node_is_idle_and_fast(make_bed: MakeBed) -> None:
    # node2's agent starts beside two CPU hogs on its CPU (neighbours holding the CPU while it
    # measures: it gets a third of it); they go, and within a few re-check intervals on the idle
    # node its speed is its real one, gossiped to node1. Not a CPU quota: a quota of a quarter
    # read anything from 0.2 to 0.9 of the speed (a 50 ms run can fall within one period's
    # share), and the node, idle under it, measured itself again before the quota went.
    bed = make_bed(2, agents=[], measure_speed=True, extra_args=["--set", "speed_recheck_s=1"])
    slow = bed.node(2)
    hogs = [bed.popen(2, ["python3", "-c", "while True: pass"]) for _ in range(2)]
    try:
        for i in (1, 2):
            bed.start_agent(i)
        bed.wait_converged(30)
        slow_id = slow.node_id
        wait_until("node1 knows node2's speed", lambda: slow_id in speeds_seen(bed, 1), 10.0)
        first = own_speed(bed, 2)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    # Idle means idle CPUs: on a machine busy with other work this takes longer. Asked over
    # the control socket from here, not by a mosctl inside node2: a Python started on node2's
    # CPU every half second kept it over the idle threshold on a busy CI machine.
    try:
        wait_until(
            "node2's speed raised by a reading on its idle CPU",
            lambda: own_speed(bed, 2) > 1.4 * first,
            60.0,
            poll_s=1.0,
        )
    except BaseException:
        said = [ln for ln in slow.log.read_text().splitlines() if "speed" in ln]
        pytest.fail(f"first {first}, now {own_speed(bed, 2)}; node2's log: {said[-6:]}")
    raised = int(bed.exec(2, ["mosctl", "getspeed"]).stdout.strip())
    wait_until("node1 hears the raised speed", lambda: speeds_seen(bed, 1)[slow_id] == raised, 10.0)
    assert "measured this node's speed again" in slow.log.read_text()
