"""The only reader of /proc and the cgroup tree for load: what runs on this node's CPUs.

A node's CPUs and processes are its cpuset's when it has one (the test bed gives each node its
own), else the host's. Runnable work is the number of tasks in state R among them, as the run
queue counts it, less the agent's own threads (it is running while it looks).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from pymosix.load.metric import CpuTimes, parse_cpu_line

CPUSET_ROOT = Path("/sys/fs/cgroup/cpuset")


@dataclass(frozen=True, slots=True)
class RawSample:
    """One look at the node: instantaneous counts, cumulative CPU times, memory."""

    runnable: int
    ncpus: int
    cpu: CpuTimes
    mem_total: int
    mem_free: int


def own_cpuset(proc: Path = Path("/proc"), root: Path = CPUSET_ROOT) -> Path | None:
    """This process's cgroup v1 cpuset directory, or None at the root or without cpusets."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "cpuset" in controllers.split(","):
            if path in ("", "/"):
                return None
            d = root / path.lstrip("/")
            return d if d.is_dir() else None
    return None


def parse_cpu_list(text: str) -> list[int]:
    """``0-2,5`` -> [0, 1, 2, 5]."""
    out: list[int] = []
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            out += range(int(lo), int(hi or lo) + 1)
    return out


def task_state(tid: int, proc: Path = Path("/proc")) -> str:
    try:
        return (proc / str(tid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


class Sampler:
    """Takes RawSamples of this node; built once per agent."""

    def __init__(self, proc: Path = Path("/proc"), cpuset_root: Path = CPUSET_ROOT) -> None:
        self.proc = proc
        self.cpuset = own_cpuset(proc, cpuset_root)
        if self.cpuset is not None:
            self.cpus = parse_cpu_list((self.cpuset / "cpuset.cpus").read_text())
        else:
            self.cpus = list(range(os.cpu_count() or 1))

    def own_tids(self) -> set[int]:
        try:
            return {int(t) for t in os.listdir(self.proc / str(os.getpid()) / "task")}
        except OSError:
            return set()

    def runnable(self) -> int:
        mine = self.own_tids()
        if self.cpuset is None:
            # Host-wide: the kernel's own count of running tasks, less ourselves.
            for line in (self.proc / "stat").read_text().splitlines():
                if line.startswith("procs_running"):
                    return max(0, int(line.split()[1]) - 1)
            return 0
        tids: set[int] = set()
        for tasks in self.cpuset.rglob("tasks"):
            try:
                tids.update(int(t) for t in tasks.read_text().split())
            except (OSError, ValueError):
                continue
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
