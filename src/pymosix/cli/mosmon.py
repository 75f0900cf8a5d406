"""``mosmon``: the load of every node, one bar per node. Keys (also options): l L s m r u views,
v w V a layouts, d dead nodes, h or ? help, q quits. ``--once`` prints one screen; ``--json`` the
numbers. Figures older than ``--stale-after`` seconds are marked ``~``."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from pymosix.cli._common import print_json, run_tool
from pymosix.control_client import call
from pymosix.errors import PymosixError
from pymosix.mosmon.render import LAYOUTS, VIEWS, Line, Screen, plain, render_styled, with_dead


def fetch() -> list[dict[str, Any]]:
    """Every node of the map, then the nodes that left it lately (shown with ``d``)."""
    rows: list[dict[str, Any]] = call("loads", timeout_s=5)["nodes"]
    try:
        gone: list[dict[str, Any]] = call("gone", timeout_s=5)["nodes"]
    except PymosixError as e:
        if "unknown op" not in str(e):  # an older agent has no list of dead nodes
            raise
        gone = []
    return with_dead(rows, gone)


def emit(lines: Sequence[Line]) -> None:
    """Print styled lines: in colour on a terminal that has it, plain text elsewhere."""
    if sys.stdout.isatty() and not os.environ.get("NO_COLOR"):
        from rich.console import Console

        from pymosix.mosmon.app import to_text

        Console(highlight=False).print(to_text(lines), crop=False, soft_wrap=True)
        return
    print("\n".join(plain(lines)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mosmon", description=__doc__)
    for k, v in VIEWS.items():
        p.add_argument(f"-{k}", dest="view", action="store_const", const=k, help=f"view: {v}")
    for k, v in LAYOUTS.items():
        p.add_argument(f"-{k}", dest="layout", action="store_const", const=k, help=f"layout: {v}")
    p.add_argument("-d", dest="dead", action="store_true", help="show dead nodes")
    p.add_argument("--once", action="store_true", help="print one screen of plain text and exit")
    p.add_argument("--json", action="store_true", help="print the numbers and exit")
    p.add_argument(
        "--width", type=int, default=0, help="screen width for --once (default: the terminal's)"
    )
    p.add_argument(
        "--stale-after",
        type=float,
        default=3.0,
        metavar="S",
        help="mark figures older than S seconds (default 3)",
    )
    p.set_defaults(view="l", layout="a")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        if args.json:
            print_json({"nodes": fetch()})
            return 0
        if args.once or not sys.stdout.isatty():
            size = shutil.get_terminal_size((80, 25))
            width = args.width or size.columns
            rows = fetch()
            # Every node on one screen: as many lines as it takes.
            height = max(size.lines, len(rows) + 6) if args.layout == "V" else 16
            s = Screen(args.view, args.layout, width, height, 0, args.dead, args.stale_after)
            emit(render_styled(rows, s)[:-1])
            return 0
        from pymosix.mosmon.app import Mosmon

        fetch()  # fail now, in one line, if no agent answers
        Mosmon(
            fetch, args.view, args.layout, show_dead=args.dead, stale_after_s=args.stale_after
        ).run()
        return 0

    return run_tool("mosmon", body)
