"""A node's load as openMosix measured it: smoothed run-queue length, normalised by CPUs and speed.

Pure code: samples and the time step come in as arguments. A load of k means k reference CPUs'
worth of runnable work per CPU of this node, so k CPU-bound loops on a one-CPU reference node
(speed 10000) read about k, and the same loops on a node twice as fast read k/2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: openMosix's speed unit: a node of speed 10000 is the reference machine.
REFERENCE_SPEED = 10000
#: Default half-life of the smoothing. openMosix decayed its load over a few seconds; one
#: second follows a change of run queue within the 5 s the seed's scenario allows.
DEFAULT_HALF_LIFE_S = 1.0


@dataclass(frozen=True, slots=True)
class LoadEstimate:
    """A smoothed run-queue length (runnable tasks, not normalised) and when it was last fed."""

    runnable: float
    at_s: float


def decay_factor(dt_s: float, half_life_s: float) -> float:
    """The weight the old value keeps after dt_s: 0.5 ** (dt_s / half_life_s)."""
    if half_life_s <= 0:
        return 0.0
    return math.pow(0.5, max(0.0, dt_s) / half_life_s)


def smooth(
    prev: LoadEstimate | None,
    runnable: float,
    now_s: float,
    half_life_s: float = DEFAULT_HALF_LIFE_S,
) -> LoadEstimate:
    """Feed one instantaneous runnable count sampled at now_s; the first sample is taken as is.

    Time-step aware: a sample after a long gap weighs more than one after a short gap, so
    irregular sampling converges to the same value as regular sampling.
    """
    if prev is None:
        return LoadEstimate(float(runnable), now_s)
    keep = decay_factor(now_s - prev.at_s, half_life_s)
    return LoadEstimate(prev.runnable * keep + runnable * (1.0 - keep), max(now_s, prev.at_s))


def adjust(est: LoadEstimate, delta_runnable: float) -> LoadEstimate:
    """Shift the estimate at once by a known change: a job left (negative) or arrived (positive).

    openMosix adjusted its load when a process migrated instead of waiting for the decay; without
    this a node that just gave work away still looks loaded and gives away more.
    """
    return LoadEstimate(max(0.0, est.runnable + delta_runnable), est.at_s)


def normalise(runnable: float, ncpus: int, speed: int = REFERENCE_SPEED) -> float:
    """Runnable tasks -> load: per CPU, in reference CPUs (speed 10000 = 1.0)."""
    if ncpus <= 0 or speed <= 0:
        raise ValueError(f"ncpus and speed must be positive, got ncpus={ncpus} speed={speed}")
    return runnable / ncpus * REFERENCE_SPEED / speed


def runnable_per_cpu(load: float, speed: int = REFERENCE_SPEED) -> float:
    """Load -> runnable tasks per CPU (undoes the speed part of normalise)."""
    return load * speed / REFERENCE_SPEED


def job_load(cpus: float, ncpus: int, speed: int = REFERENCE_SPEED) -> float:
    """What a job wanting `cpus` CPUs adds to the load of a node with ncpus CPUs and this speed."""
    return normalise(cpus, ncpus, speed)


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """Cumulative CPU time counters of one /proc/stat ``cpu`` line, in clock ticks."""

    busy: int
    idle: int

    @property
    def total(self) -> int:
        """Busy plus idle ticks."""
        return self.busy + self.idle


def parse_cpu_line(line: str) -> CpuTimes:
    """Parse a /proc/stat ``cpu`` line; idle is idle + iowait (guest time is inside user)."""
    parts = line.split()
    if not parts or not parts[0].startswith("cpu"):
        raise ValueError(f"not a /proc/stat cpu line: {line!r}")
    try:
        values = [int(v) for v in parts[1:]]
    except ValueError:
        raise ValueError(f"not a /proc/stat cpu line: {line!r}") from None
    if len(values) < 4:
        raise ValueError(f"/proc/stat cpu line has {len(values)} fields, need at least 4: {line!r}")
    # user nice system idle iowait irq softirq steal [guest guest_nice]
    user, nice, system, idle = values[:4]
    iowait, irq, softirq, steal = [*values[4:8], 0, 0, 0, 0][:4]
    return CpuTimes(busy=user + nice + system + irq + softirq + steal, idle=idle + iowait)


def cpu_utilisation(before: CpuTimes, after: CpuTimes) -> float:
    """Busy fraction (0..1) of the CPU time between two samples; 0.0 when no time passed."""
    total = after.total - before.total
    if total <= 0:
        return 0.0
    busy = after.busy - before.busy
    return min(1.0, max(0.0, busy / total))
