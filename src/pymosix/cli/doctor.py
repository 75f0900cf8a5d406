"""``pymosix doctor``: can this host run a node with migration? One line per prerequisite."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from pymosix.cli._common import print_json
from pymosix.config import DEFAULT_KEY_FILE
from pymosix.doctor import Status, can_run_node, run_all


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pymosix doctor", description=__doc__)
    p.add_argument("--key", type=Path, default=DEFAULT_KEY_FILE, help="cluster key file to check")
    p.add_argument("--interface", default="", help="interface discovery will use")
    p.add_argument(
        "--criu", default="", help="criu binary to check (default: as the agent finds it)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--brief", action="store_true", help="print only problems and a summary")
    args = p.parse_args(argv)
    checks = run_all(args.key, args.interface, args.criu)
    ok = can_run_node(checks)
    if args.json:
        print_json({"ok": ok, "checks": [asdict(c) | {"status": c.status.value} for c in checks]})
        return 0 if ok else 1
    for c in checks:
        if not args.brief or c.status is not Status.OK:
            print(c.line())
    if ok:
        print("pymosix doctor: this host can run a node with migration")
    else:
        print("pymosix doctor: this host cannot run a node with migration yet (see FAIL lines)")
    return 0 if ok else 1
