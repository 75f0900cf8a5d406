"""A busy node's agent: how fast it answers and moves a job when its CPU is full of jobs, with the
agent above its jobs (`agent_nice` -5, the default) and level with them (0), side by side.

Two one-CPU bed nodes, balancing off; node1 runs HOGS endless loops (as mosrun jobs) and one
job holding MIB MiB; then the agent's answer to a `status` request, sent from outside the node, is
timed (median of 5), and that job is migrated to node2 and timed. Rounds alternate the two settings so that other load on the machine hits both alike.
Usage: python -m bench.busy_node [--rounds 3] [--hogs 6] [--mib 200]. Writes
bench/results/busy_node.csv and .png.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from collections.abc import Sequence

from bench._common import plot, print_table, write_csv
from pymosix.testbed import TestBed

LOOP = ["perl", "-e", "$i=1; while($i) { $i++; }"]


def big_job(mib: int) -> list[str]:
    return [
        "python3",
        "-c",
        f"import time\nx = bytearray(b'\\x01') * ({mib} << 20)\nprint('ready', flush=True)\n"
        "while True: time.sleep(0.1)",
    ]


def one_round(nice: int, hogs: int, mib: int) -> dict[str, float]:
    bed = TestBed.up(
        nodes=2,
        name=f"bbusy{-nice}",
        extra_args=[
            "--set",
            "speed=10000",
            "--set",
            "balance=false",
            "--set",
            f"agent_nice={nice}",
        ],
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        bed.wait_converged(30)
        procs += [bed.popen(1, ["mosrun", *LOOP]) for _ in range(hogs)]
        big = bed.popen(1, ["mosrun", *big_job(mib)], stdout=subprocess.PIPE)
        procs.append(big)
        assert big.stdout is not None
        if big.stdout.readline().strip() != b"ready":
            raise RuntimeError("the big job did not start")
        times = []
        for _ in range(5):
            t0 = time.monotonic()
            bed.call(1, "status")  # from outside the node: the agent's time, not a tool's start
            times.append(time.monotonic() - t0)
        t0 = time.monotonic()
        r = bed.exec(1, ["migrate", str(big.pid), "0x640c"], timeout_s=300)
        move_s = time.monotonic() - t0
        if r.returncode != 0:
            raise RuntimeError(f"migrate failed: {r.stderr.strip()}")
        return {"status_ms": 1000 * statistics.median(times), "move_s": move_s}
    finally:
        for p in procs:
            p.kill()
            p.wait()
        bed.down()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hogs", type=int, default=6)
    ap.add_argument("--mib", type=int, default=200)
    args = ap.parse_args()
    rows = []
    for rnd in range(args.rounds):
        for nice in (0, -5) if rnd % 2 == 0 else (-5, 0):
            got = one_round(nice, args.hogs, args.mib)
            rows.append({"round": rnd, "agent_nice": nice, **got})
            print(f"round {rnd}, agent_nice {nice}: {got}", flush=True)
    summary = []
    for nice in (0, -5):
        mine = [r for r in rows if r["agent_nice"] == nice]
        summary.append(
            {
                "agent_nice": nice,
                "status_ms": statistics.median(r["status_ms"] for r in mine),
                "move_s": statistics.median(r["move_s"] for r in mine),
            }
        )
    print_table(summary)
    level, above = summary
    print(
        f"agent above its jobs: status {level['status_ms'] / above['status_ms']:.2f}x faster, "
        f"move {level['move_s'] / above['move_s']:.2f}x faster (medians of {args.rounds})"
    )
    print("csv:", write_csv("busy_node", rows))
    series: dict[str, tuple[Sequence[float], Sequence[float]]] = {
        f"agent_nice {n}": (
            [float(r["round"]) for r in rows if r["agent_nice"] == n],
            [float(r["move_s"]) for r in rows if r["agent_nice"] == n],
        )
        for n in (0, -5)
    }
    print("png:", plot("busy_node", f"moving a {args.mib} MiB job off a node with {args.hogs} jobs",
                       "round", "migrate wall time (s)", series))  # fmt: skip


if __name__ == "__main__":
    main()
