"""``python -m pymosix.sim SCENARIO --nodes N --seed S [--json]``: run a scenario, summarise."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from pymosix.sim.scenarios import SCENARIOS


def main(argv: list[str] | None = None) -> int:
    """Run one scenario and print what it measured."""
    ap = argparse.ArgumentParser(prog="python -m pymosix.sim", description=__doc__)
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--nodes", type=int, default=None, help="cluster size (scenario default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="one JSON object")
    args = ap.parse_args(argv)
    if args.nodes is not None and args.nodes < 1:
        ap.error("--nodes must be at least 1")
    kwargs: dict[str, int] = {"seed": args.seed}
    if args.nodes is not None:
        kwargs["nodes"] = args.nodes
    started = time.perf_counter()
    result = SCENARIOS[args.scenario](**kwargs)
    wall = time.perf_counter() - started
    out = dataclasses.asdict(result) | {"ratio": result.ratio, "wall_s": round(wall, 3)}
    out = {"scenario": args.scenario, "seed": args.seed} | out
    if args.json:
        print(json.dumps(out))
        return 0
    busy = "never" if result.all_busy_s is None else f"{result.all_busy_s:.0f} s"
    print(f"scenario {args.scenario}: {result.nodes} nodes, {result.jobs} jobs, seed {args.seed}")
    print(
        f"makespan {result.makespan_s:.1f} s, lower bound {result.lower_bound_s:.1f} s, "
        f"ratio {result.ratio:.3f}"
    )
    print(
        f"migrations {result.migrations} ({result.migrations_before_first_exit} before the first "
        f"job ended, at most {result.max_migrations_per_job} per job), "
        f"offers refused {result.refusals}"
    )
    print(
        f"imbalance max {result.max_imbalance:.2f} jobs/CPU, "
        f"settled {result.settled_imbalance:.2f}; every node busy at {busy}"
    )
    print(f"{result.events} events in {wall:.2f} s of real time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
