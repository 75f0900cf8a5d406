"""The load vector table, the wire form of its entries, and the sampler on a fake /proc."""

from __future__ import annotations

import random

import pytest

from pymosix.errors import DecodeError
from pymosix.load.gossip import LoadEntry, LoadTable, choose_peers


def entry(node_id: int, load: float, at: float) -> LoadEntry:
    return LoadEntry(node_id, load, 0.5, 10000, 1, 100, 50, 0, 0, False, False, False, at)


def test_freshest_entry_wins_and_own_entry_is_ours() -> None:
    t = LoadTable(self_id=1, max_age_s=5.0)
    t.set_own(entry(1, 0.0, 10.0))
    known = {1, 2, 3}
    assert t.update(entry(2, 1.0, 9.0), known)
    assert not t.update(entry(2, 5.0, 8.0), known)  # older news
    assert t.update(entry(2, 2.0, 9.5), known)
    assert not t.update(entry(1, 9.0, 11.0), known)  # nobody else speaks for us
    assert not t.update(entry(9, 1.0, 11.0), known)  # not in the map
    assert t.entries[2].load == 2.0
    assert t.expire(now=14.6) == [2]
    assert list(t.entries) == [1]


def test_wire_round_trip_keeps_age() -> None:
    e = entry(7, 1.25, at=100.0)
    wire = e.to_wire(now=100.4)
    assert wire[-1] == 400
    assert e.to_row(now=100.4)["age_ms"] == 400
    back = LoadEntry.from_wire(wire, now=200.0)
    assert back.measured_at == pytest.approx(199.6)
    assert back.load == 1.25


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("x", id="not-a-map"),
        pytest.param({"node_id": 1}, id="missing"),
        pytest.param([1, 1.0, 0.5, 10000, 0, 100, 50, 0, 0, 0, 0], id="no-cpus"),
        pytest.param([70000, 1.0, 0.5, 10000, 1, 100, 50, 0, 0, 0, 0], id="bad-id"),
        pytest.param([1, "high", 0.5, 10000, 1, 100, 50, 0, 0, 0, 0], id="bad-load"),
        pytest.param([1, 1.0], id="short"),
    ],
)
def test_bad_entries_are_decode_errors(bad: object) -> None:
    with pytest.raises(DecodeError):
        LoadEntry.from_wire(bad, now=0.0)


def test_report_relays_least_loaded_first_and_is_bounded() -> None:
    t = LoadTable(self_id=1, max_age_s=5.0)
    t.set_own(entry(1, 3.0, 0.0))
    for n in range(2, 30):
        t.update(entry(n, float(n), 0.0), set(range(1, 30)))
    report = t.report(now=0.0, rng=random.Random(1), k=6)
    assert report[0][0] == 1
    assert len(report) == 7
    assert [r[0] for r in report[1:4]] == [2, 3, 4]


def test_a_full_report_fits_one_datagram() -> None:
    import msgpack

    from pymosix.wire.envelope import MAX_PAYLOAD

    t = LoadTable(self_id=1, max_age_s=5.0)
    big = LoadEntry(1, 123.456, 0.999, 99999, 256, 2**40, 2**40, 999, 999, True, True, True, 0.0)
    t.set_own(big)
    for n in range(2, 60):
        t.update(
            LoadEntry(n, 123.456, 0.999, 99999, 256, 2**40, 2**40, 999, 999, True, True, True, 0.0),
            set(range(70)),
        )
    report = t.report(now=3000.0, rng=random.Random(1))
    assert len(msgpack.packb({"e": report})) <= MAX_PAYLOAD


def test_choose_peers_is_a_random_subset() -> None:
    rng = random.Random(3)
    picks = choose_peers(list(range(10)), 3, rng)
    assert len(set(picks)) == 3
    assert choose_peers([5], 3, rng) == [5]
    seen = {p for _ in range(200) for p in choose_peers(list(range(10)), 3, rng)}
    assert seen == set(range(10))
