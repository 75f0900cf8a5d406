"""``pymosix keygen [FILE]``: write a new cluster key (mode 0600); copy it to every node."""

from __future__ import annotations

import argparse
from pathlib import Path

from pymosix.config import DEFAULT_KEY_FILE
from pymosix.keys import write_key


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pymosix keygen", description=__doc__)
    p.add_argument("file", nargs="?", type=Path, default=DEFAULT_KEY_FILE)
    p.add_argument("--force", action="store_true", help="replace an existing key")
    args = p.parse_args(argv)
    write_key(args.file, force=args.force)
    print(
        f"wrote a new cluster key to {args.file} (mode 600); copy it to every node of the cluster"
    )
    return 0
