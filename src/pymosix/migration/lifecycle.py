"""A job's lifecycle and its moves as pure state machines: states, events, transitions, deadlines.

No sockets, no asyncio, time passed in. Three parties take part in a move (docs/reliability.md):

- the **source** (the node the job runs on) offers, freezes, transfers, then waits for the
  target's RESTORED; lacking it, it asks the job's home whether the move committed;
- the **target** restores the job *stopped*, asks home to commit (ATTACH), and resumes the job
  only once home confirmed; refused or never confirmed, it kills its copy;
- the **home** is the arbiter: the first of ATTACH (commit) and ASK (from a source that heard
  nothing) for a move decides it for good; later ones only hear the decision.

- home also keeps the job's **checkpoints** (HOME_JOB, `Keeper`): the node running a guest sends
  one every `checkpoint_s`; when that node is lost, home restores the job from the last complete
  one (RECOVERING) instead of reporting it lost, and refuses every commit of a move from then on.

JobMeta, what travels with a job from node to node, lives here too: the home side, the host
side and the engine share it without importing one another.

So exactly one copy runs: the source resumes only a move home aborted, the target runs only a
move home committed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class S(StrEnum):
    """States of a job as the node holding it sees it, and of a move on each side."""

    STARTING = "starting"
    RUNNING = "running"
    OFFERING = "offering"
    FREEZING = "freezing"
    TRANSFERRING = "transferring"
    #: source: DONE sent, RESTORED awaited; target: criu restore under way.
    RESTORING = "restoring"
    #: source: asking home whether the move committed.
    DECIDING = "deciding"
    #: target: restored (stopped), home's commit awaited.
    ATTACHING = "attaching"
    RECEIVING = "receiving"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled back"
    #: target: its copy killed (or never made).
    DISCARDED = "discarded"
    #: the source could not learn the outcome: its copy goes (home is unreachable anyway).
    LOST = "lost"
    EXITED = "exited"
    #: home's view of a move nobody has decided yet.
    UNDECIDED = "undecided"
    #: home: a checkpoint of the job is arriving (the job runs on meanwhile).
    CHECKPOINTING = "checkpointing"
    #: home: the job's host is lost and the job is being restored from its last checkpoint.
    RECOVERING = "recovering"


class E(StrEnum):
    STARTED = "started"
    OFFER = "offer"
    REFUSED = "refused"
    READY = "ready"
    FROZEN = "frozen"
    FAILED = "failed"
    DONE_SENT = "done sent"
    IMAGE_IN = "image in"
    RESTORED = "restored"
    #: a deadline passed, or the connection broke.
    NO_ANSWER = "no answer"
    HOME_COMMITTED = "home committed"
    HOME_ABORTED = "home aborted"
    RESUMED = "resumed"
    EXIT = "exit"
    LINK_LOST = "link lost"
    ATTACH = "attach"
    ASK = "ask"
    #: home: a checkpoint's first frame (its stdout offsets) / its last; lost host, none held.
    CKPT_BEGIN = "checkpoint begins"
    CKPT_DONE = "checkpoint done"
    HOST_LOST = "host lost"
    #: home: the host is lost and a complete checkpoint is held: restore from it.
    RECOVER = "recover"


SOURCE: Mapping[tuple[S, E], S] = {
    (S.STARTING, E.STARTED): S.RUNNING,
    (S.RUNNING, E.OFFER): S.OFFERING,
    (S.RUNNING, E.EXIT): S.EXITED,
    (S.RUNNING, E.LINK_LOST): S.LOST,
    (S.OFFERING, E.REFUSED): S.RUNNING,
    (S.OFFERING, E.FAILED): S.RUNNING,
    (S.OFFERING, E.NO_ANSWER): S.RUNNING,
    (S.OFFERING, E.READY): S.FREEZING,
    (S.FREEZING, E.FROZEN): S.TRANSFERRING,
    (S.FREEZING, E.FAILED): S.ROLLED_BACK,
    (S.FREEZING, E.NO_ANSWER): S.ROLLED_BACK,
    (S.TRANSFERRING, E.FAILED): S.ROLLED_BACK,
    (S.TRANSFERRING, E.NO_ANSWER): S.ROLLED_BACK,
    # From here on the target may hold a copy: only home's word ends the move.
    (S.TRANSFERRING, E.DONE_SENT): S.RESTORING,
    (S.RESTORING, E.RESTORED): S.COMMITTED,
    (S.RESTORING, E.FAILED): S.DECIDING,
    (S.RESTORING, E.NO_ANSWER): S.DECIDING,
    (S.DECIDING, E.HOME_COMMITTED): S.COMMITTED,
    (S.DECIDING, E.HOME_ABORTED): S.ROLLED_BACK,
    (S.DECIDING, E.NO_ANSWER): S.LOST,
    (S.ROLLED_BACK, E.RESUMED): S.RUNNING,
}

TARGET: Mapping[tuple[S, E], S] = {
    (S.RECEIVING, E.IMAGE_IN): S.RESTORING,
    (S.RECEIVING, E.FAILED): S.DISCARDED,
    (S.RECEIVING, E.NO_ANSWER): S.DISCARDED,
    (S.RESTORING, E.RESTORED): S.ATTACHING,
    (S.RESTORING, E.FAILED): S.DISCARDED,
    (S.RESTORING, E.NO_ANSWER): S.DISCARDED,
    (S.ATTACHING, E.HOME_COMMITTED): S.RUNNING,
    (S.ATTACHING, E.HOME_ABORTED): S.DISCARDED,
    (S.ATTACHING, E.NO_ANSWER): S.DISCARDED,
    (S.RUNNING, E.EXIT): S.EXITED,
    (S.RUNNING, E.LINK_LOST): S.LOST,
}

HOME: Mapping[tuple[S, E], S] = {
    (S.UNDECIDED, E.ATTACH): S.COMMITTED,
    (S.UNDECIDED, E.ASK): S.ROLLED_BACK,
    (S.COMMITTED, E.ATTACH): S.COMMITTED,
    (S.COMMITTED, E.ASK): S.COMMITTED,
    (S.ROLLED_BACK, E.ATTACH): S.ROLLED_BACK,
    (S.ROLLED_BACK, E.ASK): S.ROLLED_BACK,
}

#: Home's view of a job that may run away from it: checkpoints arriving and the loss of its host.
#: A partial checkpoint never counts: only CKPT_DONE makes one the job's recovery point.
HOME_JOB: Mapping[tuple[S, E], S] = {
    (S.RUNNING, E.CKPT_BEGIN): S.CHECKPOINTING,
    # The one before broke off (its host moved the job on, or failed to send it): a new one.
    (S.CHECKPOINTING, E.CKPT_BEGIN): S.CHECKPOINTING,
    (S.CHECKPOINTING, E.CKPT_DONE): S.RUNNING,
    (S.CHECKPOINTING, E.FAILED): S.RUNNING,
    (S.RUNNING, E.HOST_LOST): S.LOST,
    (S.CHECKPOINTING, E.HOST_LOST): S.LOST,
    (S.RUNNING, E.RECOVER): S.RECOVERING,
    (S.CHECKPOINTING, E.RECOVER): S.RECOVERING,
    (S.RECOVERING, E.RESTORED): S.RUNNING,
    (S.RECOVERING, E.FAILED): S.LOST,
    (S.RUNNING, E.EXIT): S.EXITED,
    (S.CHECKPOINTING, E.EXIT): S.EXITED,
}

#: Seconds a side may stay in a state without progress (a frame, a page) before NO_ANSWER.
DEADLINES: Mapping[tuple[str, S], float] = {
    ("source", S.OFFERING): 30.0,
    # Pages and image files: progress-based (a target that stops reading stalls the dump).
    ("source", S.FREEZING): 5.0,
    ("source", S.TRANSFERRING): 5.0,
    # The target beats while it restores and attaches; silence this long ends the wait.
    ("source", S.RESTORING): 5.0,
    ("source", S.DECIDING): 5.0,
    ("target", S.RECEIVING): 10.0,
    ("target", S.RESTORING): 60.0,
    ("target", S.ATTACHING): 6.0,
}

#: How often the source asks home again, and the target attaches again (both idempotent).
RETRY_S = 1.0


@dataclass
class JobMeta:
    """What travels with a job from node to node."""

    home_pid: int
    home_node: int
    uid: int
    argv: list[str]
    started_at: float  # wall clock
    migrations: int = 0
    locked: bool = False
    allowed_nodes: list[int] | None = None
    #: CPU seconds the job's processes used on the nodes before this one (CRIU restarts the
    #: kernel's count at every restore).
    cpu_s: float = 0.0
    #: The same per process, by its PID in the job's namespace (for RLIMIT_CPU: cputime.py).
    cpu_by_pid: dict[int, float] = field(default_factory=dict)
    #: Times it was frozen for a move, failed moves included.
    freezes: int = 0
    #: Seconds between checkpoints sent home while it runs away from home; 0: none.
    checkpoint_s: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        return dict(self.__dict__) | {"cpu_by_pid": {str(k): v for k, v in self.cpu_by_pid.items()}}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> JobMeta:
        return cls(
            home_pid=int(d["home_pid"]),
            home_node=int(d["home_node"]),
            uid=int(d["uid"]),
            argv=[str(a) for a in d["argv"]],
            started_at=float(d["started_at"]),
            migrations=int(d["migrations"]),
            locked=bool(d["locked"]),
            allowed_nodes=[int(n) for n in d["allowed_nodes"]] if d.get("allowed_nodes") else None,
            cpu_s=float(d.get("cpu_s", 0.0)),
            cpu_by_pid={int(k): float(v) for k, v in dict(d.get("cpu_by_pid") or {}).items()},
            freezes=int(d.get("freezes", 0)),
            checkpoint_s=float(d.get("checkpoint_s", 0.0)),
        )


class IllegalTransition(ValueError):
    pass


@dataclass
class Machine:
    """One party's state machine: `step` on events, `expired` when a deadline passed."""

    role: str
    table: Mapping[tuple[S, E], S]
    state: S
    since: float
    progress: float = 0.0
    history: list[tuple[float, S, E, S]] = field(default_factory=list)

    @classmethod
    def source(cls, now: float, state: S = S.RUNNING) -> Machine:
        return cls("source", SOURCE, state, now, now)

    @classmethod
    def target(cls, now: float) -> Machine:
        return cls("target", TARGET, S.RECEIVING, now, now)

    def can(self, event: E) -> bool:
        return (self.state, event) in self.table

    def step(self, event: E, now: float) -> S:
        try:
            new = self.table[(self.state, event)]
        except KeyError:
            raise IllegalTransition(f"{self.role}: no {event} in state {self.state}") from None
        self.history.append((now, self.state, event, new))
        self.state, self.since, self.progress = new, now, now
        return new

    def touch(self, now: float) -> None:
        """Progress (a frame, a page, a beat): the deadline starts over."""
        self.progress = now

    def deadline(self) -> float | None:
        """When NO_ANSWER is due in the current state (monotonic seconds), or None."""
        limit = DEADLINES.get((self.role, self.state))
        return None if limit is None else self.progress + limit

    def expired(self, now: float) -> bool:
        due = self.deadline()
        return due is not None and now >= due


class Arbiter:
    """Home's record of the moves of one job: the first of ATTACH and ASK decides."""

    def __init__(self, keep: int = 64) -> None:
        self._keep = keep
        self._moves: OrderedDict[str, S] = OrderedDict()

    def _step(self, move: str, event: E) -> S:
        state = HOME[(self._moves.get(move, S.UNDECIDED), event)]
        self._moves[move] = state
        self._moves.move_to_end(move)
        while len(self._moves) > self._keep:
            self._moves.popitem(last=False)
        return state

    def attach(self, move: str) -> bool:
        """The target of `move` asks to commit: True if the move is (now) committed."""
        return self._step(move, E.ATTACH) == S.COMMITTED

    def ask(self, move: str) -> bool:
        """The source of `move` heard nothing: True if committed (else it is aborted now)."""
        return self._step(move, E.ASK) == S.COMMITTED

    def state(self, move: str) -> S:
        return self._moves.get(move, S.UNDECIDED)


class Keeper:
    """Home's checkpoints of one job (HOME_JOB): the one being received, the last complete one
    (`held`, its id), and what the loss of the job's host means: RECOVERING with one held,
    LOST without. Once the host is lost no move of the job may commit any more."""

    def __init__(self, now: float) -> None:
        self.machine = Machine("home", HOME_JOB, S.RUNNING, now, now)
        self.partial: str | None = None
        self.held: str | None = None

    @property
    def state(self) -> S:
        return self.machine.state

    def begin(self, ckpt: str, now: float) -> bool:
        """A checkpoint starts arriving; False (ignored) unless the job runs."""
        if not self.machine.can(E.CKPT_BEGIN):
            return False
        self.machine.step(E.CKPT_BEGIN, now)
        self.partial = ckpt
        return True

    def done(self, ckpt: str, now: float) -> bool:
        """The checkpoint `ckpt` arrived whole: True if it is the job's recovery point now."""
        if ckpt != self.partial or not self.machine.can(E.CKPT_DONE):
            return False
        self.machine.step(E.CKPT_DONE, now)
        self.held, self.partial = ckpt, None
        return True

    def failed(self, now: float) -> None:
        """The checkpoint being received broke off (bad frame, the job moved on): dropped."""
        if self.partial is not None and self.machine.can(E.FAILED):
            self.machine.step(E.FAILED, now)
        self.partial = None

    def drop_held(self) -> None:
        """The job came home: nothing can lose it there, its checkpoint goes."""
        self.held = None

    def host_lost(self, now: float) -> S:
        """The job's host is gone: RECOVERING (from `held`) or LOST."""
        self.partial = None
        return self.machine.step(E.RECOVER if self.held else E.HOST_LOST, now)

    def recovered(self, ok: bool, now: float) -> S:
        new = self.machine.step(E.RESTORED if ok else E.FAILED, now)
        self.held = None
        return new

    def exited(self, now: float) -> None:
        if self.machine.can(E.EXIT):
            self.machine.step(E.EXIT, now)

    def may_commit(self) -> bool:
        """Whether a move may commit: never once the host was given up (one copy only)."""
        return self.state in (S.RUNNING, S.CHECKPOINTING)
