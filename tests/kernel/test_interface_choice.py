"""The agent's and doctor's interface choice in a real network namespace that has a docker0."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pymosix.testbed.kernel import ip

pytestmark = pytest.mark.kernel

CHOOSE = (
    "from pymosix.agent import resolve_address; from pymosix.config import NodeConfig; "
    "from pymosix.netif import auto_interface_name; "
    "print(*resolve_address(NodeConfig()), auto_interface_name())"
)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"pmx-if{secrets.token_hex(3)}"
    ip("netns", "add", name)
    try:
        yield name
    finally:
        ip("netns", "delete", name, check=False)


def choose(ns: str) -> list[str]:
    r = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", CHOOSE],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def add(ns: str, link: str, addr: str) -> None:
    ip("-n", ns, "addr", "add", addr, "dev", link)
    ip("-n", ns, "link", "set", link, "up")


def test_docker0_is_not_picked_and_agent_and_doctor_agree(netns: str) -> None:
    # A bridge named docker0, as Docker makes it (no dummy links on this kernel: veths instead).
    ip("-n", netns, "link", "add", "docker0", "type", "bridge")
    add(netns, "docker0", "172.17.0.1/16")
    ip("-n", netns, "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p")
    ip("-n", netns, "link", "set", "lan0p", "up")
    add(netns, "lan0", "10.77.0.2/24")
    # No default route: docker0 sorts first but is a container bridge.
    assert choose(netns) == ["10.77.0.2", "lan0", "lan0"]
    # A default route through a third interface: that one, by agent and doctor alike.
    ip("-n", netns, "link", "add", "wan0", "type", "veth", "peer", "name", "wan0p")
    ip("-n", netns, "link", "set", "wan0p", "up")
    add(netns, "wan0", "10.88.0.2/24")
    ip("-n", netns, "route", "add", "default", "via", "10.88.0.1", "dev", "wan0")
    assert choose(netns) == ["10.88.0.2", "wan0", "wan0"]
