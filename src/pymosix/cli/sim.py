"""``pymosix sim``: the simulator (pymosix.sim), the agents' own policy at every simulated node."""

from __future__ import annotations

from pymosix.sim.__main__ import main as sim_main


def main(argv: list[str]) -> int:
    return sim_main(argv)
