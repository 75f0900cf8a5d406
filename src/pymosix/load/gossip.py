"""The load vector: what this node knows of every node's load, and whom to tell. Pure code.

As in openMosix, each interval a node sends its own load, plus a few entries it heard, to a few
peers chosen at random; it keeps the freshest entry it has for each node with its age. News of
lightly loaded nodes is relayed first, since that is what loaded nodes need to hear.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from typing import Any

from pymosix.errors import DecodeError

#: Entries relayed per report besides the sender's own: 17 entries of about 60 bytes keep a
#: report inside one datagram, and let every node of a few dozen hear of every other in seconds.
RELAY_PER_REPORT = 16
WIRE_FIELDS = 11


@dataclass(frozen=True, slots=True)
class LoadEntry:
    """One node's load vector entry; `measured_at` is in the holder's monotonic seconds."""

    node_id: int
    load: float
    util: float
    speed: int
    ncpus: int
    mem_total: int
    mem_free: int
    local_jobs: int
    guest_jobs: int
    stay: bool
    lstay: bool
    block: bool
    measured_at: float

    def to_row(self, now: float) -> dict[str, Any]:
        """The entry as the control socket shows it (mosmon, mosctl): named fields, its age."""
        d = asdict(self)
        del d["measured_at"]
        d["age_ms"] = max(0, int((now - self.measured_at) * 1000))
        d["load"] = round(self.load, 3)
        d["util"] = round(self.util, 3)
        return d

    def to_wire(self, now: float) -> list[Any]:
        """The entry in a load report: positional, so that a datagram carries many of them."""
        flags = int(self.stay) | int(self.lstay) << 1 | int(self.block) << 2
        return [
            self.node_id,
            round(self.load, 3),
            round(self.util, 3),
            self.speed,
            self.ncpus,
            self.mem_total,
            self.mem_free,
            self.local_jobs,
            self.guest_jobs,
            flags,
            max(0, int((now - self.measured_at) * 1000)),
        ]

    @classmethod
    def from_wire(cls, d: Any, now: float) -> LoadEntry:
        if not isinstance(d, list) or len(d) != WIRE_FIELDS:
            raise DecodeError(f"load entry is not a list of {WIRE_FIELDS} fields")
        try:
            node_id, load, util, speed, ncpus, mem_total, mem_free, local, guest, flags, age = d
            age = int(age)
            flags = int(flags)
            entry = cls(
                node_id=int(node_id),
                load=float(load),
                util=float(util),
                speed=int(speed),
                ncpus=int(ncpus),
                mem_total=int(mem_total),
                mem_free=int(mem_free),
                local_jobs=int(local),
                guest_jobs=int(guest),
                stay=bool(flags & 1),
                lstay=bool(flags & 2),
                block=bool(flags & 4),
                measured_at=now - age / 1000,
            )
        except (TypeError, ValueError, OverflowError):
            raise DecodeError("load entry has bad fields") from None
        if not (
            0 < entry.node_id <= 0xFFFF
            and 0 <= age <= 3_600_000
            and entry.ncpus > 0
            and entry.speed > 0
            and 0 <= entry.load < 1e6
        ):
            raise DecodeError("load entry out of range")
        return entry


class LoadTable:
    """The freshest entry known for each node; bounded by the map (entries of unknown nodes are dropped)."""

    def __init__(self, self_id: int, max_age_s: float) -> None:
        self.self_id = self_id
        self.max_age_s = max_age_s
        self.entries: dict[int, LoadEntry] = {}

    def update(self, entry: LoadEntry, known_nodes: set[int]) -> bool:
        """Keep the entry if it is fresher than ours; never overwrite our own from outside."""
        if entry.node_id == self.self_id and self.self_id in self.entries:
            return False
        if entry.node_id not in known_nodes:
            return False
        held = self.entries.get(entry.node_id)
        if held is not None and held.measured_at >= entry.measured_at:
            return False
        self.entries[entry.node_id] = entry
        return True

    def set_own(self, entry: LoadEntry) -> None:
        self.entries[self.self_id] = entry

    def forget(self, node_id: int) -> None:
        self.entries.pop(node_id, None)

    def expire(self, now: float) -> list[int]:
        old = [
            n
            for n, e in self.entries.items()
            if n != self.self_id and now - e.measured_at > self.max_age_s
        ]
        for n in old:
            del self.entries[n]
        return old

    def adjust(self, node_id: int, load_delta: float) -> None:
        """Shift a node's load at once (a job left or arrived) until fresh news comes."""
        e = self.entries.get(node_id)
        if e is not None:
            self.entries[node_id] = replace(e, load=max(0.0, e.load + load_delta))

    def report(self, now: float, rng: random.Random, k: int = RELAY_PER_REPORT) -> list[list[Any]]:
        """Our own entry first, then up to k others: the least loaded half, the rest at random."""
        own = self.entries.get(self.self_id)
        others = [e for e in self.entries.values() if e.node_id != self.self_id]
        others.sort(key=lambda e: e.load)
        picked = others[: k // 2]
        rest = others[k // 2 :]
        picked += rng.sample(rest, min(len(rest), k - len(picked)))
        return [e.to_wire(now) for e in ([own] if own else []) + picked]


def choose_peers(peers: list[int], fanout: int, rng: random.Random) -> list[int]:
    """A few peers at random, as openMosix sent its load to a random subset each interval."""
    return rng.sample(peers, min(fanout, len(peers)))
