"""``pymosix doctor``: can this host run a node with migration? One line per prerequisite."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from pymosix.cli._common import print_json
from pymosix.config import DEFAULT_CONFIG_FILE, NodeConfig, load_config
from pymosix.doctor import Check, Status, can_run_node, run_all
from pymosix.errors import ConfigError


def report(checks: list[Check], brief: bool) -> list[str]:
    """The lines the doctor prints: every check (or, brief, only problems) and a summary."""
    lines = [c.line() for c in checks if not brief or c.status is not Status.OK]
    fails = sum(c.status is Status.FAIL for c in checks)
    warns = sum(c.status is Status.WARN for c in checks)
    if fails:
        lines.append(
            f"pymosix doctor: {fails} problem(s), {warns} warning(s): this host cannot run a node "
            "with migration yet (see the FAIL lines)"
        )
    else:
        lines.append(
            f"pymosix doctor: {len(checks)} checks, {warns} warning(s): "
            "this host can run a node with migration"
        )
    return lines


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pymosix doctor", description=__doc__)
    p.add_argument(
        "--config", type=Path, default=None, help=f"node config (default: {DEFAULT_CONFIG_FILE})"
    )
    p.add_argument("--key", type=Path, default=None, help="cluster key file to check")
    p.add_argument("--interface", default=None, help="interface discovery will use")
    p.add_argument("--criu", default=None, help="criu to check (default: as the agent finds it)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--brief", action="store_true", help="print only problems and a summary")
    args = p.parse_args(argv)
    try:
        path = args.config or (DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None)
        cfg = load_config(path) if path else NodeConfig()
    except ConfigError as e:
        print(f"pymosix doctor: {e}")
        return 2
    checks = run_all(
        args.key or cfg.key_file,
        cfg.interface if args.interface is None else args.interface,
        cfg.criu if args.criu is None else args.criu,
    )
    ok = can_run_node(checks)
    if args.json:
        print_json({"ok": ok, "checks": [asdict(c) | {"status": c.status.value} for c in checks]})
    else:
        print("\n".join(report(checks, args.brief)))
    return 0 if ok else 1
