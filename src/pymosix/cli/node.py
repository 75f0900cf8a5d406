"""``pymosix node``: run the node agent (one per host, as root)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from pymosix.config import DEFAULT_CONFIG_FILE, NodeConfig, load_config
from pymosix.errors import ConfigError
from pymosix.mapfile import load_map

#: Flags that map one-to-one onto NodeConfig fields.
_FLAGS = (
    "address",
    "interface",
    "key_file",
    "map_file",
    "state_dir",
    "socket",
    "mcast_group",
    "mcast_port",
    "log_level",
)


def build_config(argv: list[str]) -> tuple[NodeConfig, str | None, bool]:
    p = argparse.ArgumentParser(prog="pymosix node", description=__doc__)
    p.add_argument(
        "--config", type=Path, help=f"TOML config (default {DEFAULT_CONFIG_FILE} if it exists)"
    )
    p.add_argument("--address", help="this node's IPv4 address (its node id is the low 16 bits)")
    p.add_argument("--interface", help="interface for discovery and gossip")
    p.add_argument("--key-file", help="cluster key (made on first start if missing)")
    p.add_argument(
        "--map-file", help="static map in /etc/openmosix.map format (turns discovery off)"
    )
    p.add_argument("--state-dir", help="state directory")
    p.add_argument("--socket", help="control socket path")
    p.add_argument("--no-discovery", action="store_true", help="no multicast discovery")
    p.add_argument("--mcast-group", help="discovery multicast group")
    p.add_argument("--mcast-port", help="discovery UDP port")
    p.add_argument("--log-file", help="also log to this file")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any other setting"
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration (file and flags) as TOML, and exit",
    )
    args = p.parse_args(argv)
    overrides: dict[str, Any] = {}
    for name in _FLAGS:
        value = getattr(args, name)
        if value is not None:
            overrides["socket_path" if name == "socket" else name] = value
    if args.no_discovery:
        overrides["discovery"] = False
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set takes KEY=VALUE, not {item!r}")
        overrides[key] = value
    path = args.config or (DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None)
    return load_config(path, overrides), args.log_file, args.print_config


def setup_logging(level: str, log_file: str | None) -> None:
    fmt = logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(level.upper())
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        try:
            handlers.append(logging.FileHandler(log_file))
        except OSError as e:
            raise ConfigError(f"--log-file {log_file}: cannot write it: {e.strerror}") from None
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)


def main(argv: list[str]) -> int:
    config, log_file, print_config = build_config(argv)
    if print_config:
        from pymosix.configdoc import render

        sys.stdout.write(render(config, template=False))
        return 0
    if config.map_file is not None:
        load_map(config.map_file)  # a bad map is one line now, not after the sockets are open
    setup_logging(config.log_level, log_file)
    from pymosix import malloc
    from pymosix.node import build_agent

    malloc.tune()

    try:
        agent = build_agent(config)
    except OSError as e:
        raise ConfigError(f"cannot start the agent: {e.filename}: {e.strerror}") from None
    asyncio.run(agent.run())
    return 0
