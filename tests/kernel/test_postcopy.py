"""Post-copy moves with real CRIU: a big job runs on the target once its small images arrived,
its memory follows over the agents' channel; small jobs and nodes that cannot still move by
stop-and-copy; a target that dies mid-transfer never leaves two copies."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymosix.migration.postcopy import PIPE_MAX_SIZE, PIPE_NEEDED
from pymosix.testbed import TestBed
from tests.kernel.conftest import wait_until
from tests.kernel.jobs import Job, MakeBed
from tests.kernel.test_reliability import _copies, _guest_pids

pytestmark = pytest.mark.kernel

#: Keeps checksumming a heap of MB megabytes and prints a counter and whether the sum held.
CHECKSUM = """
import hashlib, sys
heap = bytearray(range(256)) * (({mb} << 20) // 256)
want = hashlib.sha256(heap).hexdigest()
i = 0
while True:
    i += 1
    print(i, "ok" if hashlib.sha256(heap).hexdigest() == want else "BAD", flush=True)
"""
POSTCOPY_ABOVE = ["--set", "postcopy_min_mib=200"]
#: Seconds for what waits on the lazy transfer (pages fetched one fault at a time when busy).
SLOW_S = 180.0


def _set_pipe_max(value: int) -> Iterator[None]:
    before = PIPE_MAX_SIZE.read_text().strip()
    PIPE_MAX_SIZE.write_text(f"{value}\n")
    try:
        yield
    finally:
        PIPE_MAX_SIZE.write_text(f"{before}\n")


@pytest.fixture
def big_pipes() -> Iterator[None]:
    """fs.pipe-max-size as CRIU's lazy mode needs it without CAP_SYS_RESOURCE."""
    yield from _set_pipe_max(max(PIPE_NEEDED, int(PIPE_MAX_SIZE.read_text())))


@pytest.fixture
def small_pipes() -> Iterator[None]:
    """The kernel's default fs.pipe-max-size: too small for CRIU's lazy mode."""
    yield from _set_pipe_max(1 << 20)


def _start(bed: TestBed, jobs: list[Job], mb: int, user: str | None = None) -> tuple[Job, str]:
    token = f"pmx-pc-{secrets.token_hex(4)}"
    job = Job(bed, 1, ["python3", "-c", CHECKSUM.format(mb=mb), token], user=user)
    jobs.append(job)
    _counts(job, 1, timeout_s=60)
    return job, token


def _counts(job: Job, n: int, timeout_s: float = 30.0) -> list[int]:
    """n more lines of the job, each with a good checksum; the counter goes up by one."""
    out = []
    for _ in range(n):
        count, state = job.lines.get(timeout=timeout_s).decode().split()
        assert state == "ok", f"line {count}: the heap's checksum changed"
        out.append(int(count))
    return out


def _counts_on(job: Job, n: int, timeout_s: float = 30.0) -> None:
    seq = [int(ln.split()[0]) for ln in job.drain_lines()] + _counts(job, n, timeout_s)
    assert seq == list(range(seq[0], seq[0] + len(seq))), seq


def test_a_users_big_job_moves_by_postcopy_and_its_heap_stays_intact(
    make_bed: MakeBed, jobs: list[Job], user: str, big_pipes: None
) -> None:
    bed = make_bed(2, extra_args=POSTCOPY_ABOVE)
    job, token = _start(bed, jobs, 300, user=user)
    r = job.migrate("0x640c")
    assert r.returncode == 0, r.stderr
    log2 = bed.node(2).log
    assert f"job {job.pid} arrived from node" in log2.read_text()
    assert "by post-copy" in log2.read_text(), log2.read_text()[-3000:]
    # It runs on node2 while its frozen original on node1 may still serve its memory. Each
    # pass over its heap faults in every page it lacks, a round trip each: on a machine busy
    # with other work that takes far longer than the background transfer does on a quiet one.
    assert _guest_pids(bed, 2, job.pid)
    _counts_on(job, 2, timeout_s=SLOW_S)
    every_page = f"job {job.pid}: every page in"
    wait_until("every page on node2", lambda: every_page in log2.read_text(), SLOW_S)
    wait_until("the original gone", lambda: len(_copies(token)) == 1, 20)
    _counts_on(job, 3)
    # And home again, by post-copy too: the restored job's memory dumps like any other.
    r = job.migrate("home")
    assert r.returncode == 0, r.stderr
    wait_until("home again", lambda: job.node() == 0x640B, 20)
    _counts_on(job, 3, timeout_s=SLOW_S)
    wait_until("one copy", lambda: len(_copies(token)) == 1, SLOW_S)


def test_a_job_below_the_threshold_moves_by_stop_and_copy(
    make_bed: MakeBed, jobs: list[Job], big_pipes: None
) -> None:
    bed = make_bed(2, extra_args=POSTCOPY_ABOVE)
    job, token = _start(bed, jobs, 40)
    r = job.migrate("0x640c")
    assert r.returncode == 0, r.stderr
    wait_until("the guest on node2", lambda: _copies(token) == _guest_pids(bed, 2, job.pid), 20)
    assert "by post-copy" not in bed.node(2).log.read_text()
    assert "post-copy" not in bed.node(1).log.read_text()
    _counts_on(job, 3)


def test_pipes_too_small_fall_back_to_stop_and_copy_and_say_why(
    make_bed: MakeBed, jobs: list[Job], small_pipes: None
) -> None:
    bed = make_bed(2, extra_args=POSTCOPY_ABOVE)
    job, token = _start(bed, jobs, 300)
    r = job.migrate("0x640c")
    assert r.returncode == 0, r.stderr
    wait_until("the guest on node2", lambda: _copies(token) == _guest_pids(bed, 2, job.pid), 20)
    assert "by post-copy" not in bed.node(2).log.read_text()
    said = bed.node(1).log.read_text()
    assert f"job {job.pid} moves by stop-and-copy, not post-copy: fs.pipe-max-size" in said
    assert f"sysctl fs.pipe-max-size={PIPE_NEEDED}" in said
    _counts_on(job, 3)


def test_a_target_killed_mid_transfer_leaves_no_second_copy_and_mosrun_says_lost(
    make_bed: MakeBed, jobs: list[Job], big_pipes: None
) -> None:
    bed = make_bed(2, extra_args=POSTCOPY_ABOVE)
    # Big enough that its memory takes a few seconds to follow (the kill must fall within).
    job, token = _start(bed, jobs, 600)
    r = job.migrate("0x640c")
    assert r.returncode == 0, r.stderr
    log2 = bed.node(2).log
    # Committed and running on node2, its memory still coming: node2's agent dies (kill -9).
    bed.kill_agent(2)
    assert f"job {job.pid}: every page in" not in log2.read_text(), "the transfer ended first"
    # The copy on node2 cannot go on without its memory: its watcher kills it. The frozen
    # original on node1 is older than what node2's copy did: dropped, never resumed.
    assert job.proc.wait(timeout=30) == 255
    assert job.proc.stderr is not None
    assert b"job lost with node 0x640c" in job.proc.stderr.read()
    wait_until("no copy left", lambda: not _copies(token), 20)
    assert "the page transfer broke" in bed.node(1).log.read_text()


def test_doctor_says_whether_postcopy_is_available(small_pipes: None) -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "pymosix", "doctor"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert "post-copy" in r.stdout
    assert f"sysctl fs.pipe-max-size={PIPE_NEEDED}" in r.stdout


def test_a_postcopy_move_home_aborts_rolls_back_and_the_heap_stays_intact(
    make_bed: MakeBed, jobs: list[Job], big_pipes: None
) -> None:
    bed = make_bed(2, extra_args=POSTCOPY_ABOVE)
    job, token = _start(bed, jobs, 300)
    # Home (node1, the source too) never records the target's ATTACH: the move cannot commit.
    bed.set_faults(1, "drop ATTACH\n")
    r = job.migrate("0x640c")
    assert r.returncode != 0
    assert "it goes on here" in r.stderr, r.stderr
    wait_until(
        "node2's word on it",
        lambda: f"could not take job {job.pid} by post-copy" in bed.node(2).log.read_text(),
        10,
    )
    bed.set_faults(1, "")
    # The original, stopped with criu gone, resumed by its agent alone: one copy, intact.
    wait_until("one copy", lambda: len(_copies(token)) == 1, 30)
    assert job.node() == 0x640B
    _counts_on(job, 3)
    assert len(_copies(token)) == 1
