"""Node ids as openMosix made them: the low 16 bits of the node's IPv4 address.

192.168.100.11 -> 0x640b -> "pymosix #25611" (the seed, section 5.2).
"""

from __future__ import annotations

import ipaddress
from typing import NewType

NodeId = NewType("NodeId", int)

HOME = "home"


def node_id_from_ip(address: str) -> NodeId:
    """The node id of an IPv4 address: its low 16 bits."""
    ip = ipaddress.IPv4Address(address)
    return NodeId(int(ip) & 0xFFFF)


def format_node_id(node_id: int) -> str:
    """Hex form used by showmap: ``0x640b``."""
    return f"0x{node_id:04x}"


def parse_node_id(text: str) -> NodeId:
    """A node id written in decimal (``25611``) or hex (``0x640b``)."""
    t = text.strip().lower()
    try:
        value = int(t, 16) if t.startswith("0x") else int(t, 10)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a node id (decimal like 25611 or hex like 0x640b)"
        ) from None
    if not 0 < value <= 0xFFFF:
        raise ValueError(f"node id {text!r} is out of range (1..65535)")
    return NodeId(value)


def parse_node_arg(text: str) -> NodeId | str:
    """A node argument: a node id (decimal or 0x hex), an IPv4 address, or ``home``.

    Returns the node id, or the string ``"home"``.
    """
    t = text.strip()
    if t.lower() == HOME:
        return HOME
    if t.count(".") == 3:
        try:
            return node_id_from_ip(t)
        except ValueError:
            raise ValueError(f"{text!r} is not an IPv4 address") from None
    return parse_node_id(t)
