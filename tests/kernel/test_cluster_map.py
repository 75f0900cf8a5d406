"""The cluster map on a real test bed: discovery over multicast between network namespaces,
authentication, replay protection, death and leave detection, and showmap's exact layout."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymosix.keys import read_key
from pymosix.testbed import TestBed
from pymosix.wire.envelope import Envelope, Kind, seal
from tests.kernel.conftest import wait_until

pytestmark = pytest.mark.kernel

MakeBed = Callable[..., TestBed]


def map_ids(bed: TestBed, node: int) -> list[int]:
    return [n["node_id"] for n in bed.call(node, "map")["nodes"]]


def converged(bed: TestBed, nodes: list[int]) -> bool:
    want = {bed.node(i).node_id for i in nodes}
    return all(set(map_ids(bed, i)) == want for i in nodes)


def test_two_nodes_converge_and_showmap_is_the_seeds(make_bed: MakeBed) -> None:
    bed = make_bed(2)
    took = wait_until("both maps list both nodes", lambda: converged(bed, [1, 2]), 2.0)
    assert took < 2.0
    r = bed.exec(1, ["showmap"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        "My Node-Id: 0x640b\n"
        "\n"
        "Base Node-Id Address          Count\n"
        "------------ ---------------- -----\n"
        "0x640b       192.168.100.11   1\n"
        "0x640c       192.168.100.12   1\n"
    )
    r2 = bed.exec(2, ["showmap"])
    assert r2.stdout.splitlines()[0] == "My Node-Id: 0x640c"
    assert r2.stdout.splitlines()[4].startswith("0x640c ")
    data = json.loads(bed.exec(2, ["showmap", "--json"]).stdout)
    assert data["node_id"] == 0x640C
    assert [n["address"] for n in data["nodes"]] == ["192.168.100.12", "192.168.100.11"]
    log = bed.node(2).log.read_text()
    assert "pymosix configuration changed: This is pymosix #25612 (of 2 configured)" in log
    assert "pymosix #25611 is at IP address 192.168.100.11" in log


def test_five_nodes_converge_within_two_seconds(make_bed: MakeBed) -> None:
    bed = make_bed(5)
    wait_until("all five maps list all five nodes", lambda: converged(bed, [1, 2, 3, 4, 5]), 2.0)


def test_dead_node_leaves_within_five_seconds_and_comes_back(make_bed: MakeBed) -> None:
    bed = make_bed(3)
    wait_until("convergence", lambda: converged(bed, [1, 2, 3]), 2.0)
    bed.kill_agent(3)  # a crash: no leave is announced
    wait_until("node3 gone from node1 and node2", lambda: converged(bed, [1, 2]), 5.0)
    bed.start_agent(3)
    wait_until("node3 back everywhere", lambda: converged(bed, [1, 2, 3]), 2.0)


def test_clean_leave_is_seen_at_once(make_bed: MakeBed) -> None:
    bed = make_bed(2)
    wait_until("convergence", lambda: converged(bed, [1, 2]), 2.0)
    bed.stop_agent(2)
    # Well under the 3 s of silence that would drop it otherwise.
    wait_until("node2's leave", lambda: map_ids(bed, 1) == [bed.node(1).node_id], 1.0)


def test_node_with_another_key_is_never_listed(make_bed: MakeBed) -> None:
    bed = make_bed(3, agents=[1, 2])
    other_key = bed.node(3).dir + "/other.key"
    bed.extra_args = ["--key-file", other_key]
    bed.start_agent(3)
    bed.extra_args = []
    wait_until("node1 and node2 see each other", lambda: converged(bed, [1, 2]), 2.0)
    wait_until(
        "node1 counts node3's datagrams as rejected",
        lambda: bed.call(1, "status")["counters"]["rejected_auth"] >= 3,
        3.0,
    )
    for i in (1, 2):
        assert bed.node(3).node_id not in map_ids(bed, i)
    assert map_ids(bed, 3) == [bed.node(3).node_id]


# Runs inside a node: capture one datagram from the discovery group and send it back verbatim.
REPLAY = textwrap.dedent("""
    import socket, struct, sys
    group, port, me = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((group, port))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(me)))
    s.settimeout(5)
    while True:
        data, src = s.recvfrom(2048)
        if src[0] != me:
            break
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(me))
    for _ in range(3):
        s.sendto(data, (group, port))
    print(src[0])
""")


def test_replayed_datagram_is_rejected_and_counted(make_bed: MakeBed) -> None:
    bed = make_bed(3)
    wait_until("convergence", lambda: converged(bed, [1, 2, 3]), 2.0)
    before = bed.call(1, "status")["counters"]["rejected_replay"]
    r = bed.exec(3, ["python3", "-c", REPLAY, "239.255.77.77", "7077", "192.168.100.13"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in ("192.168.100.11", "192.168.100.12")
    wait_until(
        "node1 counts the replays",
        lambda: bed.call(1, "status")["counters"]["rejected_replay"] >= before + 2,
        2.0,
    )
    assert converged(bed, [1, 2, 3])


# Runs inside a node: send each hex-encoded datagram of stdin to the given ports of node1.
SPRAY = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(sys.argv[1]))
    n = 0
    for line in sys.stdin:
        data = bytes.fromhex(line.strip())
        for target in (("239.255.77.77", 7077), ("192.168.100.11", 7078)):
            s.sendto(data, target)
            n += 1
    print(n)
""")


@pytest.fixture
def bed_for_fuzz(make_bed: MakeBed) -> TestBed:
    bed = make_bed(2)
    wait_until("convergence", lambda: converged(bed, [1, 2]), 2.0)
    return bed


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    garbage=st.lists(st.binary(min_size=0, max_size=1500), min_size=1, max_size=40),
    signed=st.lists(
        st.tuples(
            st.integers(0, 255),
            st.dictionaries(
                st.text(max_size=3),
                st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=20), st.none()),
                max_size=4,
            ),
        ),
        max_size=10,
    ),
)
def test_malformed_datagrams_never_crash_the_agent(
    bed_for_fuzz: TestBed, garbage: list[bytes], signed: list[tuple[int, dict[str, object]]]
) -> None:
    bed = bed_for_fuzz
    key = read_key(bed.key_file)
    # Authentic but nonsensical: right key, fresh sequence numbers, wrong kinds and fields.
    forged = [
        seal(
            key,
            Envelope(kind, 0x640C, 7, 1000 + i, time.time_ns() // 1_000_000, payload),
        )
        for i, (kind, payload) in enumerate(signed)
        if kind not in (Kind.BYE,)
    ]
    lines = "\n".join(d.hex() for d in [*garbage, *forged]) + "\n"
    r = bed.exec(2, ["python3", "-c", SPRAY, "192.168.100.12"], input=lines)
    assert r.returncode == 0, r.stderr
    status = bed.call(1, "status")
    assert status["counters"]["rejected"] >= 1
    assert converged(bed, [1, 2])
