"""The interface rule the agent and doctor share, on fake routes and interface lists."""

from __future__ import annotations

import pytest

from pymosix.errors import ConfigError
from pymosix.netif import Interface, choose_interface, default_route_interfaces

HEAD = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"


def route(*rows: tuple[str, str, int, str]) -> str:
    return HEAD + "".join(
        f"{i}\t{dst}\t0102A8C0\t0003\t0\t0\t{metric}\t{mask}\t0\t0\t0\n"
        for i, dst, metric, mask in rows
    )


LO = Interface("lo", True, ("127.0.0.1",), loopback=True)
DOCKER = Interface("docker0", True, ("172.17.0.1",))
ETH = Interface("eth0", True, ("192.168.1.20",))
WLAN = Interface("wlan0", True, ("10.0.0.5",))


def test_the_default_routes_interface_wins_over_alphabetical_docker0() -> None:
    r = route(("wlan0", "00000000", 0, "00000000"), ("eth0", "0001A8C0", 0, "00FFFFFF"))
    c = choose_interface(r, [LO, DOCKER, ETH, WLAN])
    assert (c.name, c.address, c.why) == ("wlan0", "10.0.0.5", "the default route's")


def test_lowest_metric_default_route_first() -> None:
    r = route(("wlan0", "00000000", 600, "00000000"), ("eth0", "00000000", 100, "00000000"))
    assert default_route_interfaces(r) == ["eth0", "wlan0"]
    assert choose_interface(r, [DOCKER, ETH, WLAN]).name == "eth0"


def test_without_a_default_route_container_bridges_are_skipped() -> None:
    c = choose_interface(HEAD, [LO, DOCKER, Interface("br-1a2b", True, ("172.18.0.1",)), ETH])
    assert c.name == "eth0"
    assert "first one up" in c.why


def test_a_default_route_through_a_container_bridge_is_not_taken() -> None:
    r = route(("docker0", "00000000", 0, "00000000"))
    assert choose_interface(r, [DOCKER, WLAN]).name == "wlan0"


@pytest.mark.parametrize(
    "name", ["docker0", "br-0c1d", "virbr0", "cni0", "veth12ab", "lxcbr0", "podman0"]
)
def test_only_container_interfaces_is_a_clear_error(name: str) -> None:
    down = Interface("eth0", False, ("192.168.1.20",))
    with pytest.raises(ConfigError, match=f"never picked: {name}.*set 'address'"):
        choose_interface(HEAD, [LO, down, Interface(name, True, ("172.17.0.1",))])


def test_interfaces_without_ipv4_or_down_are_skipped() -> None:
    r = route(("eth0", "00000000", 0, "00000000"))
    c = choose_interface(
        r, [Interface("eth0", True, ()), Interface("eth1", False, ("1.2.3.4",)), WLAN]
    )
    assert c.name == "wlan0"
