"""A restored job outlives its agent too (issue 16 item 5, step 2): a guest survives a kill -9 of
its host's agent (the next agent takes it back and home lets it rejoin), a job that came back
home survives its home agent's, and a guest whose host's agent does not come back is gone, not
left running, before home says it is lost (docs/reliability.md)."""

from __future__ import annotations

import secrets
import signal
import time
from itertools import pairwise

import pytest

from pymosix.testbed import TestBed
from tests.kernel.conftest import wait_until
from tests.kernel.jobs import Job, MakeBed, burst, burst_job, every_line_once
from tests.kernel.test_reliability import _copies
from tests.kernel.test_restart import COUNT, _holders, _ints, _restart

pytestmark = pytest.mark.kernel


def _moved(job: Job, target: str, node: int) -> None:
    r = job.migrate(target)
    assert r.returncode == 0, r.stderr
    wait_until(f"the job on node {target}", lambda: job.node() == node, 20)


def _counting(
    bed: TestBed, jobs: list[Job], user: str | None = None, options: tuple[str, ...] = ()
) -> tuple[Job, str]:
    """COUNT started at node1 (as `user`), three numbers seen."""
    token = f"pmx-restart-{secrets.token_hex(4)}"
    argv = [*options, "python3", "-c", COUNT, token]
    job = Job(bed, 1, argv, user=user, cwd=str(bed.shared_dir) if user else None)
    jobs.append(job)
    job.counts(3)
    return job, token


def _each_once(job: Job) -> None:
    """Every number once, in order, none missing."""
    counts = _ints(job)
    assert counts[0] == 1
    assert all(b > a for a, b in pairwise(counts)), "no number repeated or out of order"
    skips = sum(b != a + 1 for a, b in pairwise(counts))
    assert not skips, f"{skips} runs of numbers missing"


@pytest.mark.parametrize("options", [[], ["-C", "2"]], ids=["plain", "checkpointed"])
def test_a_users_guest_outlives_a_kill_9_of_its_hosts_agent(
    make_bed: MakeBed, jobs: list[Job], user: str, options: list[str]
) -> None:
    """Checkpointed, it is also stopped from its adoption until home says yes: home restores
    no checkpoint of it meanwhile (that would make two copies)."""
    bed = make_bed(2)
    job, token = _counting(bed, jobs, user, tuple(options))
    _moved(job, "0x640c", 0x640C)
    (guest_pid,) = _copies(token)
    _restart(bed, 2)
    job.drain_ints()  # what it printed before the restart
    # The same process on node2, the same mosrun: it counts on, each number once.
    seen = job.counts(10)
    assert _copies(token) == [guest_pid]
    assert job.node() == 0x640C
    assert job.proc.poll() is None
    # Taken back for good: it moves home, and its output still reaches the same mosrun.
    _moved(job, "0x640b", 0x640B)
    assert job.counts(5)[-1] > seen[-1]
    job.proc.send_signal(signal.SIGUSR1)
    assert job.proc.wait(timeout=20) == 7
    assert job.proc.stderr is not None
    err = job.proc.stderr.read()
    assert b"the agent of node 0x640c restarted; the job goes on" in err
    assert b"checkpoint" not in err
    job.finish()
    _each_once(job)
    wait_until("no holder left", lambda: not _holders(bed, 1) and not _holders(bed, 2), 10)
    assert not _copies(token)


def test_a_job_that_came_back_home_outlives_its_home_agent(
    make_bed: MakeBed, jobs: list[Job], user: str
) -> None:
    """Restored at home by CRIU, not started there: its holder is the restore's."""
    bed = make_bed(2)
    job, token = _counting(bed, jobs, user)
    _moved(job, "0x640c", 0x640C)
    _moved(job, "0x640b", 0x640B)
    (host_pid,) = _copies(token)
    _restart(bed, 1)
    job.drain_ints()
    job.counts(10)
    assert _copies(token) == [host_pid]
    assert job.node() == 0x640B
    job.proc.send_signal(signal.SIGUSR1)
    assert job.proc.wait(timeout=20) == 7
    job.finish()
    _each_once(job)
    wait_until("no holder left", lambda: not _holders(bed, 1), 10)


def test_a_guest_whose_hosts_agent_does_not_come_back_is_gone_before_home_says_lost(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    bed = make_bed(2)
    job, token = _counting(bed, jobs)
    _moved(job, "0x640c", 0x640C)
    bed.kill_agent(2)
    t0 = time.monotonic()
    # Its holder kills it (no agent for GUEST_ALONE_S) before home gives up (REJOIN_S).
    wait_until("the guest gone", lambda: not _copies(token), 20)
    assert job.proc.poll() is None, "home still waits for node2's next agent"
    assert job.proc.wait(timeout=20) == 255
    took = time.monotonic() - t0
    assert job.proc.stderr is not None
    assert b"job lost with node 0x640c" in job.proc.stderr.read()
    assert 9 < took < 16, took
    wait_until("no holder on node2", lambda: not _holders(bed, 2), 10)


def test_a_users_job_away_outlives_a_kill_9_of_its_home_agent(
    make_bed: MakeBed, jobs: list[Job], user: str
) -> None:
    """Step 3: the next home agent meets the same mosrun and the same guest (away.py)."""
    bed = make_bed(2)
    job, token = _counting(bed, jobs, user)
    _moved(job, "0x640c", 0x640C)
    (guest_pid,) = _copies(token)
    _restart(bed, 1)
    job.drain_ints()  # what it printed before the restart
    seen = job.counts(10)
    assert _copies(token) == [guest_pid]
    assert job.node() == 0x640C  # mps at home, from the new agent
    _moved(job, "0x640b", 0x640B)
    assert job.counts(5)[-1] > seen[-1]
    job.proc.send_signal(signal.SIGUSR1)
    assert job.proc.wait(timeout=20) == 7
    assert job.proc.stderr is not None
    assert b"the agent restarted; the job goes on" in job.proc.stderr.read()
    job.finish()
    # What was on its way to the dying home agent is sent again (a CI run lost some before).
    _each_once(job)
    wait_until("no holder left", lambda: not _holders(bed, 1) and not _holders(bed, 2), 10)
    assert not _copies(token)


def test_a_job_away_whose_home_agent_does_not_come_back_is_gone(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    bed = make_bed(2)
    job, token = _counting(bed, jobs)
    _moved(job, "0x640c", 0x640C)
    bed.kill_agent(1)
    t0 = time.monotonic()
    # Its host asks home to take it back for a while (rejoin.TRY_S), then kills it.
    wait_until("the guest gone", lambda: not _copies(token), 20)
    assert time.monotonic() - t0 > 5
    assert job.proc.wait(timeout=40) == 255
    wait_until("no holder on node2", lambda: not _holders(bed, 2), 10)


def test_mps_lists_a_job_that_waits_for_its_mosrun_after_a_restart(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    bed = make_bed(2)
    job, token = _counting(bed, jobs)
    _moved(job, "0x640c", 0x640C)
    job.proc.send_signal(signal.SIGSTOP)  # mosrun cannot come back to the next agent yet
    try:
        _restart(bed, 1)
        row = job.row()
        assert row is not None
        assert (row["state"], row["node"]) == ("waiting", 0x640C), row
    finally:
        job.proc.send_signal(signal.SIGCONT)
    wait_until("re-attached", lambda: (job.row() or {}).get("state") == "running", 20)
    job.drain_ints()
    job.counts(5)
    assert len(_copies(token)) == 1


def test_a_restored_copy_not_yet_committed_dies_with_its_agent_at_once(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    """Its holder starts `moving`: a target agent killed before home's commit leaves it to no
    one, and the job goes on where it was (home aborts the move)."""
    bed = make_bed(2)
    job, token = _counting(bed, jobs)
    bed.set_faults(1, "delay ATTACH 6 once\n")  # home holds the commit back
    move = bed.popen(1, ["migrate", str(job.pid), "0x640c"])
    try:
        wait_until("the copy restored on node2", lambda: len(_copies(token)) == 2, 20)
        bed.kill_agent(2)
        t0 = time.monotonic()
        wait_until("the restored copy gone", lambda: len(_copies(token)) == 1, 10)
        assert time.monotonic() - t0 < 3
    finally:
        move.wait(timeout=60)
    wait_until("counting at home", lambda: job.node() == 0x640B, 20)
    job.drain_ints()
    job.counts(5)
    assert len(_copies(token)) == 1


def test_output_on_its_way_to_a_dying_home_agent_reaches_mosrun_once(
    make_bed: MakeBed, jobs: list[Job], user: str
) -> None:
    """8 MB of a job away, written while mosrun's own output is not read: it backs up through
    home's agent (its queues, its socket buffers) to the host. kill -9 of home's agent there:
    the host sends again what mosrun lacks (migration/outlog.py), and mosrun's reader gets every
    line once, in order, none missing."""
    bed = make_bed(2)
    job, marker = burst_job(bed, user)
    jobs.append(job)
    _moved(job, "0x640c", 0x640C)
    burst(job, marker)
    _restart(bed, 1)
    err = every_line_once(job)
    assert b"the agent restarted; the job goes on" in err
