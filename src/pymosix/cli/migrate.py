"""``migrate PID NODE|home|balance``: move a job (by its home PID) to another node.

NODE is a hex id (0x640b), a decimal id, a static map's node number, an IP address or a host
name; ``home`` brings it home; ``balance`` asks the balancing policy for the best place now. If the move fails, the job goes on where it was.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pymosix.cli._common import NODE_HELP, node_arg, print_json, run_tool
from pymosix.control_client import call
from pymosix.ids import HOME, describe_node


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="migrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("pid", type=int, help="the job's home PID (as mps shows it)")
    p.add_argument("node", help=NODE_HELP + "; or balance")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        target: Any
        if args.node == "balance":
            target = "balance"
        else:
            t = node_arg(args.node)
            target = "home" if t == HOME else int(t)
        r = call("migrate", timeout_s=600, pid=args.pid, target=target)
        if args.json:
            print_json({k: v for k, v in r.items() if k != "ok"})
        else:
            print(
                f"job {r['home_pid']} now runs on node {describe_node(r['node'])}, moved in {r['seconds']:.2f} s"
            )
        return 0

    return run_tool("migrate", body)
