"""A process's children as the kernel lists them per task (/proc/PID/task/TID/children): a
walk down from one process reads its descendants only, not every process of the host."""

from __future__ import annotations

import os
from pathlib import Path


def children(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """The child processes of `pid` (of each of its threads); [] if it is gone.
    FileNotFoundError if the kernel keeps no such lists (no CONFIG_PROC_CHILDREN)."""
    try:
        tasks = os.listdir(proc / str(pid) / "task")
    except OSError:
        return []
    out: list[int] = []
    for t in tasks:
        try:
            out += [int(c) for c in (proc / str(pid) / "task" / t / "children").read_text().split()]
        except FileNotFoundError:
            if (proc / str(pid) / "task" / t).is_dir():
                raise
        except (OSError, ValueError):
            continue
    return out
