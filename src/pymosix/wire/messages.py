"""Payloads of the datagram kinds, validated: a field of the wrong type is a DecodeError."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from pymosix.errors import DecodeError


def _field(payload: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = payload.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise DecodeError(f"field {name!r} missing or of the wrong type")
    return value


@dataclass(frozen=True, slots=True)
class Hello:
    """omdiscd's announcement: I am here, at this address, with these ports."""

    address: str
    gossip_port: int
    migration_port: int
    hello_interval_ms: int

    def to_payload(self) -> dict[str, Any]:
        return {
            "a": self.address,
            "g": self.gossip_port,
            "m": self.migration_port,
            "h": self.hello_interval_ms,
        }

    @classmethod
    def from_payload(cls, p: dict[str, Any]) -> Hello:
        address = _field(p, "a", str)
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise DecodeError(f"hello carries a bad address {address[:40]!r}") from None
        ports = [_field(p, k, int) for k in ("g", "m")]
        if not all(0 < port < 65536 for port in ports):
            raise DecodeError("hello carries a port out of range")
        interval = _field(p, "h", int)
        if not 0 < interval <= 3_600_000:  # up to an hour: big clusters hello rarely
            raise DecodeError("hello carries a bad interval")
        return cls(address, ports[0], ports[1], interval)
