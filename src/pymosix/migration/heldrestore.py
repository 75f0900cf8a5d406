"""A restored job under a holder (issue 16 item 5, steps 2 and 3; docs/reliability.md): a guest,
and a job restored at home (it came back, or from a checkpoint), outlive their agent as a job
started at home does (holder.py).

How: criu runs under a small launcher (`python -I -S -c SOURCE SPEC criu ARGS`) that forks the
holder and waits. The holder runs criu as its child; with ``--restore-sibling`` (criu's ``-S``)
the restored job is the *holder's* child, so the holder reaps it, keeps its exit status and
copies of the agent's pipe ends, and serves its socket, as for a job started at home. The
launcher exits with criu's status once criu ended and the holder's socket is up, so the agent
waits for it exactly as it waited for criu (its timeout, its log, its errors). A launcher killed
(criu took too long) takes the holder and criu along (PR_SET_PDEATHSIG), until criu ended well.

A guest's holder has no mosrun PID to watch (mosrun is on the home node): with no agent
connected for `GUEST_ALONE_S` it kills the job, shorter than home's wait for the host's next
agent (home.REJOIN_S), so the job never runs on where home has given it up.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from pymosix.migration import holder
from pymosix.migration.criu import CriuDriver, RestoreResult
from pymosix.migration.holder import Holder, socket_path

#: A guest's holder with no agent this long kills its job (home waits REJOIN_S > this).
GUEST_ALONE_S = 8.0

PR_SET_PDEATHSIG = 1

#: argv[1] is the spec (JSON), argv[2:] criu's argv. stdlib only, no pymosix import.
SOURCE = (
    r"""
import ctypes, json, os, signal, sys
"""
    + holder.SOURCE
    + r"""
spec = json.loads(sys.argv[1])
criu = sys.argv[2:]
h = spec["hold"]
r, w = os.pipe()
launcher = os.getpid()
if os.fork() != 0:
    # The launcher: the agent waits for it as for criu, and gets criu's exit status.
    os.close(w)
    got = os.read(r, 16).strip()
    os._exit(int(got) if got.isdigit() else 255)
os.close(r)
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(PDEATH, signal.SIGKILL)  # the launcher killed (criu too slow): we go too
if os.getppid() != launcher:
    os._exit(1)
for fd in h["fds"]:
    os.set_inheritable(fd, False)  # criu gets the job's ends only
criu_pid = os.fork()
if criu_pid == 0:
    libc.prctl(PDEATH, signal.SIGKILL)
    os.execvp(criu[0], criu)
code = os.waitstatus_to_exitcode(os.waitpid(criu_pid, 0)[1])
if code != 0:
    os.write(w, b"%d" % (code if 0 < code < 256 else 255))
    os._exit(0)
libc.prctl(PDEATH, 0)  # criu ended well: from here on the holder outlives the launcher
with open(spec["pidfile"]) as f:
    job = int(f.read().strip())
h["notify"] = w
hold(job, spec)
""".replace("PDEATH", str(PR_SET_PDEATHSIG))
)


async def restore_held(
    criu: CriuDriver,
    images: Path,
    inherit: Mapping[int, str],
    agent_ends: tuple[int, int, int, int],
    jobs_dir: Path,
    home_pid: int | None,
    *,
    leave_stopped: bool,
    lazy: bool,
) -> tuple[RestoreResult, Holder]:
    """Restore the job under a holder; `inherit` maps the job's fds (our copies) to the image's
    keys, `agent_ends` are the agent's pipe ends (in_w, in_r, out_r, err_r) the holder keeps.
    `home_pid` is mosrun's PID for a job at home, None for a guest."""
    jobs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    held = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in agent_ends]
    pidfile = images / "restore.pid"
    spec = {
        "pidfile": str(pidfile),
        "stdio": list(inherit),
        "hold": {
            "dir": str(jobs_dir),
            "fds": held,
            "home_pid": home_pid,
            "keep_s": holder.KEEP_S,
            "alone_s": GUEST_ALONE_S if home_pid is None else 0.0,
            # Not committed yet: an agent that dies now leaves it to no one (engine.add_hosted).
            "moving": True,
        },
    }
    launcher = [sys.executable, "-I", "-S", "-c", SOURCE, json.dumps(spec)]
    try:
        result = await criu.restore(
            images,
            inherit,
            pidfile=pidfile,
            leave_stopped=leave_stopped,
            lazy=lazy,
            launcher=launcher,
            extra_fds=held,
        )
    finally:
        for fd in held:
            os.close(fd)
    try:
        h = await Holder.connect(socket_path(jobs_dir, result.pid))
    except (OSError, ValueError, KeyError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(result.pid, signal.SIGKILL)
        raise
    h.close_fds()  # the agent has its own ends of the pipes
    return result, h
