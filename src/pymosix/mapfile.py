"""Static maps in /etc/openmosix.map format, for networks where multicast does not pass.

Each line is ``NUMBER ADDRESS COUNT``: a node number (openMosix's own numbering, 1-based), the
first IPv4 address, and how many consecutive addresses the line covers; ``#`` starts a comment.
pymosix names nodes by address (node id = low 16 bits of the IP, as discovery does); the node
numbers are kept too (a line ``1 10.0.0.1 3`` numbers 10.0.0.1..3 as 1..3), so that tools take
them as node names (``migrate PID 2``), as openMosix's did.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pymosix.errors import ConfigError
from pymosix.ids import NodeId, node_id_from_ip

#: A line may cover at most this many addresses (a /16 is the whole node-id space).
MAX_COUNT = 65536


def parse_map(text: str, name: str = "map") -> list[tuple[NodeId, str]]:
    """Node ids and addresses of a map; ConfigError with ``name:line: reason`` on a bad line."""
    return [(node_id, ip) for _, node_id, ip in parse_numbered_map(text, name)]


def parse_numbered_map(text: str, name: str = "map") -> list[tuple[int, NodeId, str]]:
    """(node number, node id, address) of each node of a map."""
    out: list[tuple[int, NodeId, str]] = []
    seen: dict[NodeId, str] = {}
    numbers: dict[int, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{name}:{lineno}"
        parts = line.split()
        if len(parts) != 3:
            raise ConfigError(f"{where}: expected 'NUMBER ADDRESS COUNT', got {len(parts)} fields")
        number, address, count_text = parts
        if not number.isdigit() or int(number) < 1:
            raise ConfigError(f"{where}: node number {number!r} is not a positive whole number")
        try:
            first = ipaddress.IPv4Address(address)
        except ValueError:
            raise ConfigError(f"{where}: {address!r} is not an IPv4 address") from None
        if not count_text.isdigit() or not 1 <= int(count_text) <= MAX_COUNT:
            raise ConfigError(
                f"{where}: count {count_text!r} is not a whole number from 1 to {MAX_COUNT}"
            )
        for k in range(int(count_text)):
            try:
                ip = str(first + k)
            except ipaddress.AddressValueError:
                raise ConfigError(
                    f"{where}: {address} + {count_text} runs past the last IPv4 address"
                ) from None
            node_id = node_id_from_ip(ip)
            if node_id in seen:
                raise ConfigError(
                    f"{where}: {ip} has node id {node_id}, already used by {seen[node_id]}"
                )
            if int(number) + k in numbers:
                raise ConfigError(
                    f"{where}: node number {int(number) + k} ({ip}) is already {numbers[int(number) + k]}"
                )
            seen[node_id] = numbers[int(number) + k] = ip
            out.append((int(number) + k, node_id, ip))
    return out


def load_map(path: Path) -> list[tuple[int, NodeId, str]]:
    """(node number, node id, address) of each node of a map file; ConfigError (one line) for
    anything wrong with it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the map file: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"{path}: not a text file (not UTF-8); a map has lines 'NUMBER ADDRESS COUNT'"
        ) from None
    return parse_numbered_map(text, str(path))
