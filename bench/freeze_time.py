"""Freeze time of a migration (from freeze to running on the target) against resident memory,
side by side with a bare local `criu dump` + `criu restore` of the same kind of process.

The baseline runs on a node of the test bed, so it has the CPUs a node has (one by default):
the same budget the job has on each side of a move. The same dump + restore with the whole
machine's CPUs is shown too (bare_machine_s), for reference.

The runs take turns, --repeat times per size after one unmeasured warm-up round, and the table
shows medians: on a virtual machine the first touch of memory the host has taken back costs
several times more than a warm one, so single runs vary two- to three-fold.
Usage: python -m bench.freeze_time [--sizes 1,64,256,1024] [--repeat 3]."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench._common import plot, print_table, write_csv
from pymosix.migration.criu import CriuDriver
from pymosix.migration.spawn import JobSpec, become_subreaper, spawn_job
from pymosix.testbed import TestBed

JOB = "import sys, time\nx = bytearray(b'\\x01') * ({mb} << 20)\nprint('ready', flush=True)\nwhile True: time.sleep(0.05)\n"


def wait_rss(pid: int, mb: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:") and int(line.split()[1]) >= mb * 1024 * 0.95:
                return
        time.sleep(0.05)
    raise RuntimeError(f"the job did not reach {mb} MB")


def bare(mb: int) -> float:
    """Dump (leave stopped) and restore on this node, the way pymosix freezes and restarts a job."""
    become_subreaper()
    r, w = os.pipe()
    # Pipes, as a pymosix job has: a /dev/null opened out here is on a mount the job's own
    # mount namespace does not list, and criu cannot dump it.
    null, in_w = os.pipe()
    pid = spawn_job(
        JobSpec(["python3", "-c", JOB.format(mb=mb)], env={"PATH": "/usr/bin:/bin"}), null, w, w
    )
    os.close(w)
    images = Path(tempfile.mkdtemp(prefix="pmx-bench-", dir="/dev/shm"))
    restored = 0
    try:
        os.read(r, 16)
        wait_rss(pid, mb)
        driver = CriuDriver()
        t0 = time.monotonic()
        asyncio.run(driver.dump(pid, images))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        # The job writes nothing after "ready": CRIU may give its stdout a fresh pipe.
        restored = asyncio.run(driver.restore(images, {})).pid
        return time.monotonic() - t0
    finally:
        for p in (pid, restored):
            if p:
                try:
                    os.kill(p, signal.SIGKILL)
                    os.waitpid(p, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
        os.close(r)
        os.close(null)
        os.close(in_w)
        shutil.rmtree(images, ignore_errors=True)


def bare_on_node(bed: TestBed, node: int, mb: int) -> float:
    """bare() in a process of its own inside the node (its network namespace and cpuset)."""
    argv = [sys.executable, "-m", "bench.freeze_time", "--bare-only", str(mb)]
    r = bed.exec(node, argv, timeout_s=600, cwd=str(Path(__file__).resolve().parent.parent))
    if r.returncode != 0:
        raise RuntimeError(f"bare criu on node {node} failed: {r.stderr.strip()[-300:]}")
    return float(r.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def sized_job(bed: TestBed, mb: int) -> Iterator[subprocess.Popen[bytes]]:
    """A mosrun job on node1 holding mb MB, once it holds them; killed afterwards."""
    p = bed.popen(
        1,
        ["mosrun", "python3", "-c", JOB.format(mb=mb)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert p.stdout is not None
        p.stdout.readline()
        row = next(j for j in bed.call(1, "jobs")["jobs"] if j["home_pid"] == p.pid)
        wait_rss(int(row["pid"]), mb)
        yield p
    finally:
        p.kill()
        p.wait()


def pymosix(bed: TestBed, mb: int) -> float:
    with sized_job(bed, mb) as p:
        r = bed.exec(1, ["migrate", "--json", str(p.pid), "0x640c"], timeout_s=600)
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        return float(json.loads(r.stdout)["seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="1,64,256,1024")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--cpus-per-node",
        type=int,
        default=1,
        help="CPUs each test-bed node may use (the bare run may use them all)",
    )
    ap.add_argument("--bare-only", type=int, metavar="MB", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_only:
        print(bare(args.bare_only))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    bed = TestBed.up(
        nodes=2,
        name="bfreeze",
        cpus_per_node=args.cpus_per_node,
        extra_args=["--set", "balance=false"],
    )
    try:
        bed.wait_converged(30)
        for mb in sizes:
            # Warm-up: memory, caches, criu's first start.
            bare_on_node(bed, 1, mb), bare(mb), pymosix(bed, mb)
            runs: dict[str, list[float]] = {"node": [], "machine": [], "pymosix": []}
            measure: dict[str, Callable[[int], float]] = {
                "node": lambda n: bare_on_node(bed, 1, n),
                "machine": bare,
                "pymosix": lambda n: pymosix(bed, n),
            }
            for i in range(args.repeat):
                # Each takes each place in the order once per three rounds: what ran just
                # before (and the memory it freed) changes the next run's time.
                order = list(measure)[i % 3 :] + list(measure)[: i % 3]
                for what in order:
                    runs[what].append(measure[what](mb))
                print(
                    f"{mb:5d} MB run {i + 1}: bare criu on a node {runs['node'][-1] * 1000:6.0f} ms "
                    f"(whole machine {runs['machine'][-1] * 1000:6.0f} ms), "
                    f"pymosix migration {runs['pymosix'][-1] * 1000:6.0f} ms",
                    flush=True,
                )
            bs, whole, ms = runs["node"], runs["machine"], runs["pymosix"]
            b, w, m = statistics.median(bs), statistics.median(whole), statistics.median(ms)
            rows.append(
                {
                    "rss_mb": mb,
                    "bare_criu_s": b,
                    "pymosix_s": m,
                    "ratio": m / b,
                    "bare_machine_s": w,
                    "ratio_machine": m / w,
                }
            )
            print(
                f"{mb:5d} MB median: ratio {m / b:.2f} to bare criu on a node, "
                f"{m / w:.2f} to bare criu on the whole machine",
                flush=True,
            )
    finally:
        bed.down()
    print_table(rows)
    print(f"csv: {write_csv('freeze_time', rows)}")
    png = plot(
        "freeze_time",
        "Freeze to running on the target",
        "resident memory (MB)",
        "seconds",
        {
            "bare criu dump + restore (on a node)": (
                [r["rss_mb"] for r in rows],
                [r["bare_criu_s"] for r in rows],
            ),
            "bare criu dump + restore (whole machine)": (
                [r["rss_mb"] for r in rows],
                [r["bare_machine_s"] for r in rows],
            ),
            "pymosix migration (to another node)": (
                [r["rss_mb"] for r in rows],
                [r["pymosix_s"] for r in rows],
            ),
        },
        logx=True,
    )
    print(f"png: {png}")


if __name__ == "__main__":
    main()
