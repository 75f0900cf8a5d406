"""Moves that were refused, remembered so that a job that cannot move is left in peace.

A refusal is kept per job and target (the target lacks a file, the user, a CPU feature; it was
unreachable) or per job alone (the job itself cannot move: openMosix's cantmove). The balancer
does not try the same again before a back-off that doubles with every refusal, so a job is
never frozen over and over for the same reason. Pure: the time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: First back-off, and the most it grows to.
BASE_BACKOFF_S = 10.0
MAX_BACKOFF_S = 600.0
#: A target's refusal of an offer made on a load it no longer has (policy.accept_offer). What
#: was stale is fresh again within a load interval or two of gossip, so the first back-off is
#: that long, not BASE_BACKOFF_S: an owner's node whose guest two busy nodes refused at once kept
#: it 10 s longer (the 4-node owner-returns bench, docs/simulator.md).
STALE_OFFER = "offer made on stale load information"
STALE_BACKOFF_S = 2.0


@dataclass(slots=True)
class Refusal:
    """The latest refusal of one (job, target); target None: any target."""

    reason: str
    at: float
    count: int = 1

    def until(self, base_s: float = BASE_BACKOFF_S, max_s: float = MAX_BACKOFF_S) -> float:
        if STALE_OFFER in self.reason:
            base_s = min(base_s, STALE_BACKOFF_S)
        return self.at + min(max_s, base_s * 2.0 ** (self.count - 1))


@dataclass(slots=True)
class Refusals:
    """Refusals of the jobs on one node, by home PID."""

    base_s: float = BASE_BACKOFF_S
    max_s: float = MAX_BACKOFF_S
    _by_job: dict[int, dict[int | None, Refusal]] = field(default_factory=dict)

    def record(self, home_pid: int, target: int | None, reason: str, now: float) -> Refusal:
        """Note a refusal; the same one again doubles the back-off."""
        per_job = self._by_job.setdefault(home_pid, {})
        old = per_job.get(target)
        r = Refusal(reason, now, old.count + 1 if old is not None else 1)
        per_job[target] = r
        return r

    def _active(self, home_pid: int, now: float) -> dict[int | None, Refusal]:
        return {
            t: r
            for t, r in self._by_job.get(home_pid, {}).items()
            if now < r.until(self.base_s, self.max_s)
        }

    def stuck(self, home_pid: int, now: float) -> bool:
        """Whether the job itself cannot move now (no target will do)."""
        return None in self._active(home_pid, now)

    def refused_targets(self, home_pid: int, now: float) -> frozenset[int]:
        return frozenset(t for t in self._active(home_pid, now) if t is not None)

    def why(self, home_pid: int) -> str | None:
        """The latest reason the job could not move, if any is remembered."""
        per_job = self._by_job.get(home_pid)
        if not per_job:
            return None
        return max(per_job.values(), key=lambda r: r.at).reason

    def cleared(self, home_pid: int) -> None:
        """The job moved, or left this node: what was refused here no longer holds."""
        self._by_job.pop(home_pid, None)

    def keep_only(self, home_pids: set[int]) -> None:
        for pid in set(self._by_job) - home_pids:
            del self._by_job[pid]
