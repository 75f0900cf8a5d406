"""Two bench.time_to_balance CSVs side by side (one taken before a change, one after): one CSV
and one PNG of the runs and medians.

Usage: python -m bench.before_after BEFORE.csv AFTER.csv NAME [--label-before X --label-after Y].
Writes bench/results/NAME.{csv,png}.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._common import plot, print_table, write_csv

COLS = ("bed_from_4th_mosrun_s", "bed_from_jobs_s")


def load(path: str) -> list[dict[str, str]]:
    with Path(path).open() as f:
        return list(csv.DictReader(f))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("name")
    ap.add_argument("--label-before", default="before")
    ap.add_argument("--label-after", default="after")
    args = ap.parse_args()
    runs = {args.label_before: load(args.before), args.label_after: load(args.after)}
    rows: list[dict[str, Any]] = []
    for label, data in runs.items():
        for r in data:
            rows.append({"when": label, "run": r["run"], **{c: float(r[c]) for c in COLS}})
    print_table(rows)
    print(f"csv: {write_csv(args.name, rows)}")
    series: dict[str, tuple[Sequence[float], Sequence[float]]] = {}
    for label, data in runs.items():
        pts = [r for r in data if r["run"] != "median"]
        xs = [float(r["run"]) for r in pts]
        series[f"{label}: from the last mosrun"] = (xs, [float(r[COLS[0]]) for r in pts])
        series[f"{label}: from all jobs existing"] = (xs, [float(r[COLS[1]]) for r in pts])
    title = "Seed scenario, 2 nodes: time to the 2+2 split"
    print(f"png: {plot(args.name, title, 'run', 'seconds', series)}")


if __name__ == "__main__":
    main()
