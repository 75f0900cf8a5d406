"""Time to balance, the seed's scenario on the test bed: four endless loops started with `mosrun`
at node1 of two one-CPU nodes; the time from the fourth `mosrun` to the 2+2 split, median of
`--runs` runs on one bed, side by side with the simulator's time for the same scenario (the real
policy, seeds 0..runs-1). Also reported: the time from all four jobs existing (mosrun's own start,
a Python interpreter, is slow on a busy machine) to the split.

Usage: python -m bench.time_to_balance [--runs 5]. Writes bench/results/time_to_balance.{csv,png}.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from typing import Any

from bench._common import plot, print_table, write_csv
from pymosix.sim import scenarios
from pymosix.testbed import TestBed

LOOP = ["perl", "-e", "$i=1; while($i) { $i++; }"]  # the seed's omtest.sh


def where(bed: TestBed) -> list[int]:
    return sorted(int(j["node"]) for j in bed.call(1, "jobs")["jobs"])


def one_run(bed: TestBed, timeout_s: float = 60.0) -> tuple[float, float]:
    """(seconds from the 4th mosrun to 2+2, seconds from all four jobs existing to 2+2)."""
    two = {bed.node(1).node_id, bed.node(2).node_id}
    procs = [bed.popen(1, ["mosrun", *LOOP], stdout=subprocess.DEVNULL) for _ in range(4)]
    t0 = time.monotonic()
    t_jobs = None
    try:
        while time.monotonic() - t0 < timeout_s:
            nodes = where(bed)
            now = time.monotonic()
            if len(nodes) == 4 and t_jobs is None:
                t_jobs = now
            if len(nodes) == 4 and set(nodes) == two and nodes.count(min(two)) == 2:
                assert t_jobs is not None
                return now - t0, now - t_jobs
            time.sleep(0.02)
        raise RuntimeError(f"no 2+2 split within {timeout_s} s: {where(bed)}")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        deadline = time.monotonic() + 30
        while where(bed) and time.monotonic() < deadline:
            time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    bed = TestBed.up(nodes=2, name="bttb")
    rows: list[dict[str, Any]] = []
    try:
        bed.wait_converged(30)
        for i in range(args.runs):
            from_mosrun, from_jobs = one_run(bed)
            sim = scenarios.seed(nodes=2, seed=i).time_to_balance_s
            rows.append(
                {
                    "run": i,
                    "bed_from_4th_mosrun_s": from_mosrun,
                    "bed_from_jobs_s": from_jobs,
                    "sim_s": float("nan") if sim is None else sim,
                }
            )
            print(f"run {i}: {from_mosrun:.2f} s from the 4th mosrun ({from_jobs:.2f} s from jobs)")
    finally:
        bed.down()
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "run"}
    rows.append({"run": "median", **med})
    print_table(rows)
    print(
        f"time to balance, median of {args.runs}: {med['bed_from_4th_mosrun_s']:.2f} s from the "
        f"4th mosrun (goal < 2 s), {med['bed_from_jobs_s']:.2f} s from the jobs existing; "
        f"simulator {med['sim_s']:.2f} s"
    )
    print(f"csv: {write_csv('time_to_balance', rows)}")
    runs = [r for r in rows if r["run"] != "median"]
    xs = [float(r["run"]) for r in runs]
    png = plot(
        "time_to_balance",
        "Seed scenario: time to the 2+2 split (2 nodes, 1 CPU each)",
        "run",
        "seconds",
        {
            "bed, from the 4th mosrun": (xs, [r["bed_from_4th_mosrun_s"] for r in runs]),
            "bed, from all jobs existing": (xs, [r["bed_from_jobs_s"] for r in runs]),
            "simulator": (xs, [r["sim_s"] for r in runs]),
        },
    )
    print(f"png: {png}")


if __name__ == "__main__":
    main()
