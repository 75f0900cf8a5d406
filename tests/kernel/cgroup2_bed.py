"""Run by test_cgroup2.py with a cgroup v2 mode (PYMOSIX_CGROUP_MODE, or a v2-only host): a
2-node bed goes up, is checked, migrates a job and goes down. Prints one JSON object of findings;
exits non-zero with the reason on the first failed expectation.

``python -m tests.kernel.cgroup2_bed BEDNAME``
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pymosix import cgroups
from pymosix.cgroups import parse_cpu_list
from pymosix.testbed import TestBed
from pymosix.testbed.kernel import cgroup_tree, netns_list

LOOP = '$|=1; $i=1; while($i) { $i++; print "$i\\n" if $i % 500000 == 0; }'


def until(what: str, pred: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"not within {timeout_s} s: {what}")
        time.sleep(0.05)


def affinity(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return parse_cpu_list(line.split(":", 1)[1])
    return []


def v2_cgroup(pid: int) -> str:
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return next(ln[3:] for ln in lines if ln.startswith("0::"))


def load(bed: TestBed, viewer: int, node: int) -> float:
    rows = bed.call(viewer, "loads")["nodes"]
    row = next(r for r in rows if r["node_id"] == bed.node(node).node_id)
    return float(row["load"]) if row["up"] else -1.0


def main(name: str) -> dict[str, Any]:
    tree = cgroup_tree()
    out: dict[str, Any] = {"mode": tree.mode, "root": str(tree.root), "nodes": {}}
    bed = TestBed.up(nodes=2, name=name)
    job = None
    try:
        bed.wait_converged()
        for n in bed.nodes:
            pids = tree.pids(tree.path(n.cpuset))
            out["nodes"][n.name] = {
                "cpus": n.cpus,
                "agent_in_cgroup": n.agent_pid in pids,
                "affinities": sorted({tuple(affinity(p)) for p in pids}),
                "cgroups": sorted({v2_cgroup(p) for p in pids}),
            }
        job = bed.popen(1, ["mosrun", "perl", "-e", LOOP], stdout=subprocess.PIPE)
        assert job.stdout is not None
        job.stdout.readline()
        until("node2 sees node1 loaded and node2 idle", lambda: load(bed, 2, 1) > 0.6, 15)
        out["load_seen"] = {"node1": load(bed, 2, 1), "node2": load(bed, 2, 2)}
        r = bed.exec(1, ["migrate", str(job.pid), "0x640c"], timeout_s=120)
        out["migrate"] = {"rc": r.returncode, "stderr": r.stderr.strip()}
        if r.returncode == 0:
            rows = json.loads(bed.exec(2, ["mps", "--json"]).stdout)["jobs"]
            guest = next(j for j in rows if j["home_pid"] == job.pid)
            out["guest"] = {"affinity": affinity(guest["pid"]), "cgroup": v2_cgroup(guest["pid"])}
            job.stdout.readline()  # it goes on counting there
            until("node2 sees its own guest's load", lambda: load(bed, 2, 2) > 0.6, 15)
            out["load_after"] = {"node1": load(bed, 2, 1), "node2": load(bed, 2, 2)}
    finally:
        if job is not None:
            job.kill()
            job.wait()
            if job.stdout is not None:
                job.stdout.close()
        bed.down()
    out["left"] = [str(p) for t in cgroups.hierarchies() for p in t.find(f"pmx-{name}-")]
    out["left"] += [ns for ns in netns_list() if ns.startswith(f"pmx-{name}-")]
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
