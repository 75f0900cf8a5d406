"""No job is ever lost, none is ever doubled (issue 16): moves that fail after the freeze,
lost answers, silent hosts, frozen targets, agents that stop."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pymosix.migration.cantmove import tree_pids
from pymosix.testbed import TestBed, kernel
from tests.kernel.conftest import wait_until
from tests.kernel.jobs import Job, MakeBed

pytestmark = pytest.mark.kernel

#: Three processes: the parent holds an abstract unix socket name and counts ("p N"), a worker
#: counts ("w N"), and a third stops itself (the job's own SIGSTOP, to be kept across a rollback).
TREE = """
import os, signal, socket, sys, time
s = socket.socket(socket.AF_UNIX); s.bind("\\0" + sys.argv[1]); s.listen()
if os.fork() == 0:
    os.kill(os.getpid(), signal.SIGSTOP)
    while True:
        time.sleep(1)
def count(tag):
    i = 0
    while True:
        i += 1
        print(tag, i, flush=True)
        time.sleep(0.05)
if os.fork() == 0:
    count("w")
count("p")
"""

HOLD = (
    "import socket, sys, time\n"
    "s = socket.socket(socket.AF_UNIX); s.bind('\\0' + sys.argv[1]); s.listen()\n"
    "print('held', flush=True)\n"
    "time.sleep(600)\n"
)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def _tags_seen(job: Job, want: set[str], timeout_s: float) -> set[str]:
    """Which of the tags in `want` appear in the job's output within timeout_s."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while seen != want and time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            seen.add(job.lines.get(timeout=0.5).split()[0].decode())
    return seen & want


def _hold_name(bed: TestBed, node: int, name: str) -> subprocess.Popen[bytes]:
    holder = bed.popen(node, ["python3", "-c", HOLD, name], stdout=subprocess.PIPE)
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == b"held"
    return holder


def test_a_move_failing_after_the_freeze_resumes_every_process_as_it_was(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    bed = make_bed(2)
    name = f"pmx-rel-{secrets.token_hex(4)}"
    job = Job(bed, 1, ["python3", "-c", TREE, name])
    jobs.append(job)
    assert _tags_seen(job, {"p", "w"}, 20.0) == {"p", "w"}
    row = job.row()
    assert row is not None
    root = int(str(row["pid"]))
    wait_until("three processes", lambda: len(tree_pids(root)) == 3, 10.0)
    stopped = [p for p in tree_pids(root) if _state(p) == "T"]
    assert len(stopped) == 1, "the job stopped one of its processes itself"
    # The target has the job's abstract socket name taken: its restore fails, after the freeze.
    holder = _hold_name(bed, 2, name)
    try:
        r = job.migrate("0x640c")
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    assert r.returncode != 0, r.stdout
    assert job.node() == 0x640B
    job.drain_lines()
    # Both counting processes go on; the one the job had stopped stays stopped.
    assert _tags_seen(job, {"p", "w"}, 10.0) == {"p", "w"}
    states = {p: _state(p) for p in tree_pids(root)}
    assert len(states) == 3, states
    assert [p for p, s in states.items() if s == "T"] == stopped, states
    row = job.row()
    assert row is not None
    assert row["state"] == "running"


# --- exactly one copy ------------------------------------------------------------------------

#: Counts 1, 2, 3, ... every 50 ms; argv[1] is a token that finds its processes in /proc.
COUNT = (
    "import sys, time\n"
    "i = 0\n"
    "while True:\n"
    "    i += 1\n"
    "    print(i, flush=True)\n"
    "    time.sleep(0.05)\n"
)


_copies = kernel.copies_of


def _guest_pids(bed: TestBed, node: int, home_pid: int) -> list[int]:
    import json

    rows = json.loads(bed.exec(node, ["mps", "--json"]).stdout)["jobs"]
    return [int(r["pid"]) for r in rows if r.get("guest") and r["home_pid"] == home_pid]


def _counts_on(job: Job, n: int) -> None:
    """The job goes on counting: n more values, each once, in order."""
    before = job.drain_ints()
    after = job.counts(n)
    seq = before + after
    assert seq == list(range(seq[0], seq[0] + len(seq))), seq


def _moved_to_node2(bed: TestBed, jobs: list[Job]) -> tuple[Job, str]:
    token = f"pmx-rel-{secrets.token_hex(4)}"
    job = Job(bed, 1, ["python3", "-c", COUNT, token])
    jobs.append(job)
    job.counts(2)
    r = job.migrate("0x640c")
    assert r.returncode == 0, r.stderr
    wait_until("the guest on node2", lambda: _copies(token) == _guest_pids(bed, 2, job.pid), 20)
    return job, token


def test_a_lost_restored_answer_leaves_one_copy_and_migrate_tells_the_truth(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    bed = make_bed(3)
    job, token = _moved_to_node2(bed, jobs)
    # Node 3 restores the job and home commits it, but its RESTORED to node 2 is lost.
    bed.set_faults(3, "drop RESTORED\n")
    r = job.migrate("0x640d")
    assert r.returncode == 0, r.stderr
    assert "0x640d" in r.stdout
    assert job.node() == 0x640D
    # Node 2 asks home, hears the move committed, and drops its frozen original.
    wait_until("node 2 to let the job go", lambda: not _guest_pids(bed, 2, job.pid), 20)
    wait_until("one copy", lambda: len(_copies(token)) == 1, 10)
    assert _copies(token) == _guest_pids(bed, 3, job.pid)
    _counts_on(job, 3)
    # Long past every deadline of the move (5 s each): still that one copy.
    time.sleep(6)
    assert _copies(token) == _guest_pids(bed, 3, job.pid)
    _counts_on(job, 3)


def test_a_target_frozen_during_the_restore_leaves_one_copy(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    bed = make_bed(3)
    job, token = _moved_to_node2(bed, jobs)
    agent3 = bed.node(3).agent_pid
    move = bed.popen(
        1, ["migrate", str(job.pid), "0x640d"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stopped = False
    try:
        wait_until(
            "the restore on node 3",
            lambda: bool(bed.glob(3, "/dev/shm/pymosix-640d-*/in-*/restore.log")),
            30.0,
            poll_s=0.005,
        )
        os.kill(agent3, signal.SIGSTOP)
        stopped = True
        t0 = time.monotonic()
        _, err = move.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if stopped:
            os.kill(agent3, signal.SIGCONT)
        if move.poll() is None:
            move.kill()
        move.wait()
    assert move.returncode != 0
    assert b"0x640d" in err
    assert b"restore" in err
    assert took < 15, took
    assert job.node() == 0x640C
    # Node 3 wakes up, asks home to commit, is refused and kills its copy.
    wait_until("one copy", lambda: _copies(token) == _guest_pids(bed, 2, job.pid), 20)
    assert not _guest_pids(bed, 3, job.pid)
    _counts_on(job, 3)


# --- deadlines and liveness ------------------------------------------------------------------


def test_a_host_that_vanishes_silently_is_reported_lost_within_5_s(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    bed = make_bed(2)
    job, token = _moved_to_node2(bed, jobs)
    veth = bed.node(2).veth
    # No FIN, no RST ever reaches home: the link goes first, then every process of node 2.
    # mosrun's end is timed from the link's, by a waiter of its own: the kills below wait for
    # each process to be gone (up to 5 s each on a busy machine), which is not home's time.
    ended: list[float] = []

    def wait_mosrun() -> None:
        job.proc.wait()
        ended.append(time.monotonic())

    waiter = threading.Thread(target=wait_mosrun, daemon=True)
    kernel.ip("link", "set", veth, "down")
    t0 = time.monotonic()
    waiter.start()
    try:
        bed.kill_agent(2)
        kernel.kill_pids(kernel.netns_pids(bed.node(2).netns))
        waiter.join(timeout=30)
    finally:
        kernel.ip("link", "set", veth, "up", check=False)
    assert ended, "mosrun still runs 30 s after its job's host vanished"
    took = ended[0] - t0
    assert job.proc.returncode == 255
    assert job.proc.stderr is not None
    assert b"job lost with node 0x640c" in job.proc.stderr.read()
    assert took < 7, took
    assert job.row() is None
    assert not _copies(token)


BIG = "x = bytearray(b'\\x01') * (400 << 20)\n" + COUNT


def test_a_target_frozen_mid_transfer_costs_at_most_10_s_of_freeze(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    bed = make_bed(2)
    token = f"pmx-rel-{secrets.token_hex(4)}"
    job = Job(bed, 1, ["python3", "-c", BIG, token])
    jobs.append(job)
    job.counts(2)
    agent2 = bed.node(2).agent_pid
    move = bed.popen(
        1, ["migrate", str(job.pid), "0x640c"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stopped = False
    try:
        wait_until(
            "pages arriving on node2",
            lambda: bool(bed.glob(2, "/dev/shm/pymosix-640c-*/in-*/pages-*.img")),
            30.0,
            poll_s=0.005,
        )
        os.kill(agent2, signal.SIGSTOP)
        stopped = True
        t0 = time.monotonic()
        _, err = move.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if stopped:
            os.kill(agent2, signal.SIGCONT)
        if move.poll() is None:
            move.kill()
        move.wait()
    assert move.returncode != 0
    assert b"0x640c" in err
    assert b"pages" in err
    assert took < 10, took
    assert job.node() == 0x640B
    _counts_on(job, 3)
    # Node 2, woken, lets its half of the move go: one copy, at home.
    wait_until("no guest on node 2", lambda: not _guest_pids(bed, 2, job.pid), 20)
    assert len(_copies(token)) == 1


# --- agents stop gracefully ------------------------------------------------------------------


def test_an_agent_stopped_with_guests_sends_them_home_and_they_keep_counting(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    bed = make_bed(2)
    job, token = _moved_to_node2(bed, jobs)
    second, token2 = _moved_to_node2(bed, jobs)
    t0 = time.monotonic()
    bed.stop_agent(2, timeout_s=40)
    took = time.monotonic() - t0
    assert took < 25, took
    for j, t in ((job, token), (second, token2)):
        assert j.proc.poll() is None, "mosrun goes on"
        assert j.node() == 0x640B
        assert len(_copies(t)) == 1
        _counts_on(j, 3)
    assert "went to node 25611" in bed.node(2).log.read_text()


def _intact(job: Job) -> None:
    """Every value the job printed reached mosrun once, in order, from its first on."""
    ints = [int(x) for x in bytes(job.out).split()]
    assert ints == list(range(1, len(ints) + 1)), ints[:5]


#: (node of the fault: 1 home, 2 source, 3 target; its rules; where the job runs afterwards)
DROPS = {
    "DONE": ({2: "drop DONE\n"}, 0x640C),
    "ATTACH": ({1: "drop ATTACH\n"}, 0x640C),
    "ATTACH late": ({1: "delay ATTACH 8\n"}, 0x640C),
    "COMMITTED once": ({1: "drop COMMITTED once\n"}, 0x640D),
    "RESTORED late": ({3: "delay RESTORED 8\n"}, 0x640D),
    "RESTORED, ASK once": ({3: "drop RESTORED\n", 2: "drop ASK once\n"}, 0x640D),
    "RESTORED, VERDICT once": ({3: "drop RESTORED\n", 1: "drop VERDICT once\n"}, 0x640D),
}


@pytest.mark.parametrize("case", list(DROPS))
def test_each_dropped_or_late_message_leaves_one_copy_and_stdout_intact(
    make_bed: MakeBed, jobs: list[Job], case: str
) -> None:
    rules, where = DROPS[case]
    bed = make_bed(3)
    job, token = _moved_to_node2(bed, jobs)
    for node, text in rules.items():
        bed.set_faults(node, text)
    r = job.migrate("0x640d")
    assert (r.returncode == 0) == (where == 0x640D), r.stdout + r.stderr
    assert job.node() == where
    other = 2 if where == 0x640D else 3
    wait_until(
        "one copy",
        lambda: len(_copies(token)) == 1 and not _guest_pids(bed, other, job.pid),
        25,
    )
    for node in rules:
        bed.set_faults(node, "")
    _counts_on(job, 3)
    # Past every deadline of the move: still that one copy, where mps says.
    time.sleep(3)
    assert _copies(token) == _guest_pids(bed, where - 0x640A, job.pid)
    _counts_on(job, 2)
    _intact(job)


def test_a_stopping_agent_sends_a_guest_elsewhere_when_home_refuses(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    bed = make_bed(3)
    job, token = _moved_to_node2(bed, jobs)
    bed.set_faults(1, "drop READY\n")
    bed.stop_agent(2, timeout_s=40)
    assert job.proc.poll() is None
    assert job.node() == 0x640D
    assert _copies(token) == _guest_pids(bed, 3, job.pid)
    _counts_on(job, 3)
    _intact(job)


def test_a_guest_that_cannot_leave_a_stopping_agent_is_checkpointed_home(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    """Home refuses it and there is no other node: the stopping agent sends home a checkpoint
    (the job has no -C), and home restores it from there once it gives node2 up."""
    bed = make_bed(2)
    job, token = _moved_to_node2(bed, jobs)
    bed.set_faults(1, "drop READY\n")
    bed.stop_agent(2, timeout_s=60)
    assert "checkpointed home, left to its holder" in bed.node(2).log.read_text()
    wait_until("the job back at home", lambda: job.node() == 0x640B, 30)
    assert job.proc.poll() is None
    wait_until("one copy", lambda: len(_copies(token)) == 1, 15)
    _counts_on(job, 10)
    job.proc.kill()
    wait_until("the job gone", lambda: not _copies(token), 15)
    job.finish()
    _intact(job)


#: Counts, and outlives SIGTERM and SIGINT (it handles them by printing).
STUBBORN = (
    "import signal, sys, time\n"
    "for s in (signal.SIGTERM, signal.SIGINT):\n"
    "    signal.signal(s, lambda *_: print('no', flush=True))\n" + COUNT.split("\n", 1)[1]
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_mosrun_always_answers_a_second_sigterm_or_ctrl_c(
    make_bed: MakeBed, jobs: list[Job], sig: int
) -> None:
    bed = make_bed(2)
    token = f"pmx-rel-{secrets.token_hex(4)}"
    job = Job(bed, 1, ["python3", "-c", STUBBORN, token])
    jobs.append(job)
    assert job.migrate("0x640c").returncode == 0
    job.lines.get(timeout=20)
    job.proc.send_signal(sig)
    wait_until("the job's answer", lambda: b"no\n" in bytes(job.out), 10)
    assert job.proc.poll() is None, "the job handled it: mosrun goes on"
    job.proc.send_signal(sig)
    assert job.proc.wait(timeout=5) == 128 + sig
    wait_until("the job gone", lambda: not _copies(token), 15)


# --- no orphans ------------------------------------------------------------------------------


def test_a_guest_left_by_an_agent_killed_with_kill_9_is_removed_by_the_next_agent(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    bed = make_bed(2)
    # Silent: a job that writes dies of SIGPIPE with the agent; this one would run forever.
    token = f"pmx-rel-{secrets.token_hex(4)}"
    job = Job(bed, 1, ["python3", "-c", "import time\nwhile True: time.sleep(0.05)", token])
    jobs.append(job)
    assert job.migrate("0x640c").returncode == 0
    wait_until("the guest on node2", lambda: _copies(token) == _guest_pids(bed, 2, job.pid), 20)
    # The agent and the guest's holder die (a guest whose holder lives is taken back by the
    # next agent: test_restart_guests.py): the job is nobody's child, unseen.
    (guest,) = _copies(token)
    holder = int(Path(f"/proc/{guest}/stat").read_text().rsplit(")", 1)[1].split()[1])
    bed.kill_agent(2)
    os.kill(holder, signal.SIGKILL)
    assert len(_copies(token)) == 1
    # Home hears the link close, waits for a next agent (home.REJOIN_S), then reports the
    # job lost (no checkpoint to restore).
    assert job.proc.wait(timeout=20) == 255
    assert job.proc.stderr is not None
    assert b"job lost with node 0x640c" in job.proc.stderr.read()
    # Its process outlived the agent, unseen: the next agent of the node removes it.
    bed.start_agent(2)
    wait_until("the orphan removed", lambda: not _copies(token), 15)
    assert "left by agent" in bed.node(2).log.read_text()
