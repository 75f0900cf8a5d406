"""A mosrun job on a bed node, its output read in the background: what migration tests drive."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from collections.abc import Callable

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
