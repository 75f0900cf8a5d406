"""The share of its CPUs a cgroup CPU quota leaves this node (a container's --cpus, the bed's
half-CPU nodes). A job's CPU share is measured in whole CPUs; the balancer counts it against
what the node has, or a CPU-bound job on a half-CPU node looks half idle (policy.min_cpu_demand).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def cpu_capacity(
    ncpus: int, cgroup_file: Path = Path("/proc/self/cgroup"), root: Path = ROOT
) -> float:
    """Fraction (0, 1] of its ncpus CPUs this process's cgroup may use; 1.0 without a quota or
    when none can be read. Only the process's own cgroup is read, not its parents'."""
    try:
        lines = cgroup_file.read_text().splitlines()
    except OSError:
        return 1.0
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        try:
            if "cpu" in controllers.split(","):  # v1
                quota = int((root / "cpu" / rel / "cpu.cfs_quota_us").read_text())
                period = int((root / "cpu" / rel / "cpu.cfs_period_us").read_text())
            elif controllers == "" and (root / rel / "cpu.max").exists():  # v2
                q, p = (root / rel / "cpu.max").read_text().split()
                if q == "max":
                    return 1.0
                quota, period = int(q), int(p)
            else:
                continue
        except (OSError, ValueError):
            continue
        if quota <= 0 or period <= 0:
            return 1.0
        return max(1e-3, min(1.0, quota / period / max(1, ncpus)))
    return 1.0
