"""``mtop``: top for the whole cluster. Every node's load, then every job, busiest first, with
the node it runs on (asked of the agents that run them). Keys: P M N sort, h or ? help, q quits.
``--once`` prints one screen; ``--json`` the numbers. Nodes that did not answer are named."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from typing import Any

from pymosix.cli._common import print_json, run_tool
from pymosix.cli.mosmon import emit
from pymosix.cli.mps import pool_jobs, user_name
from pymosix.control_client import call
from pymosix.mosmon.top import SORTS, render_top
from pymosix.pool import DEFAULT_TIMEOUT_S


def snapshot(user: str | None, timeout_s: float) -> dict[str, Any]:
    """The pool's jobs and this node's view of every node's load."""
    view = pool_jobs(user, timeout_s)
    view["loads"] = call("loads", timeout_s=5)["nodes"]
    return {k: view[k] for k in ("node_id", "jobs", "nodes", "missing", "loads")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mtop", description=__doc__)
    p.add_argument("-u", "--user", help="only USER's jobs (name or uid)")
    p.add_argument(
        "-d", "--delay", type=float, default=2.0, metavar="S", help="seconds between refreshes"
    )
    p.add_argument("--sort", choices=list(SORTS), default="P", help="P %%CPU, M memory, N PID")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds to wait for the other nodes",
    )
    p.add_argument("--once", action="store_true", help="print one screen and exit")
    p.add_argument("--json", action="store_true", help="print the numbers and exit")
    p.add_argument(
        "--width", type=int, default=0, help="screen width for --once (default: the terminal's)"
    )
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.delay <= 0:
        p.error("the delay must be over 0 seconds")
    user = None if args.user is None else user_name(args.user)

    def body() -> int:
        if args.json:
            print_json(snapshot(user, args.timeout))
            return 0
        if args.once or not sys.stdout.isatty():
            size = shutil.get_terminal_size((80, 25))
            view = snapshot(user, args.timeout)
            # Every job once: as many lines as it takes.
            height = len(view["jobs"]) + 3 * (len(view["loads"]) + len(view["nodes"]) + 4)
            emit(render_top(view, args.width or size.columns, height, args.sort, time.time()))
            return 0
        from pymosix.mosmon.app import Mtop

        snapshot(user, args.timeout)  # fail now, in one line, if no agent answers
        Mtop(lambda: snapshot(user, args.timeout), args.delay, args.sort).run()
        return 0

    return run_tool("mtop", body)
