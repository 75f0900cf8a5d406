"""Slow a bed node down: a CFS quota on its CPU time, so that it is a slower machine for its agent
(whose speed measurement sees it), its jobs and anything exec'd into it.

cgroup v1 (this machine): a ``cpu`` cgroup named like the node's cpuset; every process that enters
the node joins it (TestBed._enter) and the node's present processes are moved into it here.
cgroup v2: the node's own cgroup gets ``cpu.max``. The quota is 5 ms a period (the kernel's
bandwidth slice): much smaller quotas cost more than they give here (a 1 ms quota in a 2 ms period
ran the loop at 0.43, not 0.5), and a larger period lets a 50 ms timed run fit into one burst; with
5 ms, one run can gain at most one burst (+11 % at ratio 0.5; measured: 0.49 to 0.52).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING

from pymosix.cgroups import Hierarchy
from pymosix.errors import PymosixError
from pymosix.testbed import kernel

if TYPE_CHECKING:
    from pymosix.testbed.bed import BedNode

CPU = Path("/sys/fs/cgroup/cpu")
UNIFIED = Path("/sys/fs/cgroup")
#: The quota per period aimed at (the kernel's default sched_cfs_bandwidth_slice_us).
QUOTA_US = 5000
#: The kernel's bounds on a CFS period.
MIN_PERIOD_US, MAX_PERIOD_US = 1000, 1_000_000


def quota_period_us(ratio: float, ncpus: int) -> tuple[int, int]:
    """(quota, period) in microseconds giving ratio of ncpus CPUs, with a quota of about 5 ms."""
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    period = min(MAX_PERIOD_US, max(MIN_PERIOD_US, math.ceil(QUOTA_US / (ratio * ncpus))))
    return round(ratio * ncpus * period), period


def cpu_cgroup(node: BedNode) -> Path:
    """Where the node's quota lives (v1: the cpu hierarchy; v2: the node's own cgroup)."""
    return CPU / node.cpuset if CPU.is_dir() else UNIFIED / node.cpuset


def set_cpu_quota(node: BedNode, ratio: float) -> Path:
    """Limit the node to `ratio` of its CPUs from now on; returns the cgroup."""
    quota, period = quota_period_us(ratio, len(node.cpus))
    path = cpu_cgroup(node)
    if CPU.is_dir():
        path.mkdir(exist_ok=True)
        (path / "cpu.cfs_period_us").write_text(str(period))
        (path / "cpu.cfs_quota_us").write_text(str(quota))
        tree = kernel.cgroup_tree()
        for pid in tree.pids(tree.path(node.cpuset)):
            with contextlib.suppress(ProcessLookupError, OSError):
                (path / "tasks").write_text(str(pid))
    elif (path / "cpu.max").exists():
        (path / "cpu.max").write_text(f"{quota} {period}")
    else:
        raise PymosixError(f"no cpu controller for {node.name}: neither {CPU} nor {path}/cpu.max")
    return path


def clear_cpu_quota(node: BedNode) -> None:
    """Give the node its whole CPUs back (the v1 cgroup stays until the bed goes down)."""
    path = cpu_cgroup(node)
    if CPU.is_dir():
        if path.is_dir():
            (path / "cpu.cfs_quota_us").write_text("-1")
    elif (path / "cpu.max").exists():
        (path / "cpu.max").write_text("max")


def remove_cpu_cgroups(prefix: str) -> None:
    """Remove the v1 cpu cgroups whose names start with prefix (bed teardown)."""
    if CPU.is_dir():
        cpu_tree = Hierarchy(CPU)
        for cg in CPU.glob(f"{prefix}*"):
            if cg.is_dir():
                kernel.remove_cgroup(cpu_tree, cg)
