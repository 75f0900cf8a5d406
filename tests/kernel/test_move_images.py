"""A job leaving its home whose target's RESTORED comes late (issue 16 item 7, found by
bench/soak.py): the source, home too, must neither take its home for lost (home keeps serving
the link the job left: migration/handover.py) nor leave the move's image directory behind,
also when the job is killed while its move waits; the job runs once, its output whole."""

from __future__ import annotations

import secrets
import time

import pytest

from pymosix.testbed import TestBed
from tests.kernel.conftest import wait_until
from tests.kernel.jobs import Job, MakeBed
from tests.kernel.test_reliability import COUNT, _copies, _counts_on, _guest_pids, _intact

pytestmark = pytest.mark.kernel

OUT = "/dev/shm/pymosix-*/out-*"


def _late_move(bed: TestBed, jobs: list[Job], user: str) -> tuple[Job, str]:
    """A job of node 1 moved to node 2, whose RESTORED waits 8 s: longer than the source's 5 s
    for it, so the source asks home (itself) how the move ended. Home has committed it."""
    token = f"pmx-img-{secrets.token_hex(4)}"
    job = Job(bed, 1, ["python3", "-c", COUNT, token], user=user)
    jobs.append(job)
    job.counts(2)
    bed.set_faults(2, "delay RESTORED 8\n")
    r = job.migrate("0x640c")
    assert r.returncode == 0, r.stdout + r.stderr
    assert job.node() == 0x640C
    return job, token


def test_a_late_restored_leaves_no_image_on_the_source_and_one_copy(
    make_bed: MakeBed, jobs: list[Job], user: str
) -> None:
    bed = make_bed(2)
    t0 = time.monotonic()
    job, token = _late_move(bed, jobs, user)
    wait_until("one copy, on node 2", lambda: _copies(token) == _guest_pids(bed, 2, job.pid), 30)
    wait_until("the source to drop its images", lambda: not bed.glob(1, OUT), 30)
    # Past the late RESTORED, the source's asking, and 10 s of a home silent since the commit
    # (hosted.HOME_SILENT_S, after which the source used to kill the job as an orphan).
    time.sleep(max(0.0, t0 + 16 - time.monotonic()))
    assert "lost its home" not in bed.node(1).log.read_text()
    assert not bed.glob(1, OUT)
    bed.set_faults(2, "")
    assert job.proc.poll() is None
    assert _copies(token) == _guest_pids(bed, 2, job.pid)
    _counts_on(job, 3)
    _intact(job)


def test_a_job_killed_while_its_move_waits_leaves_no_image_and_no_copy(
    make_bed: MakeBed, jobs: list[Job], user: str
) -> None:
    bed = make_bed(2)
    job, token = _late_move(bed, jobs, user)
    # mosrun goes while the source still waits for RESTORED: home kills the job on node 2 and
    # closes the link the job left; the source kills its frozen original, which ends the move
    # there. Its images go with it (a rollback of a job already gone used to fail first).
    job.proc.kill()
    wait_until("no copy left", lambda: not _copies(token), 30)
    wait_until(
        "no image left",
        lambda: not bed.glob(1, OUT) and not bed.glob(2, "/dev/shm/pymosix-*/in-*"),
        30,
    )
    bed.set_faults(2, "")
