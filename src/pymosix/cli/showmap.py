"""``showmap``: the cluster map as this node's agent sees it."""

from __future__ import annotations

import argparse
import sys

from pymosix.cli._common import print_json, run_tool
from pymosix.control_client import call
from pymosix.showmap import render_map


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="showmap", description=__doc__)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        reply = call("map")
        if args.json:
            print_json({k: v for k, v in reply.items() if k != "ok"})
        else:
            sys.stdout.write(render_map(reply["node_id"], reply["nodes"]))
            # Nodes left out of the map, and why (on stderr: the map keeps the seed's layout).
            for o in reply.get("offenders", []):
                print(f"showmap: warning: refusing datagrams from {o['message']}", file=sys.stderr)
        return 0

    return run_tool("showmap", body)
