"""No orphan is ever left (issue 16): every job this agent holds has a record in the state
directory; an agent that starts finds the records of agents that died (kill -9, a crash) and
removes the jobs they left running: parentless namespace inits nobody can reach, which would
spin or write files forever, unseen by mps.

A record names the job's host PID and its start time (field 22 of /proc/PID/stat), so a PID
reused by another process is never touched. A job started here has a holder (holder.py) and its
record what a next agent needs to adopt it (restart.py): such a job is left to be adopted, not
killed, while its holder answers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def start_time(pid: int, proc: Path = Path("/proc")) -> int | None:
    """The process's start time in clock ticks since boot, None if it is gone."""
    try:
        return int((proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def runs(pid: int, proc: Path = Path("/proc")) -> bool:
    """Whether the process runs: a zombie does not (an agent killed a moment ago, its threads
    still exiting or its parent yet to reap it, must not keep its jobs from being adopted)."""
    try:
        state = (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class JobRecords:
    """The records of the jobs one agent holds, in STATE_DIR/jobs (root-only)."""

    def __init__(self, state_dir: Path, agent_pid: int | None = None) -> None:
        self.dir = state_dir / "jobs"
        self.agent_pid = agent_pid if agent_pid is not None else os.getpid()
        #: Records of dead agents' jobs whose holder answered (sweep): to be adopted.
        self.left: list[dict[str, Any]] = []

    def _path(self, pid: int) -> Path:
        return self.dir / f"{self.agent_pid}-{pid}.json"

    def record(
        self, pid: int, home_node: int, home_pid: int, extra: dict[str, Any] | None = None
    ) -> None:
        started = start_time(pid)
        if started is None:
            return
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        rec = {"pid": pid, "start": started, "home_node": home_node, "home_pid": home_pid}
        rec |= extra or {}
        tmp = self._path(pid).with_suffix(".tmp")
        tmp.write_text(json.dumps(rec))
        tmp.replace(self._path(pid))

    def forget(self, pid: int) -> None:
        self._path(pid).unlink(missing_ok=True)

    def sweep(self, proc: Path = Path("/proc")) -> list[dict[str, Any]]:
        """Kill the jobs of agents that are gone and drop their records; those killed. Jobs
        whose holder answers are left, their records in `left` (with "file")."""
        killed = []
        self.left = []
        for f in sorted(self.dir.glob("*-*.json")) if self.dir.is_dir() else []:
            agent = f.name.split("-", 1)[0]
            if not agent.isdigit() or int(agent) == self.agent_pid:
                continue
            if runs(int(agent), proc):
                continue  # that agent still runs (another agent of this node, a test bed's)
            try:
                rec = dict(json.loads(f.read_text()))
                for k in ("pid", "start", "home_node", "home_pid"):
                    rec[k] = int(rec[k])
            except (OSError, ValueError, AttributeError, KeyError, TypeError):
                f.unlink(missing_ok=True)
                continue
            if holder_answers(rec.get("holder")):
                # Its holder has it (or its exit status): it may be adopted (restart.py).
                self.left.append(rec | {"file": str(f)})
                continue
            if isinstance(rec.get("holder"), str):
                Path(rec["holder"]).unlink(missing_ok=True)  # its holder died (killed)
            if start_time(rec["pid"], proc) == rec["start"]:
                # The namespace init: its death takes every process of the job with it.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(rec["pid"], signal.SIGKILL)
                    killed.append(rec)
                    log.warning(
                        "removed job %d of node %d (pid %d), left by agent %s that died",
                        rec["home_pid"],
                        rec["home_node"],
                        rec["pid"],
                        agent,
                    )
            f.unlink(missing_ok=True)
        # Output a stopped agent kept (spool.py) for jobs nobody will adopt goes too.
        adoptable = {r["pid"] for r in self.left}
        for f in self.dir.glob("out-*.spool") if self.dir.is_dir() else []:
            pid = f.name.removeprefix("out-").removesuffix(".spool")
            if not pid.isdigit() or int(pid) not in adoptable:
                f.unlink(missing_ok=True)
        return killed


def holder_answers(path: object) -> bool:
    """Whether a job's holder listens at `path` (a record's "holder"), within a second."""
    if not isinstance(path, str):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return False
    return True
