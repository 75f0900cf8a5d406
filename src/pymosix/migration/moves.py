"""What the engine remembers of each move: a bounded list of recent ones (the web monitor shows
it) and a hook per move (the metrics count them). Pure data; the engine fills it in."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from pymosix.errors import JobCannotMove, MigrationError

#: Recent moves kept per node (in and out).
RECENT_MOVES = 50
#: Why a move was made: the balancer's decision, a user's or tool's request, or mosctl expel.
REASONS = ("balance", "request", "expel")
#: How a move ended: ok; the job cannot move (cantmove); the target said no; anything else.
RESULTS = ("ok", "cantmove", "refused", "failed")


#: The job holds something that cannot travel (a TCP connection, a device...).
CannotMove = JobCannotMove


class Refused(MigrationError):
    """The target node said no (it blocks guests, or the offer was made on stale load)."""


class MoveStats(NamedTuple):
    """A finished move as the source saw it."""

    pid: int  # the job's pid on the target
    freeze_s: float  # frozen from the dump's start until it ran on the target
    image_bytes: int  # pages and the other image files, as the target received them


@dataclass(frozen=True, slots=True)
class MoveRecord:
    """One move, in or out of this node, finished or failed."""

    at: float  # wall clock, when it ended
    direction: str  # "out" or "in"
    home_node: int
    home_pid: int
    uid: int
    source: int
    target: int
    reason: str
    result: str
    seconds: float  # the whole move, offer to restore
    freeze_s: float | None = None
    image_bytes: int | None = None
    error: str = ""

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


def result_of(error: BaseException | None) -> str:
    """The result label of a move that raised `error` (None: it worked)."""
    if error is None:
        return "ok"
    if isinstance(error, CannotMove):
        return "cantmove"
    if isinstance(error, Refused):
        return "refused"
    return "failed"


def reason_of(offer_load: float | None, reason: str | None) -> str:
    """An automatic move carries the load it was offered on; others say why they were made."""
    if reason in REASONS:
        return reason
    return "balance" if offer_load is not None else "request"
