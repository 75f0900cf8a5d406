"""CPU time that adds up across moves.

CRIU restores a process with the kernel's CPU counters at zero, so after a move a job's CPU
clocks start again and RLIMIT_CPU (``ulimit -t``) would never fire. The source measures what each
process used before the freeze, keyed by its PID in the job's own namespace (which a restore
keeps); the target adds it to the job's total and lowers each restored process's RLIMIT_CPU by
what that process already used, so the limit holds for the total. The limit is in whole
seconds, so what is taken off at each move is the growth of the whole seconds of the process's
running total, and fractions of a second are never lost across many short stays.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pymosix.migration.cantmove import process_owner, tree_pids
from pymosix.migration.criu import owner_prefix

if TYPE_CHECKING:
    from pymosix.migration.lifecycle import JobMeta

log = logging.getLogger(__name__)

_TICK = os.sysconf("SC_CLK_TCK")


def ns_pid(pid: int, proc: Path = Path("/proc")) -> int | None:
    """The process's PID in its innermost PID namespace (the job's)."""
    try:
        for line in (proc / str(pid) / "status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid: int, proc: Path = Path("/proc")) -> float:
    """User plus system CPU seconds of one process (all its threads)."""
    try:
        fields = (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, ValueError, IndexError):
        return 0.0


def used_by_tree(pid: int, proc: Path = Path("/proc")) -> dict[int, float]:
    """{PID in the job's namespace: CPU seconds used since it was started or restored}."""
    out: dict[int, float] = {}
    for p in tree_pids(pid, proc):
        n = ns_pid(p, proc)
        if n is not None:
            out[n] = round(cpu_seconds(p, proc), 3)
    return out


def account(meta: JobMeta, stint: Mapping[int, float]) -> dict[int, int]:
    """Add one node's CPU seconds per process to the job's totals; the whole seconds to take
    off each process's RLIMIT_CPU now, by its PID in the job's namespace."""
    spent: dict[int, int] = {}
    for n, used in stint.items():
        before = meta.cpu_by_pid.get(n, 0.0)
        meta.cpu_by_pid[n] = before + used
        spent[n] = math.floor(before + used) - math.floor(before)
    meta.cpu_s += sum(stint.values())
    return spent


def lowered(limit: tuple[int, int], used_s: float) -> tuple[int, int] | None:
    """RLIMIT_CPU (soft, hard) lowered by seconds already used; None if there is no limit."""
    soft, hard = limit
    inf = resource.RLIM_INFINITY
    if soft == inf and hard == inf:
        return None
    spent = int(used_s)
    new_soft = soft if soft == inf else max(1, soft - spent)
    new_hard = hard if hard == inf else max(1, hard - spent)
    if new_soft != inf and new_hard != inf:
        new_soft = min(new_soft, new_hard)
    return new_soft, new_hard


def lower_limit(pid: int, used_s: float) -> None:
    """Lower one process's RLIMIT_CPU by used_s seconds (PermissionError: not allowed here)."""
    new = lowered(resource.prlimit(pid, resource.RLIMIT_CPU), used_s)
    if new is not None:
        resource.prlimit(pid, resource.RLIMIT_CPU, new)


def carry_limits(pid: int, used: Mapping[int, float], proc: Path = Path("/proc")) -> None:
    """Lower RLIMIT_CPU of the restored tree at `pid` by what each process used before."""
    for p in tree_pids(pid, proc):
        n = ns_pid(p, proc)
        if n is None or not used.get(n):
            continue
        try:
            lower_limit(p, used[n])
        except PermissionError:
            # No CAP_SYS_RESOURCE: as for criu's dump, act with the owner's real ids.
            _lower_as_owner(p, used[n])
        except (OSError, ValueError) as e:
            log.warning("could not carry the CPU limit of process %d: %s", p, e)


def _lower_as_owner(pid: int, used_s: float) -> None:
    owner = process_owner(pid)
    if owner is None:
        return
    code = "import sys; from pymosix.migration.cputime import lower_limit as f; "
    code += "f(int(sys.argv[1]), float(sys.argv[2]))"
    argv = [*owner_prefix(*owner), sys.executable, "-I", "-c", code, str(pid), str(used_s)]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("could not carry the CPU limit of process %d: %s", pid, e)
        return
    if r.returncode != 0:
        log.warning("could not carry the CPU limit of process %d: %s", pid, r.stderr[-200:])
