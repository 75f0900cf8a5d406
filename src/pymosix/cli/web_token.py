"""``pymosix web-token``: your login token for this node's web monitor, and its address.

The agent hands each user their own token (root's is root's; others get one if root listed them
in the web_users setting); logged in with it, the page acts as that user. --new makes a new one:
the old one and the sessions opened with it stop working.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pymosix.cli._common import print_json
from pymosix.control_client import call
from pymosix.errors import PymosixError


def ask(op: str, **args: Any) -> dict[str, Any]:
    """The agent's answer to a web op; off on this node is one line saying how to turn it on."""
    try:
        reply = call(op, **args)
    except PymosixError as e:
        if f"unknown op {op!r}" in str(e):
            raise PymosixError(
                "the web monitor is off on this node: set web_port (and web_address) in "
                "/etc/pymosix/node.toml and restart the agent"
            ) from None
        raise
    reply.pop("ok", None)
    return reply


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pymosix web-token", description=__doc__)
    p.add_argument("--new", action="store_true", help="replace the token (the old one stops)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    reply = ask("web_token", new=args.new)
    if args.json:
        print_json(reply)
    else:
        print(reply["token"])
        print(f"log in at {reply['url']} as {reply['user']}", file=sys.stderr)
    return 0
