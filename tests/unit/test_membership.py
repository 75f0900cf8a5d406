"""The map as a state machine: joins, leaves, deaths, static entries and conflicts."""

from __future__ import annotations

from pymosix.ids import NodeId
from pymosix.membership import ClusterMap, change_message

ME, B, C = NodeId(0x640B), NodeId(0x640C), NodeId(0x640D)


def fresh() -> ClusterMap:
    return ClusterMap(ME, "192.168.100.11", dead_after_s=3.0, now=0.0)


def ids(m: ClusterMap) -> list[int]:
    return [n.node_id for n in m.nodes()]


def test_join_order_with_self_first() -> None:
    m = fresh()
    [ch] = m.heard(C, "192.168.100.13", 1, now=1.0)
    assert ch.joined == (C,)
    m.heard(B, "192.168.100.12", 1, now=2.0)
    assert ids(m) == [ME, C, B]
    assert m.heard(B, "192.168.100.12", 1, now=2.5) == []  # no change, just fresher


def test_death_after_silence_and_leave_at_once() -> None:
    m = fresh()
    m.heard(B, "192.168.100.12", 1, now=0.0)
    m.heard(C, "192.168.100.13", 1, now=0.0)
    assert m.tick(2.9) == []
    m.heard(C, "192.168.100.13", 1, now=2.9)
    [ch] = m.tick(3.1)
    assert ch.left == (B,)
    [ch] = m.left(C, "192.168.100.13", 1, now=3.1)
    assert ch.left == (C,)
    assert ids(m) == [ME]


def test_leave_from_wrong_address_is_ignored() -> None:
    m = fresh()
    m.heard(B, "192.168.100.12", 1, now=0.0)
    assert m.left(B, "10.9.9.9", 1, now=0.5) == []
    assert ids(m) == [ME, B]


def test_static_entries_never_expire() -> None:
    m = fresh()
    m.add_static([(ME, "192.168.100.11"), (B, "192.168.100.12")], now=0.0)
    assert m.tick(1000.0) == []
    assert ids(m) == [ME, B]


def test_conflict_is_recorded_not_shadowed() -> None:
    m = fresh()
    m.heard(B, "192.168.100.12", 1, now=0.0)
    assert m.heard(B, "10.1.100.12", 2, now=1.0) == []
    assert m.get(B) is not None
    assert m.get(B).address == "192.168.100.12"  # type: ignore[union-attr]
    [conflict] = m.conflicts.values()
    assert (conflict.address, conflict.claimed_by) == ("192.168.100.12", "10.1.100.12")


def test_change_message_in_the_seeds_words() -> None:
    m = ClusterMap(NodeId(25655), "192.168.100.55", 3.0)
    [ch] = m.heard(NodeId(25611), "192.168.100.11", 1, now=1.0)
    assert change_message(NodeId(25655), ch.nodes) == [
        "pymosix configuration changed: This is pymosix #25655 (of 2 configured)",
        "pymosix #25655 is at IP address 192.168.100.55",
        "pymosix #25611 is at IP address 192.168.100.11",
    ]
