"""``mps``: the managed jobs this node knows, home jobs and guests, with openMosix's NODE column,
the CPU time in all (across moves), and WHY a job cannot move (the reasons follow the table)."""

from __future__ import annotations

import argparse
import sys

from pymosix.cli._common import print_json, run_tool
from pymosix.control_client import call


def cpu_time(seconds: float) -> str:
    """CPU time as ps prints it: M:SS, or H:MM:SS past an hour."""
    s = int(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mps", description=__doc__)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        r = call("jobs")
        if args.json:
            print_json({"node_id": r["node_id"], "jobs": r["jobs"]})
            return 0
        print(
            f"{'PID':>7} {'USER':<8} {'NODE':>6} {'STATE':<8} {'%CPU':>5} {'TIME':>8} {'RSS':>8} {'MIG':>3} {'WHY':<4} COMMAND"
        )
        for j in sorted(r["jobs"], key=lambda j: (j["guest"], j["home_pid"])):
            node = "here" if j["node"] == r["node_id"] else str(j["node"])
            if j["guest"]:
                node = f"guest({j['home_node']})"
            rss = f"{j['rss'] // 1024}K" if j["rss"] else "-"
            why = j.get("why")
            print(
                f"{j['home_pid']:>7} {j['user'][:8]:<8} {node:>6} {j['state']:<8} {j['cpu']:>5.1f} {cpu_time(j.get('cpu_s', 0.0)):>8} {rss:>8} {j['migrations']:>3} {'yes' if why else '-':<4} {j['command'][:60]}"
            )
        stuck = [j for j in r["jobs"] if j.get("why")]
        if stuck:
            print()
        for j in stuck:
            print(f"{j['home_pid']:>7}: {j['why']}")
        return 0

    return run_tool("mps", body)
