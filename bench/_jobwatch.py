"""What the owner-returns benches take from a bed run for the simulator: when each job came to
exist and the CPU work it did (from where node1's jobs are and the CPU seconds each has used,
polled), and the CPU the batch got once the guests had left, over what its nodes allow.

Why the simulator is given these rather than the calibrated job: on this shared 2-vCPU VM what a
CPU second does varies by up to 20 % between runs (the vCPUs slow each other down), and four
mosruns' own start on a slow node takes 1.4 to 1.9 s, which the simulator does not model."""

from __future__ import annotations

import threading
import time
from typing import Any

from pymosix.testbed import TestBed


class JobWatch:
    """Polls node1's jobs every `every_s` into `rows` (t_s, job, node, state, cpu_s)."""

    def __init__(self, bed: TestBed, every_s: float = 0.2) -> None:
        self.bed, self.every_s = bed, every_s
        self.rows: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.t0 = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                jobs = self.bed.call(1, "jobs")["jobs"]
            except Exception as e:  # a busy agent: a gap in the timeline, not a failed bench
                print(f"timeline: {e}")
                continue
            t = round(time.monotonic() - self.t0, 2)
            self.rows.extend(
                {"t_s": t, "job": j["home_pid"], "node": j["node"], "state": j["state"]}
                | {"cpu_s": j["cpu_s"]}
                for j in jobs
            )


def arrivals_and_works(
    rows: list[dict[str, Any]], jobs: int
) -> tuple[list[float], list[float]] | None:
    """When each job was first seen and the CPU seconds it had used when last seen (0.2 s before
    its end at most), in the order they came; None if fewer than `jobs` were seen."""
    seen: dict[int, float] = {}
    used: dict[int, float] = {}
    for r in rows:
        seen.setdefault(r["job"], r["t_s"])
        used[r["job"]] = float(r["cpu_s"])
    order = sorted(seen, key=seen.__getitem__)[:jobs]
    if len(order) < jobs:
        return None
    return [seen[j] for j in order], [used[j] for j in order]


def cpu_share(rows: list[dict[str, Any]], after_s: float, jobs: int, cpus: float) -> float:
    """CPU the `jobs` jobs got together from `after_s` to the first one's end, over `cpus` (what
    the nodes they run on allow); NaN without such a window."""
    by_t: dict[float, dict[int, float]] = {}
    for r in rows:
        by_t.setdefault(r["t_s"], {})[r["job"]] = float(r["cpu_s"])
    ts = sorted(t for t, js in by_t.items() if t >= after_s and len(js) == jobs)
    if len(ts) < 2 or set(by_t[ts[0]]) != set(by_t[ts[-1]]):
        return float("nan")
    got = sum(by_t[ts[-1]][j] - by_t[ts[0]][j] for j in by_t[ts[0]])
    return got / (ts[-1] - ts[0]) / cpus
