"""``pymosix keygen [FILE]``: write a new cluster key file (mode 0600); copy it to every node.

Rotation without downtime: ``--rotate`` adds a new key that every node accepts as soon as it has
the file and that signs from a grace period later (``--grace``, default 600 s): copy the file to
every node within it. Once the new key signs everywhere, ``--retire`` drops the old ones; copy the
file again. ``--list`` shows the keys. Agents re-read the file by themselves.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

from pymosix.config import DEFAULT_KEY_FILE
from pymosix.keys import (
    DEFAULT_GRACE_S,
    ClusterKey,
    choose_current,
    load_keys,
    retire,
    rotate,
    write_key,
)


def _when(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _listing(keys: list[ClusterKey], now: float) -> list[dict[str, object]]:
    signing = choose_current(keys, now)
    return [
        {"id": k.name, "start": k.start, "signing": k == signing, "started": k.start <= now}
        for k in keys
    ]


def _line(k: ClusterKey, signing: ClusterKey, now: float) -> str:
    state = "  (signs)" if k == signing else "" if k.start <= now else "  (not yet)"
    return f"{k.name}  from {_when(k.start)}{state}"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pymosix keygen", description=__doc__)
    p.add_argument("file", nargs="?", type=Path, default=DEFAULT_KEY_FILE)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--rotate", action="store_true", help="add a new key beside the old")
    what.add_argument("--retire", action="store_true", help="drop every key but the newest")
    what.add_argument("--list", action="store_true", help="show the keys and which one signs")
    p.add_argument(
        "--grace",
        type=int,
        default=DEFAULT_GRACE_S,
        metavar="SECONDS",
        help=f"with --rotate: seconds until the new key signs (default {DEFAULT_GRACE_S})",
    )
    p.add_argument(
        "--force", action="store_true", help="replace an existing file; with --retire: even early"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    path: Path = args.file
    now = time.time()
    result: dict[str, object]
    if args.rotate:
        key: ClusterKey = rotate(path, now, args.grace)
        result = {"added": key.name, "start": key.start}
        text = (
            f"added cluster key {key.name} to {path}; it signs from {_when(key.start)}: copy "
            f"{path} to every node before then, and run 'pymosix keygen --retire {path}' after"
        )
    elif args.retire:
        kept, dropped = retire(path, now, force=args.force)
        result = {"kept": kept.name, "retired": [k.name for k in dropped]}
        text = (
            f"retired {', '.join(k.name for k in dropped)}; {path} now holds only {kept.name}: "
            "copy it to every node"
            if dropped
            else f"{path} holds only {kept.name}; nothing to retire"
        )
    elif args.list:
        keys = load_keys(path)
        signing = choose_current(keys, now)
        result = {"file": str(path), "keys": _listing(keys, now)}
        text = "\n".join(_line(k, signing, now) for k in keys)
    else:
        write_key(path, force=args.force)
        result = {"file": str(path), "keys": _listing(load_keys(path), now)}
        text = f"wrote a new cluster key to {path} (mode 600); copy it to every node of the cluster"
    print(json.dumps(result) if args.json else text)
    return 0
