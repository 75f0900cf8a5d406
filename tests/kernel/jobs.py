"""A mosrun job on a bed node, its output read in the background: what migration tests drive."""

from __future__ import annotations

import json
import queue
import secrets
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from pymosix.testbed import TestBed
from tests.kernel.conftest import wait_until

MakeBed = Callable[..., TestBed]
STEP = 500_000
#: Holds the file named by argv[1] open, burns CPU and prints a count now and then.
HOLDS = """
import sys
f = open(sys.argv[1])
i = 0
while True:
    i += 1
    if i % 300000 == 0:
        print(i // 300000, flush=True)
"""
COUNTER = f'$|=1; $i=1; while($i) {{ $i++; print "$i\\n" if $i % {STEP} == 0; }}'


class Job:
    """mosrun CMD started at a node of the bed, its output read in the background."""

    def __init__(
        self,
        bed: TestBed,
        node: int,
        argv: list[str],
        stdin: bool = False,
        user: str | None = None,
        cwd: str | None = None,
        wrapper: tuple[str, ...] = (),
        pumped: bool = True,
    ) -> None:
        """pumped=False: mosrun's output is left unread (it backs up to the job) until pump()."""
        self.bed = bed
        self.home = node
        self.user = user
        self.proc = bed.popen(
            node,
            [*wrapper, "mosrun", *argv],  # a wrapper that execs mosrun: `nice -n 7`
            user=user,
            cwd=cwd,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.out = bytearray()
        self._t = threading.Thread(target=self._pump, daemon=True)
        if pumped:
            self._t.start()
        try:
            wait_until("the job to start", lambda: self.row() is not None, 10.0)
        except BaseException:
            self.finish()
            raise

    def pump(self) -> None:
        """Read mosrun's output from now on (a job made with pumped=False)."""
        if self._t.ident is None:
            self._t.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            self.out += line
            self.lines.put(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def row(self) -> dict[str, object] | None:
        jobs = json.loads(self.bed.exec(self.home, ["mps", "--json"], user=self.user).stdout)[
            "jobs"
        ]
        return next((j for j in jobs if j["home_pid"] == self.pid), None)

    def node(self) -> int:
        row = self.row()
        assert row is not None
        return int(str(row["node"]))

    def migrate(self, target: str) -> subprocess.CompletedProcess[str]:
        return self.bed.exec(self.home, ["migrate", str(self.pid), target], user=self.user)

    def next_int(self, timeout_s: float = 20.0) -> int:
        return int(self.lines.get(timeout=timeout_s))

    def counts(self, n: int) -> list[int]:
        return [self.next_int() for _ in range(n)]

    def drain_lines(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.lines.get_nowait())
            except queue.Empty:
                return out

    def drain_ints(self) -> list[int]:
        out = []
        while True:
            try:
                out.append(int(self.lines.get_nowait()))
            except queue.Empty:
                return out

    def finish(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=20)
        if self._t.is_alive():
            self._t.join(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


#: Waits for a line on stdin, then writes BURST_LINES numbered lines of 100 bytes as fast as it
#: can, then touches argv[1] and waits for SIGUSR1 (exit 7).
BURST_LINES = 80_000
BURST = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGUSR1, lambda *_: sys.exit(7))\n"
    "sys.stdin.readline()\n"
    f"for i in range(1, {BURST_LINES} + 1):\n"
    "    sys.stdout.write(f'{i:09d} ' + 'x' * 89 + '\\n')\n"
    "sys.stdout.flush()\n"
    "open(sys.argv[1], 'w').close()\n"
    "while True:\n"
    "    time.sleep(1)\n"
)


def burst_job(bed: TestBed, user: str) -> tuple[Job, Path]:
    """BURST at node1 as `user`, mosrun's output left unread; and the file it touches when done."""
    marker = bed.shared_dir / f"pmx-burst-{secrets.token_hex(4)}"
    argv = ["python3", "-c", BURST, str(marker)]
    job = Job(bed, 1, argv, stdin=True, user=user, cwd=str(bed.shared_dir), pumped=False)
    return job, marker


def burst(job: Job, marker: Path) -> None:
    """The job writes its 8 MB: it backs up from mosrun, through the agents, to the job."""
    assert job.proc.stdin is not None
    job.proc.stdin.write(b"go\n")
    job.proc.stdin.flush()
    wait_until("the job to have written it all", marker.exists, 60)


def every_line_once(job: Job) -> bytes:
    """Read mosrun's output from now on: every line once, in order, none missing, no gap said;
    then the job ends (exit 7). mosrun's stderr."""
    job.pump()
    last = f"{BURST_LINES:09d} {'x' * 89}\n".encode()
    try:
        wait_until("the last line", lambda: job.out.endswith(last), 60)
    except BaseException:
        job.proc.kill()
        assert job.proc.stderr is not None
        err = job.proc.stderr.read()
        job.finish()
        tail = bytes(job.out[-120:])
        log = job.bed.node(job.home).log.read_text().splitlines()[-15:]
        raise AssertionError(
            f"no last line: {len(job.out)} bytes, ending {tail!r}; mosrun exited "
            f"{job.proc.returncode}: {err!r}; the home agent's log ends:\n" + "\n".join(log)
        ) from None
    job.proc.send_signal(signal.SIGUSR1)
    assert job.proc.wait(timeout=20) == 7
    assert job.proc.stderr is not None
    err = job.proc.stderr.read()
    job.finish()
    numbers = [int(line.split()[0]) for line in bytes(job.out).splitlines()]
    first_wrong = next((i for i, n in enumerate(numbers) if n != i + 1), None)
    assert numbers == list(range(1, BURST_LINES + 1)), f"{len(numbers)} lines; {first_wrong=}"
    assert b"lost" not in err
    return err
