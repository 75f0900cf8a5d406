"""``pymosix`` and its subcommands; each lives in its own module under pymosix.cli."""

from __future__ import annotations

import importlib
import sys

from pymosix.cli._common import run_tool

#: subcommand -> (module under pymosix.cli, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "node": ("node", "run the node agent (one per host, as root)"),
    "doctor": ("doctor", "check that this host can run a node with migration"),
    "setup": ("setup", "provision CRIU on this host (root), with the script the package ships"),
    "install-tools": ("install_tools", "link the commands into /usr/local/bin (or --prefix)"),
    "keygen": ("keygen", "write a new cluster key"),
    "testbed": ("testbed", "a cluster of network namespaces on this machine"),
    "demo": ("demo", "replay the seed's walk-through on a test bed"),
    "sim": ("sim", "simulate a cluster running the real policy (scenarios, CSV, PNG)"),
    "install-service": ("install_service", "install the systemd unit for the node agent"),
    "web": ("web", "where this node's web monitor is"),
    "web-token": ("web_token", "your login token for this node's web monitor"),
}


def usage() -> str:
    lines = ["usage: pymosix COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<16}{help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] == "--version":
        from pymosix import __version__

        print(f"pymosix {__version__}")
        return 0
    name = args[0]
    if name not in SUBCOMMANDS:
        print(f"pymosix: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"pymosix.cli.{SUBCOMMANDS[name][0]}")
    result: int = run_tool(f"pymosix {name}", lambda: int(module.main(args[1:])))
    return result


if __name__ == "__main__":
    sys.exit(main())
