"""Which interface a node uses when none is configured: one rule, used by the agent and `doctor`.

The rule: the interface of the IPv4 default route (lowest metric); if there is none, or it is
unusable, the first interface (by name) that is up, not loopback and has an IPv4 address.
Container bridges and their veths (docker0, br-*, virbr*, cni*, veth*, lxc*, podman*) are never
picked: they exist on many hosts with the same address (172.17.0.1 gives every Docker host node
id 0x0001) and carry no cluster traffic. Configure `interface` or `address` to use one anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pymosix.errors import ConfigError

CONTAINER_PREFIXES = ("docker", "br-", "virbr", "cni", "veth", "lxc", "podman")


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    up: bool
    addresses: tuple[str, ...] = ()
    loopback: bool = False


@dataclass(frozen=True, slots=True)
class Choice:
    """The interface picked, its first IPv4 address, and why (for the log and doctor)."""

    name: str
    address: str
    why: str


def is_container_interface(name: str) -> bool:
    return name.startswith(CONTAINER_PREFIXES)


def default_route_interfaces(route_text: str) -> list[str]:
    """Interfaces of IPv4 default routes in /proc/net/route text, lowest metric first."""
    found: list[tuple[int, str]] = []
    for line in route_text.splitlines()[1:]:
        f = line.split()
        if len(f) > 7 and f[1] == "00000000" and f[7] == "00000000":  # destination and mask 0
            found.append((int(f[6]) if f[6].isdigit() else 0, f[0]))
    return [name for _, name in sorted(found)]


def choose_interface(route_text: str, interfaces: Sequence[Interface]) -> Choice:
    """The interface (and address) to use when none is configured; ConfigError if none fits."""
    by_name = {i.name: i for i in interfaces}

    def usable(i: Interface | None) -> bool:
        return (
            i is not None
            and i.up
            and not i.loopback
            and bool(i.addresses)
            and not is_container_interface(i.name)
        )

    for name in default_route_interfaces(route_text):
        if usable(by_name.get(name)):
            return Choice(name, by_name[name].addresses[0], "the default route's")
    for i in sorted(interfaces, key=lambda i: i.name):
        if usable(i):
            return Choice(i.name, i.addresses[0], "no usable default route: the first one up")
    skipped = sorted(i.name for i in interfaces if is_container_interface(i.name))
    extra = f" (container interfaces are never picked: {', '.join(skipped)})" if skipped else ""
    raise ConfigError(
        f"no interface is up with an IPv4 address{extra}: set 'address' or 'interface'"
    )


# --- thin I/O ------------------------------------------------------------------------------


def read_routes(path: Path = Path("/proc/net/route")) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def host_interfaces() -> list[Interface]:
    """This network namespace's interfaces with their IPv4 addresses."""
    import socket

    import psutil

    stats = psutil.net_if_stats()
    out = []
    for name, entries in psutil.net_if_addrs().items():
        st = stats.get(name)
        flags = getattr(st, "flags", "")
        out.append(
            Interface(
                name,
                bool(st and st.isup),
                tuple(a.address for a in entries if a.family == socket.AF_INET),
                name == "lo" or "loopback" in str(flags),
            )
        )
    return out


def auto_interface() -> Choice:
    """The choice for this host, by the rule above."""
    return choose_interface(read_routes(), host_interfaces())


def auto_interface_name() -> str:
    """The name only, "" if none fits (doctor reports that itself)."""
    try:
        return auto_interface().name
    except ConfigError:
        return ""
