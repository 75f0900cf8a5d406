"""A host's record of the job's output it sent home and mosrun has not yet confirmed.

Positions are offsets in the job's stdout and stderr streams as mosrun receives them (home's
`checkpoint.Cursor`): every OUT frame says where its first byte falls (`at`). mosrun counts the
bytes it received in whole frames and, every `stdio.ACK_BYTES`, says so; home passes that on
(`Frame.OUT_ACK`) and the host forgets what mosrun has. When home's agent dies, what it had
received and not yet written to mosrun dies with it; its next agent learns mosrun's counts from
mosrun's `reattach` and hands them to the host, which sends again what lies beyond them
(docs/reliability.md). Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

#: The job's output streams (fd numbers as the job sees them), in the order of wire lists.
FDS = (1, 2)


def positions(wire: object) -> dict[int, int] | None:
    """`[stdout, stderr]` offsets from the wire (COMMITTED's out_at, an ack, a reattach); None if
    malformed or absent."""
    if not isinstance(wire, (list, tuple)) or len(wire) != len(FDS):
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in wire):
        return None
    return dict(zip(FDS, wire, strict=True))


def to_wire(pos: dict[int, int]) -> list[int]:
    return [int(pos.get(fd, 0)) for fd in FDS]


@dataclass
class OutLog:
    """Per fd: where the job's next byte falls (`next`), and the frames sent home that mosrun
    has not confirmed, oldest first (unless not `keep`)."""

    next: dict[int, int] = field(default_factory=lambda: dict.fromkeys(FDS, 0))
    keep: bool = True
    unconfirmed: deque[tuple[int, int, bytes]] = field(default_factory=deque)
    #: Bytes held in `unconfirmed`; per fd, the position after the last byte sent.
    held: int = 0
    sent_to: dict[int, int] = field(default_factory=lambda: dict.fromkeys(FDS, 0))

    def start_at(self, pos: dict[int, int], keep: bool) -> None:
        """Home says where the stream stands (a commit, a rejoin); nothing sent before counts."""
        self.next = {fd: pos.get(fd, 0) for fd in FDS}
        self.sent_to = dict(self.next)
        self.keep = keep
        self.unconfirmed.clear()
        self.held = 0

    def forget(self) -> None:
        """Keep nothing from now on (a mosrun that confirms nothing: it is older than this)."""
        self.keep = False
        self.unconfirmed.clear()
        self.held = 0

    def adopt(
        self, frames: list[tuple[int, int, bytes]], got: dict[int, int]
    ) -> tuple[list[tuple[int, int, bytes]], int]:
        """A job taken over from a stopped agent, with the frames it kept (spool.py) and where
        mosrun's stream stands: what to send first, as resend_from says; the job's next byte
        follows the last kept."""
        ends = {fd: got.get(fd, 0) for fd in FDS}
        for fd, at, data in frames:
            ends[fd] = max(ends.get(fd, 0), at + len(data))
        self.next, self.sent_to = dict(ends), dict(ends)
        self.unconfirmed = deque(frames)
        return self.resend_from(got)

    def stamp(self, fd: int, size: int) -> int:
        """The position of `size` bytes the job wrote on `fd` next."""
        at = self.next.get(fd, 0)
        self.next[fd] = at + size
        return at

    def sent(self, fd: int, at: int, data: bytes) -> None:
        """A frame went home: kept until mosrun confirms it."""
        self.sent_to[fd] = max(self.sent_to.get(fd, 0), at + len(data))
        if self.keep and data:
            self.unconfirmed.append((fd, at, data))
            self.held += len(data)

    def confirmed(self, got: dict[int, int]) -> None:
        """mosrun has every byte before `got[fd]`."""
        q = self.unconfirmed
        while q and q[0][1] + len(q[0][2]) <= got.get(q[0][0], 0):
            self.held -= len(q.popleft()[2])
        # A frame of one fd confirmed behind one of the other that is not: dropped in turn.
        if any(at + len(d) <= got.get(fd, 0) for fd, at, d in q):
            kept = [(fd, at, d) for fd, at, d in q if at + len(d) > got.get(fd, 0)]
            self.unconfirmed = deque(kept)
            self.held = sum(len(d) for _, _, d in kept)

    def resend_from(self, got: dict[int, int]) -> tuple[list[tuple[int, int, bytes]], int]:
        """After home's agent restarted: the frames to send again, trimmed to what mosrun lacks,
        in their order, and how many bytes mosrun lacks that are not kept (0 unless home gave no
        positions to keep by). What is returned is kept again once it is sent."""
        out: list[tuple[int, int, bytes]] = []
        first: dict[int, int] = {}
        for fd, at, data in self.unconfirmed:
            first.setdefault(fd, at)
            skip = got.get(fd, 0) - at
            if skip < len(data):
                out.append((fd, at + max(skip, 0), data[max(skip, 0) :]))
        # Sent, not kept, not received: lost (what is still queued is not sent yet).
        missing = sum(max(0, first.get(fd, self.sent_to.get(fd, 0)) - got.get(fd, 0)) for fd in FDS)
        self.unconfirmed.clear()
        self.held = 0
        return out, missing
