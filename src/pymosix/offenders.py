"""Who sends datagrams this node refuses, and why: so that a split cluster is never silent.

A node with another cluster key, or with a clock too far off, is left out of the cluster; that is
right, but nobody should have to guess it from a counter. The agent records every such datagram
here (pure: time passed in); this answers with a WARNING to log when one is due (at most one per
address and cause per `warn_every_s`, and at most `burst` in all per `warn_every_s`, so that
forged source addresses cannot flood the log) and with the short lines `showmap` and
`mosctl status` print.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

#: Causes of refusal.
AUTH = "auth"
CLOCK = "clock"


@dataclass
class Offence:
    """Datagrams of one cause from one address."""

    address: str
    cause: str
    count: int
    first_seen: float
    last_seen: float
    #: CLOCK: how far the sender's stamp was ahead of this node's clock (negative: behind).
    offset_ms: int = 0
    #: CLOCK: the sender's node id (its datagram was authentic); AUTH: unknown.
    node_id: int | None = None
    warned_at: float | None = None

    def line(self, max_skew_ms: int) -> str:
        """One line naming the sender, the likely cause and the fix."""
        if self.cause == CLOCK:
            way = "ahead" if self.offset_ms > 0 else "behind"
            return (
                f"{self.address}: clock {abs(self.offset_ms) / 1000:.0f} s {way}: is NTP running? "
                f"({self.count} datagram(s) refused, more than {max_skew_ms / 1000:g} s off; "
                "'timedatectl status' on both nodes)"
            )
        return (
            f"{self.address}: fails authentication: a different cluster key? "
            f"({self.count} refused; copy this node's cluster key to it)"
        )

    def to_json(self, now: float, max_skew_ms: int) -> dict[str, object]:
        return {
            "address": self.address,
            "cause": self.cause,
            "count": self.count,
            "last_seen_s_ago": round(now - self.last_seen, 1),
            "offset_ms": self.offset_ms,
            "node_id": self.node_id,
            "message": self.line(max_skew_ms),
        }


class OffenderLog:
    """Refused datagrams by (address, cause), bounded, with rate-limited warnings."""

    def __init__(
        self,
        max_skew_ms: int = 30_000,
        warn_every_s: float = 60.0,
        burst: int = 10,
        max_entries: int = 64,
        forget_after_s: float = 600.0,
    ) -> None:
        self.max_skew_ms = max_skew_ms
        self.warn_every_s = warn_every_s
        self.burst = burst
        self.max_entries = max_entries
        self.forget_after_s = forget_after_s
        self._entries: OrderedDict[tuple[str, str], Offence] = OrderedDict()
        self._recent_warnings: list[float] = []
        #: Warnings not given because the overall budget was spent.
        self.suppressed = 0

    def record(
        self, address: str, cause: str, now: float, offset_ms: int = 0, node_id: int | None = None
    ) -> str | None:
        """Note one refused datagram; the warning to log now, if one is due."""
        key = (address, cause)
        entry = self._entries.get(key)
        if entry is None:
            entry = Offence(address, cause, 0, now, now)
            self._entries[key] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        entry.count += 1
        entry.last_seen = now
        if cause == CLOCK:
            entry.offset_ms, entry.node_id = offset_ms, node_id
        if entry.warned_at is not None and now - entry.warned_at < self.warn_every_s:
            return None
        self._recent_warnings = [t for t in self._recent_warnings if now - t < self.warn_every_s]
        if len(self._recent_warnings) >= self.burst:
            self.suppressed += 1
            return None
        self._recent_warnings.append(now)
        entry.warned_at = now
        return entry.line(self.max_skew_ms)

    def active(self, now: float) -> list[Offence]:
        """Offences seen within `forget_after_s`, the most recent last."""
        for key in [k for k, e in self._entries.items() if now - e.last_seen > self.forget_after_s]:
            del self._entries[key]
        return list(self._entries.values())

    def to_json(self, now: float) -> list[dict[str, object]]:
        return [e.to_json(now, self.max_skew_ms) for e in self.active(now)]
