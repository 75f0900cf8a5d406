"""The only reader of /proc and the cgroup tree for load: what runs on this node's CPUs.

A node's CPUs and processes are its cgroup's when it is confined to one (the test bed gives each
node its own: a v1 or v2 cpuset, or a v2 cgroup plus CPU affinity; see `pymosix.cgroups`), else
the host's. Runnable work is the number of tasks in state R among them, as the run queue counts
it, less the agent's own threads (it is running while it looks) and CRIU's: a move's dump and
restore are its cost, which the policy counts as such, not load (a node taking a job in read
one to two tasks busier for the restore and pushed its own job away).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from pymosix import cgroups
from pymosix.cgroups import Hierarchy
from pymosix.load.metric import CpuTimes, parse_cpu_line
from pymosix.proctree import children


@dataclass(frozen=True, slots=True)
class RawSample:
    """One look at the node: instantaneous counts, cumulative CPU times, memory."""

    runnable: int
    ncpus: int
    cpu: CpuTimes
    mem_total: int
    mem_free: int


#: The command name of CRIU's processes, which are not counted as load.
CRIU_COMM = "criu"


def task_state(tid: int, proc: Path = Path("/proc")) -> str:
    """A task's state letter, "" if it is gone; "c" for a running CRIU task (not load)."""
    try:
        head, tail = (proc / str(tid) / "stat").read_text().rsplit(")", 1)
    except (OSError, ValueError):
        return ""
    state = tail.split()[0] if tail.split() else ""
    if state == "R" and head.split("(", 1)[-1] == CRIU_COMM:
        return "c"
    return state


#: How deep below the agent CRIU runs: its own child (dump, page server), or under a restore's
#: launcher and holder (migration/heldrestore.py).
CRIU_DEPTH = 3


def running_criu(pid: int, proc: Path = Path("/proc")) -> int:
    """Running CRIU processes below `pid` (the agent): those of this node's moves. It reads the
    kernel's lists of children a few levels down, not every process of the host (psutil's
    children() reads them all: 2 ms for 90 processes, four times a second)."""
    n, level = 0, [pid]
    for _ in range(CRIU_DEPTH):
        try:
            below = [c for p in level for c in children(p, proc)]
        except FileNotFoundError:  # a kernel without the lists: every process, then
            return _running_criu_psutil(pid)
        n += sum(1 for c in below if task_state(c, proc) == "c")
        level = below
    return n


def _running_criu_psutil(pid: int) -> int:
    n = 0
    with contextlib.suppress(psutil.Error):
        for p in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if p.name() == CRIU_COMM and p.status() == psutil.STATUS_RUNNING:
                    n += 1
    return n


class Sampler:
    """Takes RawSamples of this node; built once per agent."""

    def __init__(self, proc: Path = Path("/proc"), tree: Hierarchy | None = None) -> None:
        self.proc = proc
        self.tree = tree if tree is not None else cgroups.detect()
        self.cgroup = self.tree.own(proc)
        if self.cgroup is not None:
            self.cpus = self.tree.cpus(self.cgroup, proc)
        else:
            self.cpus = list(range(os.cpu_count() or 1))

    def own_tids(self) -> set[int]:
        try:
            return {int(t) for t in os.listdir(self.proc / str(os.getpid()) / "task")}
        except OSError:
            return set()

    def runnable(self) -> int:
        mine = self.own_tids()
        if self.cgroup is None:
            # Host-wide: the kernel's own count of running tasks, less ourselves.
            for line in (self.proc / "stat").read_text().splitlines():
                if line.startswith("procs_running"):
                    criu = running_criu(os.getpid(), self.proc)
                    return max(0, int(line.split()[1]) - 1 - criu)
            return 0
        tids = self.tree.tids(self.cgroup)
        return sum(1 for t in tids - mine if task_state(t, self.proc) == "R")

    def cpu_times(self) -> CpuTimes:
        busy = idle = 0
        wanted = {f"cpu{c}" for c in self.cpus}
        for line in (self.proc / "stat").read_text().splitlines():
            name = line.split(maxsplit=1)[0] if line else ""
            if name in wanted:
                t = parse_cpu_line(line)
                busy += t.busy
                idle += t.idle
        return CpuTimes(busy, idle)

    def sample(self) -> RawSample:
        mem = psutil.virtual_memory()
        return RawSample(
            self.runnable(), len(self.cpus), self.cpu_times(), mem.total, mem.available
        )
