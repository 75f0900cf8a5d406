"""``mps``: the managed jobs this node knows, home jobs and guests, with openMosix's NODE column."""

from __future__ import annotations

import argparse
import sys

from pymosix.cli._common import print_json, run_tool
from pymosix.control_client import call


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
            f"{'PID':>7} {'USER':<8} {'NODE':>6} {'STATE':<8} {'%CPU':>5} {'RSS':>8} {'MIG':>3} COMMAND"
        )
        for j in sorted(r["jobs"], key=lambda j: (j["guest"], j["home_pid"])):
            node = "here" if j["node"] == r["node_id"] else str(j["node"])
            if j["guest"]:
                node = f"guest({j['home_node']})"
            rss = f"{j['rss'] // 1024}K" if j["rss"] else "-"
            print(
                f"{j['home_pid']:>7} {j['user'][:8]:<8} {node:>6} {j['state']:<8} {j['cpu']:>5.1f} {rss:>8} {j['migrations']:>3} {j['command'][:60]}"
            )
        return 0

    return run_tool("mps", body)
