"""``pymosix web``: where this node's web monitor is, and who may log in to it (docs/web.md)."""

from __future__ import annotations

import argparse

from pymosix.cli._common import print_json
from pymosix.cli.web_token import ask


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pymosix web", description=__doc__)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    reply = ask("web")
    if args.json:
        print_json(reply)
    else:
        users = reply["users"] or "root only"
        print(f"web monitor: {reply['url']} (users: {users}; {reply['sessions']} logged in)")
        print("log in with the token that 'pymosix web-token' prints")
    return 0
