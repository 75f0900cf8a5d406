"""Refused datagrams: one warning per address and cause per interval, bounded, with the cause."""

from __future__ import annotations

from pymosix.offenders import AUTH, CLOCK, OffenderLog


def test_first_refusal_warns_then_rate_limited_per_address() -> None:
    log = OffenderLog(warn_every_s=60.0)
    w = log.record("192.168.100.13", AUTH, now=0.0)
    assert w is not None
    assert w.startswith("192.168.100.13: ")
    assert "a different cluster key?" in w
    assert all(log.record("192.168.100.13", AUTH, now=t) is None for t in (1.0, 30.0, 59.9))
    assert log.record("192.168.100.14", AUTH, now=2.0) is not None  # another address
    again = log.record("192.168.100.13", AUTH, now=60.0)
    assert again is not None
    assert "(5 refused" in again


def test_clock_skew_names_the_offset_and_ntp() -> None:
    log = OffenderLog(max_skew_ms=30_000)
    w = log.record("192.168.100.13", CLOCK, now=0.0, offset_ms=42_300, node_id=0x640D)
    assert w is not None
    assert "clock 42 s ahead: is NTP running?" in w
    w = OffenderLog().record("10.0.0.1", CLOCK, now=0.0, offset_ms=-90_000)
    assert w is not None
    assert "clock 90 s behind" in w
    [row] = log.to_json(now=5.0)
    assert row["node_id"] == 0x640D
    assert row["last_seen_s_ago"] == 5.0


def test_forged_addresses_cannot_flood_the_log_or_the_table() -> None:
    log = OffenderLog(burst=10, max_entries=64)
    warnings = [log.record(f"10.0.{i // 256}.{i % 256}", AUTH, now=i / 1000) for i in range(5000)]
    assert sum(w is not None for w in warnings) == 10
    assert log.suppressed == 4990
    assert len(log.active(now=5.0)) == 64
    assert log.record("10.9.9.9", AUTH, now=61.0) is not None  # the budget refills


def test_old_offences_are_forgotten() -> None:
    log = OffenderLog(forget_after_s=600.0)
    log.record("10.0.0.1", AUTH, now=0.0)
    assert len(log.active(now=599.0)) == 1
    assert log.active(now=601.0) == []
