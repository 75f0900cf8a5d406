"""``pymosix install-tools``: link pymosix's commands (mosrun, migrate, mps, ...) into
PREFIX/bin (default /usr/local/bin), so every user finds them, and their man pages (in a wheel)
into PREFIX/share/man/man1; again is harmless."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from pymosix.cli._common import print_json
from pymosix.install import PACKAGE_DIR, console_scripts, link_tools, scripts_dir, unlink_tools

#: Where a wheel carries the man pages setup.py made (a clone has none: see pymosix/manpages.py).
MAN_PAGES = PACKAGE_DIR / "man" / "man1"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pymosix install-tools", description=__doc__)
    p.add_argument("--prefix", type=Path, default=Path("/usr/local"), help="links go in PREFIX/bin")
    p.add_argument("--remove", action="store_true", help="remove the links this made")
    p.add_argument("--force", action="store_true", help="replace files that are not links")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    bin_dir, names = args.prefix / "bin", console_scripts()
    man_dir = args.prefix / "share" / "man" / "man1"
    pages = sorted(p.name for p in MAN_PAGES.glob("*.1")) if MAN_PAGES.is_dir() else []
    if args.remove:
        links = unlink_tools(bin_dir, scripts_dir(), names)
        links += unlink_tools(man_dir, MAN_PAGES, pages) if pages else []
    else:
        links = link_tools(bin_dir, scripts_dir(), names, force=args.force)
        links += link_tools(man_dir, MAN_PAGES, pages, force=args.force) if pages else []
    if args.json:
        print_json([asdict(link) for link in links])
    else:
        for link in links:
            print(f"{link.action:<9} {link.path} -> {link.target}")
    return 0
