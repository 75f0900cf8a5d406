"""Which processes of a job's tree the job itself had stopped, and resuming the others.

A move freezes every process of the tree (criu dump -s, criu restore -s). Whatever ends the
freeze (a rollback at the source, the commit at the target) must resume each process that was
running and leave stopped each one the job had stopped (state T before the freeze: a SIGSTOP,
or a Ctrl-Z of a process in the job). Processes are named by their PID inside the job's PID
namespace, which a move keeps, so the set travels from source to target.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from pymosix.migration.cantmove import tree_pids


def _state(pid: int, proc: Path) -> str:
    try:
        return (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def ns_pid(pid: int, proc: Path = Path("/proc")) -> int:
    """The PID of `pid` in its innermost PID namespace (the job's), or `pid` if unknown."""
    try:
        for line in (proc / str(pid) / "status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except (OSError, ValueError, IndexError):
        pass
    return pid


def stopped_by_job(root: int, proc: Path = Path("/proc")) -> set[int]:
    """The job's PIDs (in its namespace) of the processes of the tree in state T now."""
    return {ns_pid(p, proc) for p in tree_pids(root, proc) if _state(p, proc) == "T"}


def resume(root: int, keep_stopped: set[int], proc: Path = Path("/proc")) -> list[int]:
    """SIGCONT every process of the tree but those the job had stopped; the PIDs resumed."""
    resumed = []
    for p in tree_pids(root, proc):
        if ns_pid(p, proc) in keep_stopped:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGCONT)
            resumed.append(p)
    return resumed
