"""The signed datagram: round trips, rejection of anything forged, garbled or replayed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pymosix.errors import AuthError, DecodeError
from pymosix.wire.envelope import MAX_DATAGRAM, Envelope, Kind, ReplayGuard, seal, unseal
from pymosix.wire.messages import Hello

KEY = bytes(range(32))
HELLO = Hello("192.168.100.11", 7078, 7079, 500)


def env(
    seq: int = 1, time_ms: int = 1_000_000, payload: dict[str, object] | None = None
) -> Envelope:
    return Envelope(
        Kind.HELLO, 0x640B, 42, seq, time_ms, payload if payload is not None else HELLO.to_payload()
    )


def test_round_trip() -> None:
    e = env()
    assert unseal(KEY, seal(KEY, e)) == e
    assert Hello.from_payload(unseal(KEY, seal(KEY, e)).payload) == HELLO


def test_other_key_is_an_auth_error() -> None:
    with pytest.raises(AuthError, match="another cluster key"):
        unseal(bytes(32), seal(KEY, env()))


@given(st.integers(0, 200), st.integers(0, 7))
def test_any_flipped_bit_is_rejected(byte: int, bit: int) -> None:
    data = bytearray(seal(KEY, env()))
    byte %= len(data)
    data[byte] ^= 1 << bit
    with pytest.raises((AuthError, DecodeError)):
        unseal(KEY, bytes(data))


@given(st.binary(max_size=2000))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    with pytest.raises((AuthError, DecodeError)):
        unseal(KEY, data)


@given(st.integers(0, 100))
def test_truncated_is_rejected(cut: int) -> None:
    data = seal(KEY, env())
    with pytest.raises((AuthError, DecodeError)):
        unseal(KEY, data[: len(data) - 1 - cut])


def test_oversized_is_rejected_before_anything() -> None:
    with pytest.raises(DecodeError, match="over"):
        unseal(KEY, b"PMX1" + bytes(MAX_DATAGRAM))
    with pytest.raises(ValueError, match="exceeds"):
        seal(KEY, env(payload={"x": "y" * 2000}))


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({}, id="empty"),
        pytest.param({"a": "not-an-ip", "g": 1, "m": 2, "h": 500}, id="bad-address"),
        pytest.param({"a": "10.0.0.1", "g": 0, "m": 2, "h": 500}, id="port-zero"),
        pytest.param({"a": "10.0.0.1", "g": True, "m": 2, "h": 500}, id="bool-port"),
        pytest.param({"a": "10.0.0.1", "g": 1, "m": 2, "h": -1}, id="bad-interval"),
    ],
)
def test_hello_fields_are_validated(payload: dict[str, object]) -> None:
    with pytest.raises(DecodeError):
        Hello.from_payload(payload)


def test_replay_guard_window() -> None:
    g = ReplayGuard(window=8)
    now = 1_000_000
    g.check(env(seq=5), now)
    with pytest.raises(AuthError, match="seen before"):
        g.check(env(seq=5), now)
    g.check(env(seq=3), now)  # late but within the window: once
    with pytest.raises(AuthError, match="seen before"):
        g.check(env(seq=3), now)
    g.check(env(seq=20), now)
    with pytest.raises(AuthError, match="too old"):
        g.check(env(seq=6), now)
    g.check(env(seq=19), now)
    with pytest.raises(AuthError, match="timestamp"):
        g.check(env(seq=21, time_ms=now - 60_000), now)


def test_replay_guard_is_bounded() -> None:
    g = ReplayGuard(max_streams=3)
    for sender in range(10):
        g.check(Envelope(Kind.HELLO, sender, 1, 1, 0, {}), 0)
    assert len(g._streams) == 3
