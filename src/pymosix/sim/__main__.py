"""``pymosix sim SCENARIO --nodes N --seed S [--csv F] [--png F] [--hello bounded|fixed] [--json]``:
run a scenario of the simulator (the agents' own policy at every node) and summarise it."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from pymosix.sim.engine import SimConfig, SimResult
from pymosix.sim.scenarios import SCENARIOS


def write_series(path: Path, result: SimResult) -> Path:
    """The time series as CSV: t, imbalance, busy, alive, in_flight."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [fl.name for fl in dataclasses.fields(result.series[0])] if result.series else []
        )
        for s in result.series:
            w.writerow(
                [round(s.t, 3), round(s.imbalance, 4), round(s.busy, 4), s.alive, s.in_flight]
            )
    return path


def plot_series(path: Path, title: str, result: SimResult) -> Path:
    """A PNG of imbalance (and the share of busy nodes) over time; needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = [s.t for s in result.series]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(ts, [s.imbalance for s in result.series], label="imbalance (max - min pressure)")
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("runnable tasks per reference CPU")
    ax2 = ax.twinx()
    ax2.plot(ts, [s.busy for s in result.series], color="tab:green", alpha=0.6, label="busy nodes")
    ax2.set_ylabel("share of live nodes with a job")
    ax2.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.legend(loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary(name: str, seed: int, r: SimResult, wall: float) -> list[str]:
    busy = "never" if r.all_busy_s is None else f"{r.all_busy_s:.1f} s"
    ttb = "never" if r.time_to_balance_s is None else f"{r.time_to_balance_s:.1f} s"
    lines = [
        f"scenario {name}: {r.nodes} nodes, {r.jobs} jobs, seed {seed}",
        f"makespan {r.makespan_s:.1f} s, lower bound {r.lower_bound_s:.1f} s, ratio {r.ratio:.3f}",
        f"migrations {r.migrations} ({r.migrations_before_first_exit} before the first job ended, "
        f"at most {r.max_migrations_per_job} per job), offers refused {r.refusals}, "
        f"lost {r.lost_offers}",
        f"imbalance max {r.max_imbalance:.2f}, settled {r.settled_imbalance:.2f}; every node busy "
        f"at {busy}; time to balance {ttb}",
        f"messages {r.messages_per_node_s:.1f} per node per second "
        f"(hellos {r.hellos_per_node_s:.1f})",
    ]
    if r.guests_left_s is not None:
        lines.append(f"last guest left the owners' nodes {r.guests_left_s:.1f} s after they came")
    lines.append(f"{r.events} events in {wall:.2f} s of real time")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run one scenario and print what it measured."""
    ap = argparse.ArgumentParser(prog="pymosix sim", description=__doc__)
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--nodes", type=int, default=None, help="cluster size (scenario default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--csv", type=Path, help="write the time series here")
    ap.add_argument("--png", type=Path, help="plot imbalance over time here (needs matplotlib)")
    ap.add_argument(
        "--hello",
        choices=("bounded", "fixed"),
        default="bounded",
        help="discovery: hellos rarer as the map grows (pymosix.discovery), or every 0.5 s",
    )
    ap.add_argument("--json", action="store_true", help="one JSON object")
    args = ap.parse_args(argv)
    if args.nodes is not None and args.nodes < 1:
        ap.error("--nodes must be at least 1")
    if args.png is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            ap.error("--png needs matplotlib: pip install matplotlib (or run without --png)")
    kwargs: dict[str, Any] = {"seed": args.seed}
    if args.nodes is not None:
        kwargs["nodes"] = args.nodes
    if args.hello == "fixed":
        kwargs["config"] = SimConfig(hello_budget=None)
    started = time.perf_counter()
    result = SCENARIOS[args.scenario](**kwargs)
    wall = time.perf_counter() - started
    files = {}
    if args.csv is not None:
        files["csv"] = str(write_series(args.csv, result))
    if args.png is not None:
        title = f"{args.scenario}, {result.nodes} nodes, seed {args.seed}"
        files["png"] = str(plot_series(args.png, title, result))
    if args.json:
        out = dataclasses.asdict(result) | {"ratio": result.ratio, "wall_s": round(wall, 3)}
        del out["series"], out["moves"]
        print(json.dumps({"scenario": args.scenario, "seed": args.seed} | out | files))
        return 0
    print("\n".join(summary(args.scenario, args.seed, result, wall)))
    for kind, path in files.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
