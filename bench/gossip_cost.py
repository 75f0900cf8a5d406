"""What load dissemination costs each agent at 2, 8 and 32 nodes: bytes/s and CPU time, for
pymosix's gossip to a few random peers, side by side with a broadcast-to-all baseline (the same
agents with fan-out = every peer). Usage: python -m bench.gossip_cost [--seconds S]."""

from __future__ import annotations

import argparse
import time

import psutil

from bench._common import plot, print_table, write_csv
from pymosix.testbed import TestBed

SIZES = (2, 8, 32)


def measure(nodes: int, fanout: int, seconds: float) -> dict[str, float]:
    bed = TestBed.up(
        nodes=nodes, name=f"bg{nodes}f{fanout}", extra_args=["--set", f"gossip_fanout={fanout}"]
    )
    try:
        bed.wait_converged(30)
        time.sleep(3)  # every node has heard every other's load
        procs = [psutil.Process(n.agent_pid) for n in bed.nodes]

        def sample() -> tuple[list[dict[str, int]], list[float]]:
            counters = [bed.call(n.index, "status")["counters"] for n in bed.nodes]
            cpu = [sum(p.cpu_times()[:2]) for p in procs]
            return counters, cpu

        c0, cpu0 = sample()
        t0 = time.monotonic()
        time.sleep(seconds)
        c1, cpu1 = sample()
        dt = time.monotonic() - t0
        known = [sum(1 for r in bed.call(n.index, "loads")["nodes"] if r["up"]) for n in bed.nodes]
    finally:
        bed.down()

    def per(key: str) -> float:
        return sum(b[key] - a[key] for a, b in zip(c0, c1, strict=True)) / nodes / dt

    return {
        "nodes": nodes,
        "fanout": fanout,
        "load_msgs_sent_per_s": per("load_sent"),
        "load_bytes_sent_per_s": per("load_bytes_sent"),
        "load_msgs_received_per_s": per("load_received"),
        "all_bytes_received_per_s": per("bytes_received"),
        "cpu_ms_per_s": sum(b - a for a, b in zip(cpu0, cpu1, strict=True)) / nodes / dt * 1000,
        "nodes_seen_min": float(min(known)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    rows = []
    for n in SIZES:
        gossip = measure(n, 3, args.seconds)
        broadcast = measure(n, max(1, n - 1), args.seconds)
        gossip["bytes_vs_broadcast"] = gossip["load_bytes_sent_per_s"] / max(
            1e-9, broadcast["load_bytes_sent_per_s"]
        )
        broadcast["bytes_vs_broadcast"] = 1.0
        rows += [gossip, broadcast]
        print(
            f"{n} nodes: gossip {gossip['load_bytes_sent_per_s']:.0f} B/s per node, broadcast {broadcast['load_bytes_sent_per_s']:.0f} B/s"
        )
    print_table(rows)
    print(f"csv: {write_csv('gossip_cost', rows)}")
    g = [r for r in rows if r["fanout"] == 3 or (r["nodes"] == 2 and r["fanout"] == 1)]
    b = [r for r in rows if r["fanout"] == max(1, int(r["nodes"]) - 1)]
    png = plot(
        "gossip_cost",
        "Load dissemination cost per agent",
        "nodes",
        "load bytes sent per second per node",
        {
            "gossip, fan-out 3": ([r["nodes"] for r in g], [r["load_bytes_sent_per_s"] for r in g]),
            "broadcast to all": ([r["nodes"] for r in b], [r["load_bytes_sent_per_s"] for r in b]),
        },
        logx=True,
    )
    print(f"png: {png}")


if __name__ == "__main__":
    main()
