"""No job is ever lost, none is ever doubled (issue 16): moves that fail after the freeze,
lost answers, silent hosts, frozen targets, agents that stop."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from pymosix.migration.cantmove import tree_pids
from pymosix.testbed import TestBed
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
