"""``mosmon``: the load of every node, one bar per node. Keys (also options): l L s m r u views,
v w V a layouts, q quits. ``--once`` prints one plain-text screen; ``--json`` the numbers."""

from __future__ import annotations

import argparse
import shutil
import sys
from typing import Any

from pymosix.cli._common import print_json, run_tool
from pymosix.control_client import call
from pymosix.mosmon.render import LAYOUTS, VIEWS, render


def fetch() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = call("loads", timeout_s=5)["nodes"]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mosmon", description=__doc__)
    for k, v in VIEWS.items():
        p.add_argument(f"-{k}", dest="view", action="store_const", const=k, help=f"view: {v}")
    for k, v in LAYOUTS.items():
        p.add_argument(f"-{k}", dest="layout", action="store_const", const=k, help=f"layout: {v}")
    p.add_argument("--once", action="store_true", help="print one screen of plain text and exit")
    p.add_argument("--json", action="store_true", help="print the numbers and exit")
    p.add_argument(
        "--width", type=int, default=0, help="screen width for --once (default: the terminal's)"
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
            print("\n".join(render(rows, args.view, args.layout, width, height)[:-1]))
            return 0
        from pymosix.mosmon.app import Mosmon

        fetch()  # fail now, in one line, if no agent answers
        Mosmon(fetch, args.view, args.layout).run()
        return 0

    return run_tool("mosmon", body)
