"""The signed datagram every node sends (discovery, leave, load), and the replay guard.

Layout (network byte order)::

    magic "PMX1" | kind u8 | sender u16 | epoch u64 | seq u64 | time_ms u64 | len u16 | payload | tag

`payload` is a msgpack map; `tag` is HMAC-SHA256 with the cluster key over everything before it.
The size is checked first, the tag second, and only then is the payload decoded: nothing an
outsider sends reaches the msgpack parser. `epoch` is random per agent start and `seq` counts up
within it, so (sender, epoch, seq) names a datagram once; the ReplayGuard rejects repeats.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

from pymosix.errors import AuthError, DecodeError

MAGIC = b"PMX1"
_HEADER = struct.Struct("!4sBHQQQH")
TAG_BYTES = 32
#: One datagram fits an Ethernet frame; larger ones are refused before anything else.
MAX_DATAGRAM = 1400
MAX_PAYLOAD = MAX_DATAGRAM - _HEADER.size - TAG_BYTES


class Kind(IntEnum):
    """Datagram kinds; a new component adds its own here."""

    HELLO = 1
    BYE = 2
    LOAD = 3


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: int
    sender: int
    epoch: int
    seq: int
    time_ms: int
    payload: dict[str, Any]


def seal(key: bytes, env: Envelope) -> bytes:
    """Encode and sign one datagram."""
    body: bytes = msgpack.packb(env.payload, use_bin_type=True)
    if len(body) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(body)} bytes exceeds {MAX_PAYLOAD}")
    head = _HEADER.pack(MAGIC, env.kind, env.sender, env.epoch, env.seq, env.time_ms, len(body))
    data = head + body
    return data + hmac.new(key, data, hashlib.sha256).digest()


def unseal(key: bytes | Sequence[bytes], data: bytes) -> Envelope:
    """Check and decode one datagram: DecodeError for garbage, AuthError for a bad tag.

    `key` may be several keys (a KeyRing's `all`, during a rotation): any one of them will do.
    """
    if len(data) > MAX_DATAGRAM:
        raise DecodeError(f"datagram of {len(data)} bytes is over {MAX_DATAGRAM}")
    if len(data) < _HEADER.size + TAG_BYTES:
        raise DecodeError(f"datagram of {len(data)} bytes is too short")
    if data[:4] != MAGIC:
        raise DecodeError("not a pymosix datagram (bad magic)")
    signed, tag = data[:-TAG_BYTES], data[-TAG_BYTES:]
    keys = (key,) if isinstance(key, bytes) else key
    if not any(
        hmac.compare_digest(tag, hmac.new(k, signed, hashlib.sha256).digest()) for k in keys
    ):
        raise AuthError("bad authentication tag (another cluster key, or tampered)")
    _, kind, sender, epoch, seq, time_ms, length = _HEADER.unpack_from(signed)
    body = signed[_HEADER.size :]
    if length != len(body):
        raise DecodeError(f"payload length {length} does not match {len(body)} bytes")
    try:
        payload = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise DecodeError(f"payload is not valid msgpack: {e}") from None
    if not isinstance(payload, dict):
        raise DecodeError("payload is not a map")
    return Envelope(kind, sender, epoch, seq, time_ms, payload)


class ReplayError(AuthError):
    """An authentic datagram seen before, or too old for the window: a replay."""


class SkewError(AuthError):
    """An authentic datagram stamped too far from this node's clock: `offset_ms` ahead (>0)."""

    def __init__(self, offset_ms: int, sender: int) -> None:
        self.offset_ms = offset_ms
        self.sender = sender
        way = "ahead" if offset_ms > 0 else "behind"
        super().__init__(f"timestamp {abs(offset_ms)} ms {way} (replay or clock skew)")


class ReplayGuard:
    """Rejects a datagram seen before, by (sender, epoch, seq) with a sliding window.

    Out-of-order arrival within `window` sequence numbers is accepted once; older ones are not.
    A datagram whose timestamp is further than `max_skew_ms` from now is rejected too, so that
    a capture of an epoch the guard has forgotten cannot be played back later. Bounded memory.
    Nothing ever clears a stream on purpose (a BYE does not): a window that could be reset is a
    window a replay can reopen.
    """

    def __init__(
        self, window: int = 64, max_skew_ms: int = 30_000, max_streams: int = 4096
    ) -> None:
        self.window = window
        self.max_skew_ms = max_skew_ms
        self.max_streams = max_streams
        #: (sender, epoch) -> (highest seq, bitmask of seen seqs below it)
        self._streams: OrderedDict[tuple[int, int], tuple[int, int]] = OrderedDict()

    def check(self, env: Envelope, now_ms: int) -> None:
        """Accept (and remember) the datagram, or raise AuthError naming why not."""
        if abs(env.time_ms - now_ms) > self.max_skew_ms:
            raise SkewError(env.time_ms - now_ms, env.sender)
        key = (env.sender, env.epoch)
        state = self._streams.get(key)
        if state is None:
            self._streams[key] = (env.seq, 1)
            if len(self._streams) > self.max_streams:
                self._streams.popitem(last=False)
            return
        top, mask = state
        if env.seq > top:
            shift = env.seq - top
            mask = ((mask << shift) | 1) & ((1 << self.window) - 1) if shift < self.window else 1
            self._streams[key] = (env.seq, mask)
        else:
            offset = top - env.seq
            if offset >= self.window:
                raise ReplayError(f"sequence {env.seq} is too old (replay)")
            if mask & (1 << offset):
                raise ReplayError(f"sequence {env.seq} seen before (replay)")
            self._streams[key] = (top, mask | (1 << offset))
        self._streams.move_to_end(key)
