"""``pymosix demo``: replay the seed's walk-through (section 5) on a test bed, checking each step."""

from __future__ import annotations

import argparse

from pymosix.demo import Demo, DemoOptions


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pymosix demo", description=__doc__)
    p.add_argument(
        "--nodes", type=int, default=2, help="test-bed nodes (default 2, as in the seed)"
    )
    p.add_argument("--interactive", action="store_true", help="pause between steps")
    p.add_argument("--keep", action="store_true", help="leave the test bed up to explore")
    p.add_argument("--name", default="demo", help="test-bed name (default demo)")
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds a step may take (default 30)"
    )
    p.add_argument(
        "--agent-arg",
        action="append",
        default=[],
        help="extra argument for every agent (repeatable)",
    )
    args = p.parse_args(argv)
    if args.nodes < 2:
        p.error("the walk-through needs at least 2 nodes")
    opts = DemoOptions(
        nodes=args.nodes,
        interactive=args.interactive,
        keep=args.keep,
        name=args.name,
        step_timeout_s=args.timeout,
        agent_args=args.agent_arg,
    )
    return Demo(opts).run()
