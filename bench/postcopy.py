"""Freeze time of stop-and-copy against post-copy, side by side in one run.

For each size: bare CRIU stop-and-copy (`criu dump` + `criu restore` on a one-CPU bed node, as
bench.freeze_time does), a pymosix stop-and-copy move and a pymosix post-copy move between two
bed nodes, taking turns, medians of --repeat. The two pymosix kinds run on the same bed with
`postcopy_min_mib` below the sizes: stop-and-copy is the fallback when fs.pipe-max-size is
below what CRIU's lazy mode needs (this machine's root lacks CAP_SYS_RESOURCE), post-copy runs
with it raised; the sysctl is restored at the end.

The freeze time of a pymosix move is the source's own figure (its log: from the freeze to the
target's RESTORED, i.e. until the job runs there); for post-copy also the time from the freeze
until the target had the job's last page (the source's log), while the job already ran.
Usage: python -m bench.postcopy [--sizes 256,1024] [--repeat 3]."""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench._common import plot, print_table, write_csv
from bench.freeze_time import bare_on_node, sized_job
from pymosix.migration.postcopy import PIPE_MAX_SIZE, PIPE_NEEDED
from pymosix.testbed import TestBed

FROZEN = re.compile(r"job (\d+) moved to node \d+ \(pid \d+ there\): frozen ([\d.]+) s")
LAST_PAGE = re.compile(r"job (\d+): the target has every page, ([\d.]+) s after the freeze")


def _from_log(log: Path, pattern: re.Pattern[str], job: int, timeout_s: float = 300) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for m in pattern.finditer(log.read_text()):
            if int(m.group(1)) == job:
                return float(m.group(2))
        time.sleep(0.05)
    raise RuntimeError(f"no {pattern.pattern!r} for job {job} in {log}")


def move(bed: TestBed, mb: int, lazy: bool) -> tuple[float, float | None]:
    """(freeze s, last page s or None) of one move of an mb-MB job from node1 to node2."""
    PIPE_MAX_SIZE.write_text(f"{PIPE_NEEDED if lazy else 1 << 20}\n")
    with sized_job(bed, mb) as p:
        time.sleep(1.5)  # the agent's memory figure (it decides post-copy) is a second old
        r = bed.exec(1, ["migrate", str(p.pid), "0x640c"], timeout_s=600)
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        log1 = bed.node(1).log
        frozen = _from_log(log1, FROZEN, p.pid)
        last = _from_log(log1, LAST_PAGE, p.pid) if lazy else None
        said = bed.node(2).log.read_text()
        if lazy != bool(re.search(rf"job {p.pid} arrived from node \d+ by post-copy", said)):
            raise RuntimeError(f"job {p.pid}: expected {'post' if lazy else 'stop-and'}-copy")
        return frozen, last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="256,1024")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    before = PIPE_MAX_SIZE.read_text().strip()
    rows = []
    bed = TestBed.up(
        nodes=2,
        name="bpostc",
        cpus_per_node=1,
        extra_args=["--set", "balance=false", "--set", f"postcopy_min_mib={min(sizes) // 2}"],
    )
    try:
        bed.wait_converged(30)
        for mb in sizes:
            bare_on_node(bed, 1, mb), move(bed, mb, False), move(bed, mb, True)  # warm-up
            runs: dict[str, list[float]] = {"bare": [], "stop": [], "post": [], "last": []}

            def post(n: int, runs: dict[str, list[float]] = runs) -> float:
                frozen, last = move(bed, n, True)
                assert last is not None
                runs["last"].append(last)
                return frozen

            measure: dict[str, Callable[[int], float]] = {
                "bare": lambda n: bare_on_node(bed, 1, n),
                "stop": lambda n: move(bed, n, False)[0],
                "post": post,
            }
            for i in range(args.repeat):
                order = list(measure)[i % 3 :] + list(measure)[: i % 3]
                for what in order:
                    runs[what].append(measure[what](mb))
                print(
                    f"{mb:5d} MB run {i + 1}: bare criu {runs['bare'][-1]:.3f} s, pymosix "
                    f"stop-and-copy {runs['stop'][-1]:.3f} s, post-copy {runs['post'][-1]:.3f} s "
                    f"(last page {runs['last'][-1]:.3f} s)",
                    flush=True,
                )
            b, s, pc, last = (statistics.median(runs[k]) for k in ("bare", "stop", "post", "last"))
            rows.append(
                {
                    "rss_mb": mb,
                    "bare_criu_s": b,
                    "pymosix_stop_and_copy_s": s,
                    "pymosix_postcopy_s": pc,
                    "postcopy_last_page_s": last,
                    "postcopy_to_bare": pc / b,
                }
            )
    finally:
        PIPE_MAX_SIZE.write_text(f"{before}\n")
        bed.down()
    print_table(rows)
    print(f"csv: {write_csv('postcopy', rows)}")
    xs = [r["rss_mb"] for r in rows]
    png = plot(
        "postcopy",
        "Freeze time (job not running), stop-and-copy and post-copy",
        "resident memory (MB)",
        "seconds",
        {
            "bare criu dump + restore (on a node)": (xs, [r["bare_criu_s"] for r in rows]),
            "pymosix stop-and-copy": (xs, [r["pymosix_stop_and_copy_s"] for r in rows]),
            "pymosix post-copy": (xs, [r["pymosix_postcopy_s"] for r in rows]),
            "post-copy: last page on the target": (xs, [r["postcopy_last_page_s"] for r in rows]),
        },
        logx=True,
    )
    print(f"png: {png}")


if __name__ == "__main__":
    main()
