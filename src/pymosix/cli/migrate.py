"""``migrate PID NODE|home|balance``: move a job (by its home PID) to another node.

NODE is a node id (decimal or 0x hex) or an IP address; ``home`` brings it home; ``balance`` asks
the balancing policy for the best place now. If the move fails, the job goes on where it was.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pymosix.cli._common import print_json, run_tool
from pymosix.control_client import call
from pymosix.errors import PymosixError
from pymosix.ids import HOME, format_node_id, parse_node_arg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="migrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("pid", type=int, help="the job's home PID (as mps shows it)")
    p.add_argument("node", help="node id, IP address, home or balance")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        target: Any
        if args.node == "balance":
            target = "balance"
        else:
            try:
                t = parse_node_arg(args.node)
            except ValueError as e:
                raise PymosixError(str(e)) from None
            target = "home" if t == HOME else int(t)
        r = call("migrate", timeout_s=600, pid=args.pid, target=target)
        if args.json:
            print_json({k: v for k, v in r.items() if k != "ok"})
        else:
            print(
                f"job {r['home_pid']} now runs on node {format_node_id(r['node'])} (#{r['node']}), moved in {r['seconds']:.2f} s"
            )
        return 0

    return run_tool("migrate", body)
