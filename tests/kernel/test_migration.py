"""Transparent migration on a real bed: CRIU moves jobs between network namespaces while mosrun,
at home, keeps their stdio, signals and exit status."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.kernel.conftest import wait_until
from tests.kernel.jobs import COUNTER, STEP, Job, MakeBed

pytestmark = pytest.mark.kernel


def test_seed_loop_moves_there_and_back_and_keeps_counting(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    bed = make_bed(2)
    job = Job(bed, 1, ["perl", "-e", COUNTER])
    jobs.append(job)
    job.counts(3)
    for target, node in (("0x640c", 0x640C), ("home", 0x640B)):
        r = job.migrate(target)
        assert r.returncode == 0, r.stderr
        assert job.node() == node
        before = job.drain_ints()
        after = job.counts(3)
        seq = before + after
        # Every value once, in order: the same process went on counting, nothing restarted.
        assert all(b - a == STEP for a, b in itertools.pairwise(seq)), seq
    row = job.row()
    assert row is not None
    assert row["migrations"] == 2


HEAP = """
import hashlib, random, sys
random.seed(7)
heap = bytearray(random.randbytes(200 * 1024 * 1024))
print(hashlib.sha256(heap).hexdigest(), flush=True)
for line in sys.stdin:
    print(hashlib.sha256(heap).hexdigest(), flush=True)
"""


def test_large_heap_survives_three_migrations(make_bed: MakeBed, jobs: list[Job]) -> None:
    bed = make_bed(3)
    job = Job(bed, 1, ["python3", "-c", HEAP], stdin=True)
    jobs.append(job)
    first = job.lines.get(timeout=60).strip()
    assert job.proc.stdin is not None
    for target in ("0x640c", "0x640d", "home"):
        r = job.migrate(target)
        assert r.returncode == 0, r.stderr
        job.proc.stdin.write(b"check\n")
        job.proc.stdin.flush()
        assert job.lines.get(timeout=60).strip() == first
    row = job.row()
    assert row is not None
    assert row["migrations"] == 3


def test_stdin_to_stdout_loses_nothing_across_two_migrations(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    bed = make_bed(2)
    job = Job(bed, 1, ["cat"], stdin=True)
    jobs.append(job)
    sent = bytearray()
    stop = threading.Event()

    def feed() -> None:
        assert job.proc.stdin is not None
        n = 0
        while not stop.is_set() or n < 2000:
            line = f"line {n:06d} {'x' * (n % 50)}\n".encode()
            job.proc.stdin.write(line)
            job.proc.stdin.flush()
            sent.extend(line)
            n += 1
            if n % 100 == 0:
                time.sleep(0.005)
        job.proc.stdin.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    time.sleep(0.3)
    for target in ("0x640c", "home"):
        r = job.migrate(target)
        assert r.returncode == 0, r.stderr
        time.sleep(0.3)
    stop.set()
    feeder.join(timeout=30)
    assert job.proc.wait(timeout=30) == 0
    job._t.join(timeout=10)
    assert bytes(job.out) == bytes(sent)
    assert len(sent) > 50_000


SIGNALS = """
$| = 1;
$SIG{USR1} = sub { print "got USR1\\n"; };
print "ready\\n";
while (1) { sleep 1; }
"""


def test_signals_and_exit_status_after_migration(make_bed: MakeBed, jobs: list[Job]) -> None:
    bed = make_bed(2)
    job = Job(bed, 1, ["perl", "-e", SIGNALS])
    jobs.append(job)
    assert job.lines.get(timeout=10) == b"ready\n"
    assert job.migrate("0x640c").returncode == 0
    job.proc.send_signal(signal.SIGUSR1)
    assert job.lines.get(timeout=10) == b"got USR1\n"
    job.proc.send_signal(signal.SIGTERM)
    assert job.proc.wait(timeout=10) == 128 + signal.SIGTERM

    status = Job(bed, 1, ["sh", "-c", 'read x; echo "got $x"; exit 7'], stdin=True)
    jobs.append(status)
    assert status.migrate("0x640c").returncode == 0
    assert status.proc.stdin is not None
    status.proc.stdin.write(b"hello\n")
    status.proc.stdin.close()
    assert status.proc.wait(timeout=10) == 7
    status._t.join(timeout=5)
    assert bytes(status.out) == b"got hello\n"


def test_kill_9_of_mosrun_leaves_no_process_anywhere(make_bed: MakeBed, jobs: list[Job]) -> None:
    bed = make_bed(2)
    job = Job(bed, 1, ["perl", "-e", COUNTER])
    jobs.append(job)
    assert job.migrate("0x640c").returncode == 0
    guest = json.loads(bed.exec(2, ["mps", "--json"]).stdout)["jobs"]
    [row] = [g for g in guest if g["home_pid"] == job.pid]
    remote_pid = int(row["pid"])
    assert Path(f"/proc/{remote_pid}").exists()
    job.proc.kill()
    wait_until("the job is gone from node2", lambda: not Path(f"/proc/{remote_pid}").exists(), 10.0)
    wait_until(
        "node2 lists no guest",
        lambda: json.loads(bed.exec(2, ["mps", "--json"]).stdout)["jobs"] == [],
        10.0,
    )
    wait_until(
        "node1 lists no job",
        lambda: json.loads(bed.exec(1, ["mps", "--json"]).stdout)["jobs"] == [],
        10.0,
    )


def counting(setup: str) -> str:
    """A Python job that does `setup`, then prints 1, 2, 3, ... every 50 ms."""
    loop = "i = 0\nwhile True:\n    i += 1\n    print(i, flush=True)\n    time.sleep(0.05)\n"
    return f"import time\n{setup}\n{loop}"


BIG = counting('x = bytearray(b"\\x01") * (400 << 20)')


def test_losing_the_target_mid_move_leaves_the_job_running_where_it_was(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    bed = make_bed(2)
    job = Job(bed, 1, ["python3", "-c", BIG])
    jobs.append(job)
    job.counts(2)
    move = bed.popen(
        1, ["migrate", str(job.pid), "0x640c"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        # The target's page server is writing the job's memory: the job is frozen at home.
        wait_until(
            "pages arriving on node2",
            lambda: bool(bed.glob(2, "/dev/shm/pymosix-640c-*/in-*/pages-*.img")),
            30.0,
            poll_s=0.005,
        )
        bed.kill_agent(2)
        _, err = move.communicate(timeout=60)
    finally:
        if move.poll() is None:
            move.kill()
        move.wait()
    assert move.returncode != 0
    assert b"node" in err
    assert job.node() == 0x640B
    before = job.drain_ints()
    after = job.counts(3)
    assert after == list(range(after[0], after[0] + 3))
    assert not before or after[0] == before[-1] + 1, "the job went on from where it was"
    # The node comes back, clears what the killed agent left, and the job can move there.
    bed.start_agent(2)
    bed.wait_converged(30)
    assert not [
        d
        for d in bed.glob(2, "/dev/shm/pymosix-640c-*")
        if not d.endswith(f"-{bed.node(2).agent_pid}")
    ]
    r = job.migrate("0x640c")
    assert r.returncode == 0, r.stderr
    assert job.node() == 0x640C
    job.drain_ints()
    job.counts(2)


TCP = counting(
    "import socket\n"
    'srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()\n'
    "cli = socket.create_connection(srv.getsockname()); conn, _ = srv.accept()"
)


def test_job_holding_a_tcp_connection_is_refused_and_keeps_running(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    bed = make_bed(2)
    job = Job(bed, 1, ["python3", "-c", TCP])
    jobs.append(job)
    job.counts(2)
    r = job.migrate("0x640c")
    assert r.returncode != 0
    assert "TCP" in r.stderr, r.stderr
    assert "cannot move" in r.stderr
    assert job.node() == 0x640B
    a = job.drain_ints()
    b = job.counts(3)
    seq = a + b
    assert all(y == x + 1 for x, y in itertools.pairwise(seq))
