"""Does the simulator agree with the bed? The seed scenario and the owner-returns scenario, at the
sizes the bed benches measured, run in the simulator with the same parameters and set beside the
bed's numbers (read from the CSVs bench.time_to_balance --nodes 2 and 4, bench.balance,
bench.owner_returns and bench.owner_returns4 wrote in bench/results). Run those first; a missing one is reported as not measured.

Tolerances, and why:
- time to balance, from all jobs existing (the simulator does not model mosrun's own start):
  within 40 % or 1 s (whichever is larger). The bed's own five runs spread by about 25 % on this
  shared machine (1.6 to 2.0 s from the jobs, 2.8 to 4.4 s from the mosrun), and the simulator
  has no model of what varies there: CRIU's freeze (0.4 to 0.8 s under load).
- makespans over their bound: within 10 %. Makespans are CPU time, which the simulator shares
  exactly as CFS does; what remains is the bed's calibration of a job's length on a busy CPU.
- time for the last guest to leave an owner's node: within 1.5 s (three balancing rounds).

Two simulator columns: `sim` with the simulator's defaults (a move freezes its job 0.3 s at the
reference speed), `sim_bed_moves` with the moves as measured on the 4-node bed (BED_MOVES: the
agent's CPU work for a move and its weight against the jobs beside it, fitted to the 30 moves of
bench/results/logs/time_to_balance_4; the veth link's transfer is part of that work). The median
move time the logs show is printed beside what BED_MOVES predicts.

Usage: python -m bench.sim_calibration. Writes bench/results/sim_calibration.csv.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import RESULTS, print_table, write_csv
from bench.time_to_balance import move_times
from pymosix.sim import JobSpec, NodeSpec, SimConfig, Simulation, scenarios

#: Moves as the 4-node bed measured them (docs/simulator.md): a move is 0.09 s of CPU at the
#: reference speed, which the agent (nice -5) gets at weight 2.15 against each runnable job beside
#: it; the image crosses a veth pair (its time is in the 0.09 s).
BED_MOVES = SimConfig(freeze_cost_s=0.09, agent_weight=2.15, bandwidth_bytes_per_s=1e12)


def read(name: str) -> list[dict[str, str]] | None:
    path = RESULTS / f"{name}.csv"
    if not path.exists():
        return None
    with Path(path).open() as f:
        return list(csv.DictReader(f))


def seed_time(nodes: int, speed: int, cfg: SimConfig, runs: int = 5) -> float:
    specs = [NodeSpec(speed=speed) for _ in range(nodes)]
    times = []
    for s in range(runs):
        jobs = [JobSpec(0, 1e6, rss_bytes=2**19) for _ in range(2 * nodes)]  # perl: 0.5 MB anon
        c = dataclasses.replace(cfg, sample_s=0.1)
        r = Simulation(specs, jobs, c, seed=s).run(until_balanced=True)
        times.append(r.time_to_balance_s if r.time_to_balance_s is not None else float("inf"))
    return statistics.median(times)


def row(
    what: str, bed: float | None, load: str, sims: tuple[float, float], close: Callable[..., bool]
) -> dict[str, Any]:
    def agree(sim: float) -> str:
        # A bed that never balanced (inf) agrees with nothing.
        if bed is None:
            return "not measured"
        return "yes" if math.isfinite(bed) and close(sim, bed) else "NO"

    return {
        "quantity": what,
        "bed": float("nan") if bed is None else bed,
        "load_avg": load,
        "sim": sims[0],
        "sim_bed_moves": sims[1],
        "agree": agree(sims[0]),
        "agree_bed_moves": agree(sims[1]),
    }


def within_time(sim: float, bed: float) -> bool:
    return abs(sim - bed) <= max(1.0, 0.4 * bed)


def within_ratio(sim: float, bed: float) -> bool:
    return abs(sim - bed) <= 0.1 * bed


def within_left(sim: float, bed: float) -> bool:
    return abs(sim - bed) <= 1.5


def main() -> None:
    configs = (SimConfig(), BED_MOVES)
    rows = []
    for nodes, name in ((2, "time_to_balance"), (4, "time_to_balance_4")):
        data = read(name)
        speed = 10000 if nodes <= 2 else 5000  # two nodes per CPU on this 2-CPU bed
        sims = (seed_time(nodes, speed, configs[0]), seed_time(nodes, speed, configs[1]))
        bed, load = None, ""
        if data:
            # The simulator's jobs exist at t = 0: compare with the bed's time from all jobs
            # existing (mosrun's own start, a Python interpreter, is not modelled).
            med = next(r for r in data if r["run"] == "median")
            bed, load = float(med["bed_from_jobs_s"]), med.get("load_avg", "")
        what = f"seed, {nodes} nodes: time to balance from the jobs (s)"
        rows.append(row(what, bed, load, sims, within_time))
    balance = read("balance")
    speedups = [
        scenarios.unbalanced(nodes=2, config=c).makespan_s
        / scenarios.seed(nodes=2, config=c).makespan_s
        for c in configs
    ]
    bed_speedup = None
    if balance:
        bed_speedup = float(next(r for r in balance if r["scenario"].startswith("seed"))["speedup"])
    what = "seed, 2 nodes: speed-up over no balancing"
    rows.append(row(what, bed_speedup, "", (speedups[0], speedups[1]), within_ratio))
    unit = 20.0
    for nodes, name in ((2, "owner_returns"), (4, "owner_returns_4")):
        data = read(name) or []
        # The bed's row, and where its bench recorded them (bench._jobwatch), the jobs as they
        # ran: when each came to exist, the CPU work each did, the bound of that work and the
        # CPU the free nodes got (the simulator's speed). Older CSVs lack them: the calibrated
        # jobs at t = 0 then.
        if nodes == 2:
            bed_row = next((r for r in data if r["scenario"] == "owner returns"), {})
            ran = bed_row
            share = float(bed_row.get("cpu_share") or "nan")
        else:
            bed_row = next((r for r in data if r["what"] == "bed"), {})
            ran = next((r for r in data if r["what"] == "simulator"), {})
            share = float(bed_row.get("quota_share") or "nan")
        # The 4-node bed's quotas (its CSV says; 5000 before it did), the reference speed at 2.
        speed = int(bed_row.get("speed") or 0) or (10000 if nodes == 2 else 5000)
        arrivals = [float(a) for a in ran.get("arrivals_s", "").split()] or None
        works = [float(w) for w in ran.get("works_s", "").split()] or None
        sim_speed = round(speed * share) if works and share == share else speed
        # A job takes `unit` seconds alone on a node: unit * speed / 10000 reference seconds.
        res = [
            scenarios.owner_returns(
                nodes=nodes,
                work_s=unit * speed / 10000,
                owner_at_s=unit / 3,
                owner_tasks=4,
                speed=sim_speed,
                config=c,
                arrivals=arrivals,
                works=works,
            )
            for c in configs
        ]
        # Over the bound of the work the bed's jobs did, as the bed's.
        sim_ratios = [r.makespan_s / float(ran["bound_work_s"]) if works else r.ratio for r in res]
        bed_ratio = bed_left = None
        load = ""
        if bed_row and nodes == 2:
            bed_ratio = float(bed_row["pymosix_work"] if works else bed_row["pymosix"])
            bed_left = float(bed_row["guests_left_s"])
        elif bed_row:
            bed_ratio, bed_left, load = (
                float(bed_row.get("ratio_work") or bed_row["ratio"]),
                float(bed_row["guests_left_s"]),
                bed_row.get("load_avg", ""),
            )
        ratios = (sim_ratios[0], sim_ratios[1])
        lefts = tuple(r.guests_left_s if r.guests_left_s is not None else float("inf") for r in res)
        rows.append(
            row(
                f"owner returns, {nodes} nodes: makespan / bound",
                bed_ratio,
                load,
                ratios,
                within_ratio,
            )
        )
        rows.append(
            row(
                f"owner returns, {nodes} nodes: last guest left (s)",
                bed_left,
                load,
                (lefts[0], lefts[1]),
                within_left,
            )
        )
    print_table(rows)
    moves = move_times(RESULTS / "logs" / "time_to_balance_4")
    if moves:
        took = [t for t, _ in moves]
        sim = Simulation([NodeSpec(speed=5000)], [JobSpec(0, 1.0)] * 8, BED_MOVES)
        node, job = sim.nodes[0], sim.jobs[0]
        predicted = []
        for k in range(7, 1, -1):  # node1's six moves: 7 jobs beside the first, 2 beside the last
            node.jobs = sim.jobs[:k]
            predicted.append(sim.move_time(node, job))
        print(
            f"4-node bed: {len(moves)} moves, offer to running median {statistics.median(took):.3f} s "
            f"({min(took):.3f} to {max(took):.3f}); BED_MOVES predicts {predicted[0]:.3f} s (first) "
            f"to {predicted[-1]:.3f} s (sixth), median {statistics.median(predicted):.3f} s"
        )
    print(f"csv: {write_csv('sim_calibration', rows)}")


if __name__ == "__main__":
    main()
