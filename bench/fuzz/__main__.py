"""``python -m bench.fuzz [TARGET ...] [--inputs N] [--seed S] [--engine mutate|hypothesis]``

Feeds each target N inputs (default 100,000) and prints how many, how long, the slowest input, and
how many were accepted; exits 1 on the first input that raised anything but the decoder's own
errors or took longer than --hang-s (the input is written to bench/results/fuzz-crash-TARGET.bin).
"""

from __future__ import annotations

import argparse
import sys
import time

from bench.fuzz.run import fuzz
from bench.fuzz.targets import TARGETS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__)
    p.add_argument("targets", nargs="*", choices=[*TARGETS, []], help="default: all")
    p.add_argument("--inputs", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", choices=("mutate", "hypothesis"), default="mutate")
    p.add_argument("--hang-s", type=float, default=2.0, help="slowest allowed input")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    failed = 0
    for name in args.targets or list(TARGETS):
        start = time.monotonic()
        result = fuzz(name, args.inputs, args.seed, args.engine, args.hang_s)
        took = time.monotonic() - start
        print(
            f"{name:<10} {result.inputs:>8} inputs in {took:7.1f} s "
            f"({result.inputs / took:,.0f}/s), {result.accepted} valid, "
            f"slowest {result.slowest_s * 1000:.1f} ms, "
            f"{result.failure or 'no crash, no hang'}",
            flush=True,
        )
        failed += result.failure is not None
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
