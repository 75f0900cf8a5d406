"""A host node's death costs at most the last checkpoint interval (issue 16, item 6): the job
goes on at home from its checkpoint, its stdout without a gap or a repeat, one copy only."""

from __future__ import annotations

import secrets
import stat
import threading
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import pytest

from pymosix.testbed import TestBed, kernel
from tests.kernel.conftest import wait_until
from tests.kernel.jobs import Job, MakeBed
from tests.kernel.test_reliability import _copies, _guest_pids, _state

pytestmark = pytest.mark.kernel

#: Counts 1, 2, 3, ... every 0.1 s; exits with status 7 once the file argv[2] exists.
COUNT = (
    "import os, sys, time\n"
    "i = 0\n"
    "while not os.path.exists(sys.argv[2]):\n"
    "    i += 1\n"
    "    print(i, flush=True)\n"
    "    time.sleep(0.1)\n"
    "sys.exit(7)\n"
)


def _checkpoints(bed: TestBed, home_pid: int) -> Path:
    return Path(bed.node(1).dir) / "state" / "checkpoints" / str(home_pid)


def _ints(job: Job) -> list[int]:
    return [int(x) for x in bytes(job.out).split()]


def _start_on_node2(
    bed: TestBed, jobs: list[Job], options: list[str], user: str | None = None
) -> tuple[Job, str, Path]:
    token = f"pmx-ckpt-{secrets.token_hex(4)}"
    stop = bed.shared_dir / f"stop-{token}"
    argv = [*options, "python3", "-c", COUNT, token, str(stop)]
    job = Job(bed, 1, argv, user=user, cwd=str(bed.shared_dir) if user else None)
    jobs.append(job)
    job.counts(2)
    r = job.migrate("0x640c")
    assert r.returncode == 0, r.stderr
    wait_until("the guest on node2", lambda: _copies(token) == _guest_pids(bed, 2, job.pid), 20)
    return job, token, stop


def _kill_node(bed: TestBed, node: int) -> None:
    """The node dies outright: its link (a dead node sends no FIN: home hears silence, and
    does not wait for a restarted agent), its agent and every other process of its namespace.
    The link stays down: a dead node does not come back."""
    kernel.ip("link", "set", bed.node(node).veth, "down")
    bed.kill_agent(node)
    kernel.kill_pids(kernel.netns_pids(bed.node(node).netns))


def _held_checkpoint(bed: TestBed, job: Job) -> Path:
    """Wait for a complete checkpoint at home; check it is root's alone; return its directory."""
    root = _checkpoints(bed, job.pid)
    wait_until("a checkpoint at home", lambda: bool(list(root.glob("ckpt-*"))), 20)
    held = next(root.glob("ckpt-*"))
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE(held.stat().st_mode) == 0o700
    files = list(held.iterdir())
    assert any(f.name.startswith("pages-") for f in files), files
    for f in files:
        st = f.lstat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600), f
    return held


@pytest.mark.parametrize("who", ["root", "user"])
def test_a_killed_host_costs_at_most_the_last_checkpoint(
    make_bed: MakeBed, jobs: list[Job], make_user: Callable[..., str], who: str
) -> None:
    bed = make_bed(3)
    user = make_user() if who == "user" else None
    job, token, stop = _start_on_node2(bed, jobs, ["-C", "2"], user)
    _held_checkpoint(bed, job)
    # It runs on past the checkpoint: what it prints from here on, it will print again.
    last = max(_ints(job))
    wait_until("output after the checkpoint", lambda: max(_ints(job)) >= last + 5, 20)
    _kill_node(bed, 2)
    t0 = time.monotonic()
    wait_until("the job back at home", lambda: job.node() == 0x640B, 30)
    took = time.monotonic() - t0
    assert took < 15, took
    assert len(_copies(token)) == 1
    # It goes on counting at home, and is movable again.
    n = max(_ints(job))
    wait_until("counting at home", lambda: max(_ints(job)) >= n + 10, 20)
    r = job.migrate("0x640d")
    assert r.returncode == 0, r.stderr
    n = max(_ints(job))
    wait_until("counting on node 3", lambda: max(_ints(job)) >= n + 10, 20)
    stop.touch()
    assert job.proc.wait(timeout=30) == 7
    assert job.proc.stderr is not None
    err = job.proc.stderr.read().decode()
    assert "node 0x640c lost: the job goes on at home from a checkpoint of" in err, err
    job.finish()
    ints = _ints(job)
    # Every number once, in order, from 1: no gap, no repeat.
    assert ints == list(range(1, len(ints) + 1)), [(a, b) for a, b in pairwise(ints) if b != a + 1]
    assert "bytes it wrote again" in bed.node(1).log.read_text()
    wait_until("the checkpoints removed", lambda: not _checkpoints(bed, job.pid).exists(), 10)
    for node in (1, 3):
        assert not bed.glob(node, "/dev/shm/pymosix-*/ckpt-*")
    assert not _copies(token)


def test_without_a_checkpoint_a_killed_host_loses_the_job_with_255(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    bed = make_bed(2)
    job, token, _ = _start_on_node2(bed, jobs, [])
    _kill_node(bed, 2)
    t0 = time.monotonic()
    assert job.proc.wait(timeout=30) == 255
    took = time.monotonic() - t0
    assert job.proc.stderr is not None
    assert b"job lost with node 0x640c" in job.proc.stderr.read()
    assert took < 7, took
    assert not _copies(token)
    assert not _checkpoints(bed, job.pid).exists()


def test_a_cut_off_host_stops_its_copy_and_never_runs_it_on(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    bed = make_bed(2)
    job, token, stop = _start_on_node2(bed, jobs, ["-C", "2"])
    _held_checkpoint(bed, job)
    old = _guest_pids(bed, 2, job.pid)
    veth = bed.node(2).veth
    kernel.ip("link", "set", veth, "down")
    try:
        # Node 2 hears its home no more and stops the job before home gives node 2 up.
        wait_until("node 2's copy stopped", lambda: {_state(p) for p in old} == {"T"}, 10)
        wait_until("the job back at home", lambda: job.node() == 0x640B, 30)
        assert {_state(p) for p in old} == {"T"}, "it did not run on meanwhile"
    finally:
        kernel.ip("link", "set", veth, "up", check=False)
    # The link back: home has closed that connection, and node 2 drops its copy.
    wait_until("node 2's copy gone", lambda: all(_state(p) in ("gone", "Z") for p in old), 20)
    assert len(_copies(token)) == 1
    n = max(_ints(job))
    wait_until("counting at home", lambda: max(_ints(job)) >= n + 10, 20)
    stop.touch()
    assert job.proc.wait(timeout=30) == 7
    job.finish()
    ints = _ints(job)
    assert ints == list(range(1, len(ints) + 1))


#: Echoes each line of its stdin; exits with status 5 at its end.
ECHO = "import sys\nfor line in sys.stdin:\n    print(line.strip(), flush=True)\nsys.exit(5)\n"


def test_stdin_it_read_since_the_checkpoint_is_read_again_and_each_line_echoed_once(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    bed = make_bed(2)
    token = f"pmx-ckpt-{secrets.token_hex(4)}"
    job = Job(bed, 1, ["-C", "2", "python3", "-c", ECHO, token], stdin=True)
    jobs.append(job)
    stop, written = threading.Event(), [0]

    def feed() -> None:
        assert job.proc.stdin is not None
        while not stop.is_set():
            written[0] += 1
            job.proc.stdin.write(f"{written[0]}\n".encode())
            job.proc.stdin.flush()
            time.sleep(0.05)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        job.counts(2)
        assert job.migrate("0x640c").returncode == 0
        wait_until("the guest on node2", lambda: _guest_pids(bed, 2, job.pid) != [], 20)
        _held_checkpoint(bed, job)
        last = max(_ints(job))
        wait_until("input read after the checkpoint", lambda: max(_ints(job)) >= last + 10, 20)
        _kill_node(bed, 2)
        wait_until("the job back at home", lambda: job.node() == 0x640B, 30)
        n = max(_ints(job))
        wait_until("echoing at home", lambda: max(_ints(job)) >= n + 10, 20)
    finally:
        stop.set()
        feeder.join(timeout=10)
    assert job.proc.stdin is not None
    job.proc.stdin.close()
    assert job.proc.wait(timeout=30) == 5
    job.finish()
    ints = _ints(job)
    assert ints == list(range(1, written[0] + 1)), [(a, b) for a, b in pairwise(ints) if b != a + 1]
    assert not _copies(token)
