"""The job lifecycle (migration/lifecycle.py): every transition of every table, the deadlines,
home's arbitration, and the move protocol with each message dropped or delayed in turn."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pymosix.migration.lifecycle import (
    DEADLINES,
    HOME,
    HOME_JOB,
    RETRY_S,
    SOURCE,
    TARGET,
    Arbiter,
    E,
    IllegalTransition,
    Keeper,
    Machine,
    S,
)

SOURCE_ROWS = [
    (S.STARTING, E.STARTED, S.RUNNING),
    (S.RUNNING, E.OFFER, S.OFFERING),
    (S.RUNNING, E.EXIT, S.EXITED),
    (S.RUNNING, E.LINK_LOST, S.LOST),
    (S.OFFERING, E.REFUSED, S.RUNNING),
    (S.OFFERING, E.FAILED, S.RUNNING),
    (S.OFFERING, E.NO_ANSWER, S.RUNNING),
    (S.OFFERING, E.READY, S.FREEZING),
    (S.FREEZING, E.FROZEN, S.TRANSFERRING),
    (S.FREEZING, E.FAILED, S.ROLLED_BACK),
    (S.FREEZING, E.NO_ANSWER, S.ROLLED_BACK),
    (S.TRANSFERRING, E.FAILED, S.ROLLED_BACK),
    (S.TRANSFERRING, E.NO_ANSWER, S.ROLLED_BACK),
    (S.TRANSFERRING, E.DONE_SENT, S.RESTORING),
    (S.RESTORING, E.RESTORED, S.COMMITTED),
    (S.RESTORING, E.FAILED, S.DECIDING),
    (S.RESTORING, E.NO_ANSWER, S.DECIDING),
    (S.DECIDING, E.HOME_COMMITTED, S.COMMITTED),
    (S.DECIDING, E.HOME_ABORTED, S.ROLLED_BACK),
    (S.DECIDING, E.NO_ANSWER, S.LOST),
    (S.ROLLED_BACK, E.RESUMED, S.RUNNING),
]
TARGET_ROWS = [
    (S.RECEIVING, E.IMAGE_IN, S.RESTORING),
    (S.RECEIVING, E.FAILED, S.DISCARDED),
    (S.RECEIVING, E.NO_ANSWER, S.DISCARDED),
    (S.RESTORING, E.RESTORED, S.ATTACHING),
    (S.RESTORING, E.FAILED, S.DISCARDED),
    (S.RESTORING, E.NO_ANSWER, S.DISCARDED),
    (S.ATTACHING, E.HOME_COMMITTED, S.RUNNING),
    (S.ATTACHING, E.HOME_ABORTED, S.DISCARDED),
    (S.ATTACHING, E.NO_ANSWER, S.DISCARDED),
    (S.RUNNING, E.EXIT, S.EXITED),
    (S.RUNNING, E.LINK_LOST, S.LOST),
]
HOME_ROWS = [
    (S.UNDECIDED, E.ATTACH, S.COMMITTED),
    (S.UNDECIDED, E.ASK, S.ROLLED_BACK),
    (S.COMMITTED, E.ATTACH, S.COMMITTED),
    (S.COMMITTED, E.ASK, S.COMMITTED),
    (S.ROLLED_BACK, E.ATTACH, S.ROLLED_BACK),
    (S.ROLLED_BACK, E.ASK, S.ROLLED_BACK),
]

HOME_JOB_ROWS = [
    (S.RUNNING, E.CKPT_BEGIN, S.CHECKPOINTING),
    (S.CHECKPOINTING, E.CKPT_BEGIN, S.CHECKPOINTING),
    (S.CHECKPOINTING, E.CKPT_DONE, S.RUNNING),
    (S.CHECKPOINTING, E.FAILED, S.RUNNING),
    (S.RUNNING, E.HOST_LOST, S.LOST),
    (S.CHECKPOINTING, E.HOST_LOST, S.LOST),
    (S.RUNNING, E.RECOVER, S.RECOVERING),
    (S.CHECKPOINTING, E.RECOVER, S.RECOVERING),
    (S.RECOVERING, E.RESTORED, S.RUNNING),
    (S.RECOVERING, E.FAILED, S.LOST),
    (S.RUNNING, E.EXIT, S.EXITED),
    (S.CHECKPOINTING, E.EXIT, S.EXITED),
]


def test_the_tables_are_exactly_the_rows_listed_here() -> None:
    assert {(a, e): b for a, e, b in SOURCE_ROWS} == dict(SOURCE)
    assert {(a, e): b for a, e, b in TARGET_ROWS} == dict(TARGET)
    assert {(a, e): b for a, e, b in HOME_ROWS} == dict(HOME)
    assert {(a, e): b for a, e, b in HOME_JOB_ROWS} == dict(HOME_JOB)


@pytest.mark.parametrize(("state", "event", "new"), HOME_JOB_ROWS)
def test_home_job_transition(state: S, event: E, new: S) -> None:
    m = Machine("home", HOME_JOB, state, 0.0)
    assert m.step(event, 3.0) == new
    assert m.history == [(3.0, state, event, new)]


def test_home_job_pairs_not_in_the_table_are_refused() -> None:
    for state in S:
        for event in E:
            if (state, event) not in HOME_JOB:
                m = Machine("home", HOME_JOB, state, 0.0)
                with pytest.raises(IllegalTransition):
                    m.step(event, 1.0)


def test_a_host_lost_without_a_complete_checkpoint_loses_the_job() -> None:
    k = Keeper(0.0)
    assert k.host_lost(1.0) == S.LOST
    assert not k.may_commit()
    k = Keeper(0.0)
    assert k.begin("a", 1.0)  # arriving, never finished: it does not count
    assert k.state == S.CHECKPOINTING
    assert k.host_lost(2.0) == S.LOST


def test_only_a_finished_checkpoint_is_held_and_a_newer_replaces_it_once_whole() -> None:
    k = Keeper(0.0)
    assert k.begin("a", 1.0)
    assert not k.done("b", 1.5), "the end of another one"
    assert k.done("a", 2.0)
    assert (k.state, k.held, k.partial) == (S.RUNNING, "a", None)
    assert k.begin("b", 3.0)
    assert k.held == "a", "the previous one stays until the next is whole"
    k.failed(3.5)
    assert (k.state, k.held) == (S.RUNNING, "a")
    assert k.begin("c", 4.0)
    assert k.begin("d", 4.5), "one broken off by the next"
    assert not k.done("c", 5.0)
    assert k.done("d", 5.0)
    assert k.held == "d"


def test_a_host_lost_with_a_checkpoint_recovers_and_no_move_commits_meanwhile() -> None:
    k = Keeper(0.0)
    k.begin("a", 1.0)
    k.done("a", 2.0)
    k.begin("b", 3.0)
    assert k.host_lost(4.0) == S.RECOVERING
    assert k.held == "a"
    assert k.partial is None
    assert not k.may_commit(), "a late ATTACH of the old host's move must not commit"
    assert not k.begin("c", 4.5), "nothing from the lost host counts any more"
    assert k.recovered(True, 5.0) == S.RUNNING
    assert k.may_commit(), "the restored job is movable again"
    assert k.held is None, "its checkpoint is used up"
    k2 = Keeper(0.0)
    k2.begin("a", 1.0)
    k2.done("a", 2.0)
    k2.host_lost(3.0)
    assert k2.recovered(False, 4.0) == S.LOST


def test_a_job_that_came_home_holds_no_checkpoint_and_an_exit_ends_it() -> None:
    k = Keeper(0.0)
    k.begin("a", 1.0)
    k.done("a", 2.0)
    k.drop_held()
    assert k.host_lost(3.0) == S.LOST
    k = Keeper(0.0)
    k.begin("a", 1.0)
    k.exited(2.0)
    assert k.state == S.EXITED
    k.exited(3.0)  # twice: harmless
    assert not k.begin("b", 4.0)


@pytest.mark.parametrize(("state", "event", "new"), SOURCE_ROWS)
def test_source_transition(state: S, event: E, new: S) -> None:
    m = Machine.source(0.0, state)
    assert m.step(event, 1.0) == new
    assert m.state == new
    assert m.history == [(1.0, state, event, new)]


@pytest.mark.parametrize(("state", "event", "new"), TARGET_ROWS)
def test_target_transition(state: S, event: E, new: S) -> None:
    m = Machine.target(0.0)
    m.state = state
    assert m.step(event, 2.0) == new
    assert m.since == 2.0


@pytest.mark.parametrize(("state", "event", "new"), HOME_ROWS)
def test_home_transition(state: S, event: E, new: S) -> None:
    a = Arbiter()
    if state == S.COMMITTED:
        assert a.attach("m")
    elif state == S.ROLLED_BACK:
        assert not a.ask("m")
    assert a.state("m") == state
    answer = a.attach("m") if event == E.ATTACH else a.ask("m")
    assert a.state("m") == new
    assert answer == (new == S.COMMITTED)


def test_every_pair_not_in_a_table_is_refused() -> None:
    for table, make in ((SOURCE, Machine.source), (TARGET, Machine.target)):
        for state in S:
            for event in E:
                if (state, event) in table:
                    continue
                m = make(0.0)
                m.state = state
                assert not m.can(event)
                with pytest.raises(IllegalTransition):
                    m.step(event, 1.0)


def test_deadlines_run_from_the_last_progress() -> None:
    m = Machine.source(0.0, S.TRANSFERRING)
    m.step(E.DONE_SENT, 10.0)
    limit = DEADLINES[("source", S.RESTORING)]
    assert not m.expired(10.0 + limit - 0.1)
    m.touch(12.0)  # a beat from the target
    assert not m.expired(10.0 + limit + 0.1)
    assert m.expired(12.0 + limit)
    m.state = S.RUNNING
    assert m.deadline() is None
    assert not m.expired(1e9)


def test_the_arbiter_forgets_only_the_oldest_moves() -> None:
    a = Arbiter(keep=2)
    assert a.attach("a")
    assert not a.ask("b")
    assert a.attach("c")
    assert a.state("a") == S.UNDECIDED
    assert a.state("b") == S.ROLLED_BACK
    assert a.state("c") == S.COMMITTED


# --- the protocol, message by message -------------------------------------------------------

KINDS = ("DONE", "BEAT", "ATTACH", "COMMITTED", "REFUSED", "RESTORED", "ASK", "VERDICT")
TICK = 0.05


@dataclass
class Net:
    """Messages in flight; a fault drops or delays the first (or every) message of a kind."""

    faults: dict[str, tuple[str, float, bool]]
    flying: list[tuple[float, str, str, bool]] = field(default_factory=list)

    def send(self, now: float, to: str, kind: str, ok: bool = True) -> None:
        fault = self.faults.get(kind)
        if fault is not None:
            what, delay, every = fault
            if not every:
                del self.faults[kind]
            if what == "drop":
                return
            now += delay
        self.flying.append((now, to, kind, ok))

    def due(self, now: float) -> list[tuple[str, str, bool]]:
        out = [(to, k, ok) for t, to, k, ok in self.flying if t <= now]
        self.flying = [m for m in self.flying if m[0] > now]
        return out


def run_move(faults: dict[str, tuple[str, float, bool]], restore_s: float = 0.5) -> int:
    """Simulate one move from DONE on; the number of copies of the job running at the end."""
    net = Net(dict(faults))
    home = Arbiter()
    src = Machine.source(0.0, S.TRANSFERRING)
    tgt = Machine.target(0.0)
    src.step(E.DONE_SENT, 0.0)
    net.send(0.0, "target", "DONE")
    restored_at: float | None = None
    next_beat = next_attach = next_ask = 0.0
    now = 0.0
    while now < 40.0:
        now += TICK
        for to, kind, ok in net.due(now):
            if to == "target" and kind == "DONE" and tgt.state == S.RECEIVING:
                tgt.step(E.IMAGE_IN, now)
                restored_at = now + restore_s
            elif to == "home" and kind == "ATTACH":
                net.send(now, "target", "COMMITTED" if home.attach("m") else "REFUSED")
            elif to == "home" and kind == "ASK":
                net.send(now, "source", "VERDICT", home.ask("m"))
            elif to == "target" and tgt.state == S.ATTACHING and kind in ("COMMITTED", "REFUSED"):
                new = tgt.step(E.HOME_COMMITTED if kind == "COMMITTED" else E.HOME_ABORTED, now)
                if new == S.RUNNING:
                    net.send(now, "source", "RESTORED")
            elif to == "source" and kind == "BEAT" and src.state == S.RESTORING:
                src.touch(now)
            elif to == "source" and kind == "RESTORED" and src.state == S.RESTORING:
                src.step(E.RESTORED, now)
            elif to == "source" and kind == "VERDICT" and src.state == S.DECIDING:
                src.step(E.HOME_COMMITTED if ok else E.HOME_ABORTED, now)
        # The target: restore, then attach (again every RETRY_S); beats to the source meanwhile.
        if tgt.state == S.RESTORING and restored_at is not None and now >= restored_at:
            tgt.step(E.RESTORED, now)
            next_attach = now
        if tgt.state in (S.RESTORING, S.ATTACHING) and now >= next_beat:
            net.send(now, "source", "BEAT")
            next_beat = now + 1.0
        if tgt.state == S.ATTACHING and now >= next_attach:
            net.send(now, "home", "ATTACH")
            next_attach = now + RETRY_S
        # The source: silence ends RESTORING; then it asks home, again every RETRY_S.
        if src.state == S.RESTORING and src.expired(now):
            src.step(E.NO_ANSWER, now)
            next_ask = now
        if src.state == S.DECIDING and now >= next_ask:
            net.send(now, "home", "ASK")
            next_ask = now + RETRY_S
        for m in (src, tgt):
            if m.state != S.RESTORING and m.can(E.NO_ANSWER) and m.expired(now):
                m.step(E.NO_ANSWER, now)
    assert src.state in (S.COMMITTED, S.ROLLED_BACK, S.LOST), src.history
    assert tgt.state in (S.RUNNING, S.DISCARDED), tgt.history
    return (src.state == S.ROLLED_BACK) + (tgt.state == S.RUNNING)


def test_a_clean_move_commits_once() -> None:
    assert run_move({}) == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", [("drop", 0.0, False), ("delay", 8.0, False)])
def test_exactly_one_copy_with_a_message_dropped_or_delayed(
    kind: str, fault: tuple[str, float, bool]
) -> None:
    assert run_move({kind: fault}) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_never_two_copies_with_every_message_of_a_kind_lost(kind: str) -> None:
    # Home's commit that never reaches the target (a lasting cut between them) is the one case
    # with no copy left: the target cannot tell a commit from an abort, so it must not run.
    assert run_move({kind: ("drop", 0.0, True)}) == (0 if kind == "COMMITTED" else 1)


@pytest.mark.parametrize("restore_s", [0.1, 4.0, 12.0])
def test_a_slow_restore_costs_the_move_never_a_copy(restore_s: float) -> None:
    assert run_move({"BEAT": ("drop", 0.0, True)}, restore_s) == 1
    assert run_move({}, restore_s) == 1


def test_a_lost_restored_with_home_unreachable_keeps_the_target_copy() -> None:
    faults = {"RESTORED": ("drop", 0.0, True), "ASK": ("drop", 0.0, True)}
    assert run_move(faults) == 1


def _imports(module: str) -> set[str]:
    import ast
    from pathlib import Path

    import pymosix

    path = Path(pymosix.__file__).parent / "migration" / f"{module}.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_no_circle_of_imports_and_the_lifecycle_is_pure() -> None:
    # Not even under TYPE_CHECKING: each side names what it needs of the engine as a Protocol.
    assert "pymosix.migration.engine" not in _imports("hosted")
    assert "pymosix.migration.engine" not in _imports("home")
    assert "pymosix.migration.hosted" not in _imports("home")
    assert not {f"pymosix.migration.{m}" for m in ("engine", "home", "hosted")} & _imports(
        "checkpoint"
    )
    assert not {"asyncio", "socket", "time", "os"} & _imports("lifecycle")
