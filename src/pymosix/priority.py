"""The agent runs above its jobs: a node full of CPU-bound jobs must still answer its tools,
gossip its load and move those jobs promptly.

Two knobs, because the kernel shares a CPU at two levels: the nice value among the tasks of one
group, and, where the scheduler's autogroups are on (Debian's and Ubuntu's kernels, for tasks
in the root cgroup), the group's own nice value among groups. Every job is a session leader of
its own (spawn.py), hence its own autogroup, so without the second knob a node with seven jobs
gave the agent an eighth of a CPU, whatever its nice value (measured: a move off such a node took
4 s). Jobs get mosrun's nice value (spawn.py), never the agent's.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

AUTOGROUP = Path("/proc/self/autogroup")


def run_above_jobs(nice: int, autogroup: Path = AUTOGROUP) -> None:
    """Give this process (and the threads and children it makes from now on) nice value
    `nice`, and its autogroup the same; a host that refuses either is logged, not fatal."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as e:
        log.warning("could not set the agent's nice value to %d: %s", nice, e.strerror)
    try:
        autogroup.write_text(f"{nice}\n")
    except FileNotFoundError:
        pass  # a kernel without autogroups (CONFIG_SCHED_AUTOGROUP off)
    except OSError as e:
        if e.errno == errno.EINVAL:
            # The root autogroup (an agent started by a process that never called setsid):
            # it has no weight of its own to set, and shares the CPU as the root cgroup does.
            log.debug("the agent is in the root autogroup; its nice value alone applies")
            return
        log.warning("could not set the agent's autogroup nice value to %d: %s", nice, e.strerror)
