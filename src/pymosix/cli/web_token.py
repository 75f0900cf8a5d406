"""``pymosix web-token``: your login token for this node's web monitor, and its address.

The agent hands each user their own token (root's is root's; others get one if root listed them
in the web_users setting); logged in with it, the page acts as that user. --new makes a new one:
the old one and the sessions opened with it stop working.
"""

from __future__ import annotations

import argparse
import sys

from pymosix.cli._common import print_json
from pymosix.control_client import call
from pymosix.errors import PymosixError


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pymosix web-token", description=__doc__)
    p.add_argument("--new", action="store_true", help="replace the token (the old one stops)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    try:
        reply = call("web_token", new=args.new)
    except PymosixError as e:
        if "unknown op 'web_token'" in str(e):
            raise PymosixError(
                "the web monitor is off on this node: set web_port (and web_address) in "
                "/etc/pymosix/node.toml and restart the agent"
            ) from None
        raise
    reply.pop("ok", None)
    if args.json:
        print_json(reply)
    else:
        print(reply["token"])
        print(f"log in at {reply['url']} as {reply['user']}", file=sys.stderr)
    return 0
