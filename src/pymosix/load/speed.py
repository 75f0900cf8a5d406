"""This node's CPU speed in openMosix units, measured at agent start when `speed` is not set.

The benchmark: a fixed pure-Python integer loop (a linear congruential step and a branch per
iteration, what interpreted and branchy code does) timed on one core with the wall clock, best
of `runs` runs of about 50 ms each. The wall clock, not CPU time: a node whose CPU is shared or
throttled (a cgroup quota, a busy hypervisor) is slower for jobs, and CPU time would hide that.
Best of N because anything else on the machine only ever makes a run slower.

The scaling is pure (`speed_from_rate`): REFERENCE_RATE loop iterations per second read as
10000, openMosix's reference machine; REFERENCE_RATE was taken on the machine this project is
developed on (a 2.6 GHz Xeon VM, CPython 3.11: 6.6 to 6.9 M iterations/s best of 5), so that
machine class reads about 10000. The loop runs in the interpreter, so nodes of one cluster should
run the same Python (they do when they run the same pymosix install); where they cannot, set
`speed` by hand (`mosctl setspeed`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence

from pymosix.load.metric import REFERENCE_SPEED

#: Loop iterations per second that read as REFERENCE_SPEED (see the module docstring).
REFERENCE_RATE = 6.8e6
#: Speeds are clamped to what `mosctl setspeed` accepts.
MAX_SPEED = 10_000_000
#: Length of one timed run; long against a clock tick and a CFS period, short against start-up.
RUN_S = 0.05
RUNS = 5


def speed_from_rate(iterations_per_s: float, reference_rate: float = REFERENCE_RATE) -> int:
    """Loop rate -> openMosix speed: proportional, REFERENCE_RATE reads REFERENCE_SPEED."""
    if iterations_per_s <= 0 or reference_rate <= 0:
        raise ValueError("rates must be positive")
    return max(1, min(MAX_SPEED, round(REFERENCE_SPEED * iterations_per_s / reference_rate)))


def best_rate(samples: Sequence[tuple[int, float]]) -> float:
    """The fastest of (iterations, seconds) runs, in iterations per second."""
    rates = [n / s for n, s in samples if s > 0]
    if not rates:
        raise ValueError("no timed run")
    return max(rates)


def iterations_for(target_s: float, probe: tuple[int, float]) -> int:
    """Iterations that take about target_s, from one probe run (iterations, seconds)."""
    n, s = probe
    return max(1000, int(n * target_s / max(s, 1e-6)))


def loop(n: int) -> int:
    """The benchmark's work: n steps of a 32-bit LCG with a data-dependent branch."""
    x = 12345
    acc = 0
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
        if x & 0x10000:
            acc += 1
    return acc


def time_run(n: int, clock: Callable[[], float] = time.perf_counter) -> tuple[int, float]:
    """One timed run of the loop: (iterations, wall seconds)."""
    t0 = clock()
    loop(n)
    return n, clock() - t0


def measure_rate(runs: int = RUNS, run_s: float = RUN_S) -> float:
    """Best loop rate of `runs` runs of about run_s each, after a sizing probe."""
    n = iterations_for(run_s, time_run(20_000))
    return best_rate([time_run(n) for _ in range(runs)])


def measure_speed(runs: int = RUNS, run_s: float = RUN_S) -> int:
    """This node's speed in openMosix units (about 10000 on the reference machine class)."""
    return speed_from_rate(measure_rate(runs, run_s))


def main() -> None:
    """``python -m pymosix.load.speed [--json]``: print the measured speed and loop rate."""
    rate = measure_rate()
    if "--json" in sys.argv[1:]:
        print(json.dumps({"speed": speed_from_rate(rate), "rate": rate}))
    else:
        print(f"speed {speed_from_rate(rate)} ({rate / 1e6:.2f} M iterations/s)")


if __name__ == "__main__":
    main()
