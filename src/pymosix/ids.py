"""Node ids as openMosix made them: the low 16 bits of the node's IPv4 address.

192.168.100.11 -> 0x640b -> "pymosix #25611" (the seed, section 5.2). Tools print ids in the
seed's hex (`format_node_id`), with the decimal where openMosix showed it (`describe_node`), and
take a node named any way (`resolve_node`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NewType

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


def describe_node(node_id: int) -> str:
    """How tools name a node in prose: the seed's hex with openMosix's decimal, ``0x640b (#25611)``."""
    return f"{format_node_id(node_id)} (#{node_id})"


def host_addresses(name: str) -> list[str]:
    """IPv4 addresses of a host name (DNS, /etc/hosts); [] if it does not resolve."""
    import socket  # here: the pure modules that use ids import no I/O

    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(str(i[4][0]) for i in infos))


def resolve_node(
    text: str,
    rows: Sequence[Mapping[str, Any]] = (),
    lookup: Callable[[str], list[str]] = host_addresses,
) -> NodeId | str:
    """A node named any way a user may: ``home``; a hex id (``0x640b``); a whole number, which is
    a static map's node number when the map (`rows`, as the agent's ``map`` op lists them) has it,
    else a decimal id (``25611``); an IPv4 address; or a host name, resolved (an address of it that
    is in the map first). Returns the node id or ``"home"``; ValueError says what was wrong."""
    t = text.strip()
    if not t:
        raise ValueError("empty node name")
    if t.lower() == HOME:
        return HOME
    if t.isdigit():
        number = int(t)
        for r in rows:
            if number and r.get("number") == number:
                return NodeId(int(r["node_id"]))
        return parse_node_id(t)
    if t.lower().startswith("0x") or (t.count(".") == 3 and t.replace(".", "").isdigit()):
        return parse_node_arg(t)
    addresses = lookup(t)
    if not addresses:
        raise ValueError(
            f"{text!r} is not a node id, a map number, an IPv4 address or a host name that resolves"
        )
    known = {str(r.get("address")) for r in rows}
    return node_id_from_ip(next((a for a in addresses if a in known), addresses[0]))


def expand_node_list(text: str) -> list[str]:
    """``1-3,7`` -> ["1", "2", "3", "7"]; ranges of whole numbers or of hex ids, other names
    (addresses, host names with dashes) kept as they are."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        hexed = lo.lower().startswith("0x") and hi.lower().startswith("0x")
        if sep and (hexed or (lo.isdigit() and hi.isdigit())):
            try:
                a, b = (int(x, 16 if hexed else 10) for x in (lo, hi))
            except ValueError:
                raise ValueError(f"{part!r} is not a range of node ids") from None
            if not 0 < a <= b <= 0xFFFF:
                raise ValueError(f"range {part!r} must go up, within 1..65535")
            out += [format_node_id(n) if hexed else str(n) for n in range(a, b + 1)]
        else:
            out.append(part)
    return out
