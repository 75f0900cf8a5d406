"""``pymosix install-tools``: link pymosix's commands (mosrun, migrate, mps, ...) into
PREFIX/bin (default /usr/local/bin), so every user finds them; again is harmless."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from pymosix.cli._common import print_json
from pymosix.install import console_scripts, link_tools, scripts_dir, unlink_tools


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pymosix install-tools", description=__doc__)
    p.add_argument("--prefix", type=Path, default=Path("/usr/local"), help="links go in PREFIX/bin")
    p.add_argument("--remove", action="store_true", help="remove the links this made")
    p.add_argument("--force", action="store_true", help="replace files that are not links")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    bin_dir, names = args.prefix / "bin", console_scripts()
    if args.remove:
        links = unlink_tools(bin_dir, scripts_dir(), names)
    else:
        links = link_tools(bin_dir, scripts_dir(), names, force=args.force)
    if args.json:
        print_json([asdict(link) for link in links])
    else:
        for link in links:
            print(f"{link.action:<9} {link.path} -> {link.target}")
    return 0
