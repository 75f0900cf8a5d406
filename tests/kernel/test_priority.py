"""The agent runs above its jobs, and a job keeps the nice value its user gave mosrun, at home
and after a move, as the user that started it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.kernel.jobs import Job, MakeBed

pytestmark = pytest.mark.kernel

#: Prints its count and its own nice value every 50 ms.
NICE_REPORT = """
import os, time
i = 0
while True:
    i += 1
    print(i, os.nice(0), flush=True)
    time.sleep(0.05)
"""


def reports(job: Job, n: int) -> list[tuple[int, int]]:
    out = []
    for _ in range(n):
        count, nice = job.lines.get(timeout=20).split()
        out.append((int(count), int(nice)))
    return out


def test_the_agent_runs_above_its_jobs(make_bed: MakeBed) -> None:
    bed = make_bed(2)
    for i in (1, 2):
        pid = bed.node(i).agent_pid
        assert os.getpriority(os.PRIO_PROCESS, pid) == -5, "config agent_nice, by default"
        autogroup = Path(f"/proc/{pid}/autogroup")
        if autogroup.exists():
            assert autogroup.read_text().split()[-1] == "-5", autogroup.read_text()


def test_a_users_niced_job_keeps_its_nice_value_across_a_move(
    make_bed: MakeBed, jobs: list[Job], user: str
) -> None:
    bed = make_bed(2)
    plain = Job(bed, 1, ["python3", "-c", NICE_REPORT], user=user)
    jobs.append(plain)
    assert {nice for _, nice in reports(plain, 3)} == {0}, "mosrun's 0, not the agent's -5"
    job = Job(bed, 1, ["python3", "-c", NICE_REPORT], user=user, wrapper=("nice", "-n", "7"))
    jobs.append(job)
    before = reports(job, 3)
    assert {nice for _, nice in before} == {7}
    r = job.migrate("0x640c")
    assert r.returncode == 0, r.stderr
    after = reports(job, 3)
    assert {nice for _, nice in after} == {7}, "CRIU restores it; the agent's -5 never leaks"
    counts = [c for c, _ in before + after]
    assert counts == list(range(counts[0], counts[0] + len(counts))), "the same process went on"
