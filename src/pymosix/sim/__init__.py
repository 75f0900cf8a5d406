"""Discrete-event simulation of a pymosix cluster running the real policy at every node."""

from pymosix.sim.engine import (
    JobSpec,
    Move,
    NodeSpec,
    SimConfig,
    SimResult,
    Simulation,
    lower_bound,
)
from pymosix.sim.scenarios import SCENARIOS

__all__ = [
    "SCENARIOS",
    "JobSpec",
    "Move",
    "NodeSpec",
    "SimConfig",
    "SimResult",
    "Simulation",
    "lower_bound",
]
