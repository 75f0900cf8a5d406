"""An agent restart keeps every job at home (issue 16 item 5): the job's holder keeps its pipes
and its exit status, the next agent adopts it, and the same mosrun goes on (docs/reliability.md)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from itertools import pairwise
from pathlib import Path

import pytest

from pymosix.testbed import TestBed
from tests.kernel.conftest import wait_until
from tests.kernel.jobs import Job, MakeBed, burst, burst_job, every_line_once
from tests.kernel.test_reliability import BIG, _copies, _counts_on, _guest_pids

pytestmark = pytest.mark.kernel

#: Counts 1, 2, 3, ... every 0.05 s; exits with status 7 on SIGUSR1 (forwarded by mosrun).
COUNT = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGUSR1, lambda *_: sys.exit(7))\n"
    "i = 0\n"
    "while True:\n"
    "    i += 1\n"
    "    print(i, flush=True)\n"
    "    time.sleep(0.05)\n"
)


def _ints(job: Job) -> list[int]:
    return [int(x) for x in bytes(job.out).split()]


def _holders(bed: TestBed, node: int) -> list[Path]:
    return sorted((Path(bed.node(node).dir) / "state" / "jobs").glob("hold-*.sock"))


def _migrate_to_node2(bed: TestBed, job: Job) -> subprocess.Popen[bytes]:
    return bed.popen(
        1, ["migrate", str(job.pid), "0x640c"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _pages_on_node2(bed: TestBed) -> None:
    wait_until(
        "pages arriving on node2",
        lambda: bool(bed.glob(2, "/dev/shm/pymosix-640c-*/in-*/pages-*.img")),
        30.0,
        poll_s=0.005,
    )


def _restart(bed: TestBed, node: int, *, converge: bool = True) -> None:
    """kill -9 of the agent, then a new one, as systemd's Restart= does; then, unless another
    agent is frozen (it cannot answer), until every map lists every node: a move right after
    needs the new agent to know the others."""
    bed.kill_agent(node)
    bed.start_agent(node)
    if converge:
        bed.wait_converged(30)


def test_a_users_job_at_home_outlives_its_agent_moves_and_exits_with_its_status(
    make_bed: MakeBed, jobs: list[Job], user: str
) -> None:
    bed = make_bed(2)
    token = f"pmx-restart-{secrets.token_hex(4)}"
    job = Job(bed, 1, ["python3", "-c", COUNT, token], user=user, cwd=str(bed.shared_dir))
    jobs.append(job)
    job.counts(3)
    (host_pid,) = _copies(token)
    _restart(bed, 1)
    # The same process, the same mosrun: it counts on, each number once and in order.
    seen = job.counts(5)
    assert _copies(token) == [host_pid]
    assert job.proc.poll() is None
    row = job.row()
    assert row is not None
    assert row["node"] == 0x640B, row
    # Adopted for good: it moves, its output still reaches the same mosrun.
    r = job.migrate("0x640c")
    assert r.returncode == 0, r.stderr
    wait_until("the job on node2", lambda: job.node() == 0x640C, 20)
    last = job.counts(5)[-1]
    assert last > seen[-1]
    job.proc.send_signal(signal.SIGUSR1)
    assert job.proc.wait(timeout=20) == 7
    assert job.proc.stderr is not None
    assert b"the agent restarted; the job goes on" in job.proc.stderr.read()
    job.finish()
    counts = _ints(job)
    assert counts[0] == 1
    assert all(b == a + 1 for a, b in pairwise(counts)), "no number repeated or skipped"
    wait_until("its holder gone", lambda: not _holders(bed, 1), 10)
    assert not _copies(token)


#: Reads a line, prints it, then (with nothing to say) waits 2 s and prints "done", exits 3.
ECHO_THEN_EXIT = (
    "import sys, time\n"
    "print('got', sys.stdin.readline().strip(), flush=True)\n"
    "time.sleep(2)\n"
    "print('done', sys.stdin.read().strip(), flush=True)\n"
    "sys.exit(3)\n"
)


def test_a_job_that_ends_while_no_agent_runs_gives_its_output_and_status_to_mosrun(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    bed = make_bed(1)
    token = f"pmx-restart-{secrets.token_hex(4)}"
    job = Job(bed, 1, ["python3", "-c", ECHO_THEN_EXIT, token], stdin=True)
    jobs.append(job)
    assert job.proc.stdin is not None
    job.proc.stdin.write(b"hello\nrest\n")
    job.proc.stdin.close()  # stdin's end reaches the job before the agent dies
    assert job.lines.get(timeout=20) == b"got hello\n"
    bed.kill_agent(1)
    # It writes and ends with no agent at all: its holder keeps the pipe and the status.
    wait_until("the job ended", lambda: not _copies(token), 15)
    bed.start_agent(1)
    assert job.proc.wait(timeout=40) == 3
    job.finish()
    assert bytes(job.out) == b"got hello\ndone rest\n"
    wait_until("its holder gone", lambda: not _holders(bed, 1), 10)


def test_no_orphan_when_mosrun_or_the_holder_goes_while_no_agent_runs(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    bed = make_bed(1)
    tokens = [f"pmx-restart-{secrets.token_hex(4)}" for _ in range(2)]
    a, b = (Job(bed, 1, ["python3", "-c", COUNT, t]) for t in tokens)
    jobs += [a, b]
    a.counts(2)
    b.counts(2)
    bed.kill_agent(1)
    # a's mosrun dies with no agent: its holder kills the job at once.
    a.proc.kill()
    wait_until("a's job gone", lambda: not _copies(tokens[0]), 10)
    # b's holder dies: the next agent finds no holder and removes the job, as before holders.
    (b_pid,) = _copies(tokens[1])
    holder_pid = int(Path(f"/proc/{b_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    os.kill(holder_pid, signal.SIGKILL)
    bed.start_agent(1)
    wait_until("b's job gone", lambda: not _copies(tokens[1]), 15)
    assert b.proc.wait(timeout=40) == 255  # no agent took it back within 30 s
    wait_until("no holder left", lambda: not _holders(bed, 1), 10)


def test_a_job_at_home_outlives_a_stop_and_start_of_its_agent(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    """systemctl restart: SIGTERM (a clean stop), then a new agent."""
    bed = make_bed(1)
    token = f"pmx-restart-{secrets.token_hex(4)}"
    job = Job(bed, 1, ["python3", "-c", COUNT, token])
    jobs.append(job)
    job.counts(2)
    (host_pid,) = _copies(token)
    bed.stop_agent(1)
    assert _copies(token) == [host_pid], "the stop left it to its holder"
    bed.start_agent(1)
    job.counts(3)
    assert _copies(token) == [host_pid]
    # Killing mosrun still kills the job, through the new agent.
    job.proc.kill()
    wait_until("the job gone", lambda: not _copies(token), 15)
    wait_until("its holder gone", lambda: not _holders(bed, 1), 10)


def test_a_stop_and_start_of_the_agent_loses_none_of_a_users_output_at_home(
    make_bed: MakeBed, jobs: list[Job], user: str
) -> None:
    """systemctl restart while 8 MB of a job at home back up through its agent (mosrun's own
    output not read): the stopping agent reads the job's pipes no more and hands what it read to
    mosrun's socket before it goes; the next one reads on from there."""
    bed = make_bed(1)
    job, marker = burst_job(bed, user)
    jobs.append(job)
    burst(job, marker)
    bed.stop_agent(1)
    bed.start_agent(1)
    err = every_line_once(job)
    assert b"the agent restarted; the job goes on" in err


def test_a_job_whose_agent_died_moving_it_is_not_adopted_and_no_copy_runs(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    """Frozen at home, its pages half on node2: the new agent knows no such move, so the
    target cannot commit, and the original is not taken back either: zero copies, told."""
    bed = make_bed(2)
    token = f"pmx-restart-{secrets.token_hex(4)}"
    job = Job(bed, 1, ["python3", "-c", BIG, token])
    jobs.append(job)
    job.counts(2)
    # The target holds its answer back, so the kill below lands before the move can commit
    # (a fast machine had it committed by the time the pages were seen).
    bed.set_faults(2, "delay RESTORED 5 once\n")
    move = _migrate_to_node2(bed, job)
    try:
        _pages_on_node2(bed)
        bed.kill_agent(1)
        move.communicate(timeout=60)
    finally:
        if move.poll() is None:
            move.kill()
        move.wait()
    bed.start_agent(1)
    assert job.proc.wait(timeout=40) == 255
    assert job.proc.stderr is not None
    assert b"the agent died while it moved the job" in job.proc.stderr.read()
    wait_until("no copy anywhere", lambda: not _copies(token), 20)
    wait_until("no holder left", lambda: not _holders(bed, 1), 10)


def test_a_move_given_up_before_home_restarted_never_commits_after(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    """The soak's double (seed 12, moves 141 and 218): the target's agent frozen mid-move, the
    source asks home and hears the move aborted, home's agent restarts, and then the target
    wakes, restores and asks to commit. The new agent never saw that move start: it refuses,
    the copy there dies, and the job goes on at home alone, counting once."""
    bed = make_bed(2)
    token = f"pmx-restart-{secrets.token_hex(4)}"
    job = Job(bed, 1, ["python3", "-c", COUNT, token])
    jobs.append(job)
    job.counts(2)
    bed.set_faults(1, "delay DONE 2\n")  # the target has the pages, then is frozen, then DONE
    agent2 = bed.node(2).agent_pid
    move = _migrate_to_node2(bed, job)
    stopped = False
    try:
        _pages_on_node2(bed)
        # Into the 2 s the source holds DONE back: the small job's pages are all there (a stop
        # while they still come fails the move cleanly, which is not this case).
        time.sleep(0.8)
        os.kill(agent2, signal.SIGSTOP)
        stopped = True
        move.communicate(timeout=60)
        assert move.returncode != 0, "the move is given up while the target sleeps"
        bed.set_faults(1, "")
        _restart(bed, 1, converge=False)  # node2's agent is stopped
        _counts_on(job, 3)
    finally:
        if stopped:
            os.kill(agent2, signal.SIGCONT)
        if move.poll() is None:
            move.kill()
        move.wait()
    log1 = bed.node(1).log
    wait_until(
        "home refusing the woken target's commit",
        lambda: "refused the late commit" in log1.read_text(),
        30,
    )
    wait_until("no guest on node 2", lambda: not _guest_pids(bed, 2, job.pid), 20)
    assert len(_copies(token)) == 1
    assert job.node() == 0x640B
    _counts_on(job, 3)
