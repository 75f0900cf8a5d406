"""How the simulator scales, and how time to balance and per-node messages grow with N: the
hotspot scenario (2 % of the nodes start one job per node between them) at 10 to 10,000 nodes,
run until every node has its job (time to balance; busy_99_s: 99 % of the nodes have one), with
the bounded hello scheme (pymosix.discovery) and, up to `--fixed-max` nodes, the old fixed one
(every node every 0.5 s). Wall and CPU seconds are this process's. Usage: python -m bench.sim_scale [--sizes 10,100,1000,10000] [--fixed-max 1000] [--name N].
Writes bench/results/sim_scale.{csv,png} (or N.{csv,png}).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from bench._common import plot, print_table, write_csv
from pymosix.sim import SimConfig, scenarios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10,100,1000,10000")
    ap.add_argument("--fixed-max", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="sim_scale", help="results file name (csv, png)")
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    for n in (int(x) for x in args.sizes.split(",")):
        for scheme, budget in (("bounded", 32), ("fixed", None)):
            if scheme == "fixed" and n > args.fixed_max:
                continue
            wall, cpu = time.perf_counter(), time.process_time()
            r = scenarios.hotspot(
                nodes=n, seed=args.seed, config=SimConfig(hello_budget=budget), until_balanced=True
            )
            rows.append(
                {
                    "nodes": n,
                    "hellos": scheme,
                    "time_to_balance_s": r.time_to_balance_s
                    if r.time_to_balance_s is not None
                    else float("nan"),
                    "busy_99_s": next((x.t for x in r.series if x.busy >= 0.99), float("nan")),
                    "messages_per_node_s": r.messages_per_node_s,
                    "hellos_per_node_s": r.hellos_per_node_s,
                    "load_reports_per_node_s": r.messages_per_node_s - r.hellos_per_node_s,
                    "migrations_per_job": r.migrations / r.jobs,
                    "max_migrations_per_job": r.max_migrations_per_job,
                    "events": r.events,
                    "wall_s": time.perf_counter() - wall,
                    "cpu_s": time.process_time() - cpu,
                }
            )
            print_table(rows[-1:])
    print_table(rows)
    print(f"csv: {write_csv(args.name, rows)}")
    series: dict[str, tuple[Sequence[float], Sequence[float]]] = {}
    for scheme in ("bounded", "fixed"):
        sel = [r for r in rows if r["hellos"] == scheme]
        series[f"messages per node per s ({scheme} hellos)"] = (
            [r["nodes"] for r in sel],
            [r["messages_per_node_s"] for r in sel],
        )
    sel = [r for r in rows if r["hellos"] == "bounded"]
    series["time to balance, s (bounded)"] = (
        [r["nodes"] for r in sel],
        [r["time_to_balance_s"] for r in sel],
    )
    png = plot(
        args.name,
        "Hotspot: time to balance and per-node messages against N",
        "nodes",
        "seconds / messages per node per second",
        series,
        logx=True,
    )
    print(f"png: {png}")


if __name__ == "__main__":
    main()
