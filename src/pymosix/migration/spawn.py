"""Start a job so that CRIU can move it: PID 1 of its own PID namespace, session leader, stdio on
pipes the agent owns (research/criu.md §2).

How: the agent fork-execs a tiny Python helper (`python -I -S -c _HELPER`, ~20 ms) through the
subprocess machinery, hands it the job's stdio fds and a JSON spec, and reads back the job's host
PID. The helper unshares the PID namespace, forks the job (PID 1 there, which unshares its
mount and IPC namespaces itself), and exits: the job is re-parented to the agent, a child
subreaper, which can then waitpid() it. Or, for a job at home, the helper stays as the job's
parent and holder, so that the job outlives its agent (migration/holder.py).

Why not os.fork() in the agent: the agent is an asyncio process with threads (the default
executor, asyncio's child watcher), and running Python between fork and exec in a child of a
threaded process can deadlock on a lock another thread held at the fork. subprocess's fork-exec
runs no Python in the child, so it is safe in any process and from the event loop (see
`start_job`). Never through unshare(1): it keeps copies of the job's stdio and broke a restore
in DESIGN.md §3's test. The helper reports exec failures (no such program, no permission) through
a close-on-exec pipe, so they come back as SpawnError instead of a job that exits at once.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import json
import os
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pymosix.migration import holder

CLONE_NEWPID = 0x20000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNS = 0x00020000
PR_SET_CHILD_SUBREAPER = 36
SPAWN_TIMEOUT_S = 30.0

_libc = ctypes.CDLL(None, use_errno=True)

#: Runs in a fresh single-threaded interpreter: spec (JSON) on stdin, "OK PID" or "ERR why" out;
#: with a holder, it stays as the job's parent (migration/holder.py).
_HELPER = (
    r"""
import ctypes, json, os, signal, sys
"""
    + holder.SOURCE
    + r"""
import warnings  # os.execvpe imports it; after setuid the stdlib may be unreadable
spec = json.loads(sys.stdin.buffer.read())
if spec["hold"] is not None and os.fork() != 0:
    # The holder goes on below (re-parented to the agent, a subreaper); the agent's wait ends.
    os._exit(0)
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
if libc.unshare(spec["flags"]) != 0:
    print("ERR unshare(CLONE_NEWPID): " + os.strerror(ctypes.get_errno()) + " (the agent needs root)")
    sys.exit(0)
def own_proc():
    # The job's mount namespace: a private copy of the agent's, with a /proc of the job's own
    # PID namespace over the host's (mounted by PID 1 of that namespace, which procfs takes).
    MS_REC, MS_PRIVATE, MS_NOSUID, MS_NODEV, MS_NOEXEC, MNT_DETACH = 16384, 1 << 18, 2, 4, 8, 2
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "make mounts private: " + os.strerror(ctypes.get_errno()))
    libc.umount2(b"/proc", MNT_DETACH)
    if libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
        raise OSError(ctypes.get_errno(), "mount /proc: " + os.strerror(ctypes.get_errno()))
r, w = os.pipe2(os.O_CLOEXEC)
job = os.fork()
if job == 0:
    what = "set up"
    try:
        os.close(r)
        what = "unshare(CLONE_NEWNS|CLONE_NEWIPC)"
        if spec["child_flags"] and libc.unshare(spec["child_flags"]) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        if spec["own_proc"]:
            what = "give the job its own /proc"
            own_proc()
        os.setsid()
        for sig in range(1, signal.NSIG):
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        fds = [os.dup(fd) for fd in spec["stdio"]]
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, w)
        os.closerange(w + 1, 1 << 16)
        if spec["nice"] is not None:
            what = "set nice %d" % spec["nice"]
            os.setpriority(os.PRIO_PROCESS, 0, spec["nice"])
        if spec["uid"] is not None:
            what = "set user %d" % spec["uid"]
            os.setgroups(spec["groups"])
            os.setgid(spec["gid"])
            os.setuid(spec["uid"])
        if spec["umask"] is not None:
            os.umask(spec["umask"])
        what = "cd " + spec["cwd"]
        os.chdir(spec["cwd"])
        argv = [os.fsencode(a) for a in spec["argv"]]
        env = {os.fsencode(k): os.fsencode(v) for k, v in spec["env"].items()}
        what = spec["argv"][0]
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        os.write(w, (what + (": no such directory" if what.startswith("cd ") else ": command not found")).encode(errors="replace"))
    except BaseException as e:
        os.write(w, (what + ": " + (getattr(e, "strerror", None) or str(e))).encode(errors="replace"))
    os._exit(127)
os.close(w)
failed = b""
while chunk := os.read(r, 4096):
    failed += chunk
if failed:
    os.waitpid(job, 0)
    print("ERR " + failed.decode(errors="replace"))
elif spec["hold"] is None:
    print("OK %d" % job)
else:
    hold(job, spec)
"""
)


def become_subreaper() -> None:
    """Make this process adopt orphaned descendants: spawned and restored jobs come to us."""
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What to run and as whom."""

    argv: Sequence[str]
    cwd: str = "/"
    env: Mapping[str, str] = field(default_factory=dict)
    #: Run as this user (with `gid` and `groups`); None keeps the agent's (root).
    uid: int | None = None
    gid: int | None = None
    groups: Sequence[int] = ()
    #: Also a new IPC namespace, so that SysV IPC of the job can be dumped with it.
    new_ipc: bool = True
    #: A mount namespace of its own with a /proc of its PID namespace: the job sees itself in
    #: /proc, and CRIU's parasite finds a /proc that belongs to the job (needed for non-root).
    own_proc: bool = True
    #: The file mode creation mask, as mosrun had it; None keeps the agent's.
    umask: int | None = None
    #: The nice value, as mosrun had it (`nice mosrun CMD` works); None keeps the agent's,
    #: which runs above its jobs (config `agent_nice`), so a job should always be given one.
    nice: int | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    """Keep a holder for the job (migration/holder.py): its socket goes in `jobs_dir`, it keeps
    `fds` (the agent's in_w, in_r, out_r, err_r) and watches mosrun (`home_pid`)."""

    jobs_dir: Path
    fds: Sequence[int]
    home_pid: int


class SpawnError(OSError):
    """The job could not be started; the message says why."""


def _prepare(
    spec: JobSpec, stdio: Sequence[int], hold: Hold | None = None
) -> tuple[list[str], bytes, list[int]]:
    """The helper's argv, its JSON spec and the (duplicated, >= 3) fds it must inherit."""
    if not spec.argv:
        raise SpawnError("nothing to run: empty command")
    if spec.uid is not None and spec.gid is None:
        raise SpawnError("a job run as another user needs its gid as well")
    # Copies at 3 or above, so that the helper's own stdin/stdout cannot shadow them.
    fds = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in stdio]
    held = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in (hold.fds if hold else ())]
    data = {
        "argv": list(spec.argv),
        "cwd": spec.cwd,
        "env": dict(spec.env),
        "uid": spec.uid,
        "gid": spec.gid,
        "groups": list(spec.groups),
        # The helper (the holder) enters only the PID namespace; the job the others.
        "flags": CLONE_NEWPID,
        "child_flags": (CLONE_NEWIPC if spec.new_ipc else 0)
        | (CLONE_NEWNS if spec.own_proc else 0),
        "own_proc": spec.own_proc,
        "umask": spec.umask,
        "nice": spec.nice,
        "stdio": fds,
        "hold": None
        if hold is None
        else {
            "dir": str(hold.jobs_dir),
            "fds": held,
            "home_pid": hold.home_pid,
            "keep_s": holder.KEEP_S,
            "alone_s": 0.0,
        },
    }
    return [sys.executable, "-I", "-S", "-c", _HELPER], json.dumps(data).encode(), fds + held


def _result(out: bytes, returncode: int | None) -> int:
    text = out.decode(errors="replace").strip()
    if text.startswith("OK "):
        return int(text[3:])
    if text.startswith("ERR "):
        raise SpawnError(text[4:])
    raise SpawnError(f"spawn helper failed (status {returncode}): {text[-200:] or 'no output'}")


def spawn_job(spec: JobSpec, stdin: int, stdout: int, stderr: int) -> int:
    """Start the job with the given fds as its stdio; return its host PID. Blocks ~20 ms."""
    become_subreaper()
    argv, data, fds = _prepare(spec, (stdin, stdout, stderr))
    try:
        r = subprocess.run(
            argv,
            input=data,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=fds,
            timeout=SPAWN_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise SpawnError(f"could not run the spawn helper: {e}") from None
    finally:
        for fd in fds:
            os.close(fd)
    return _result(r.stdout, r.returncode)


async def start_job(
    spec: JobSpec, stdin: int, stdout: int, stderr: int, hold: Hold | None = None
) -> int:
    """`spawn_job` for the event loop: the loop keeps running while the helper works. With
    `hold`, the helper stays as the job's holder (its socket is up when this returns)."""
    become_subreaper()
    argv, data, fds = _prepare(spec, (stdin, stdout, stderr), hold)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            pass_fds=fds,
        )
    except OSError as e:
        raise SpawnError(f"could not run the spawn helper: {e}") from None
    finally:
        for fd in fds:
            os.close(fd)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(data), SPAWN_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SpawnError("spawn helper did not answer") from None
    return _result(out, proc.returncode)


def stdio_inodes(pid: int, proc: Path = Path("/proc")) -> dict[int, str]:
    """What the job's fds 0-2 are, as CRIU's --inherit-fd keys want them: ``pipe:[INODE]``."""
    out: dict[int, str] = {}
    for fd in (0, 1, 2):
        try:
            out[fd] = os.readlink(proc / str(pid) / "fd" / str(fd))
        except OSError:
            continue
    return out


def pipe_inode(fd: int) -> str:
    """``pipe:[INODE]`` of a pipe fd we hold, as /proc shows it to the job."""
    st = os.fstat(fd)
    if not stat.S_ISFIFO(st.st_mode):
        raise ValueError(f"fd {fd} is not a pipe")
    return f"pipe:[{st.st_ino}]"


def groups_of(pid: int) -> list[int]:
    """mosrun's supplementary groups, for its job."""
    try:
        line = next(
            ln
            for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
            if ln.startswith("Groups:")
        )
    except (OSError, StopIteration):
        return []
    return [int(g) for g in line.split()[1:]]


def umask_of(pid: int) -> int | None:
    """mosrun's umask, for its job: files the job makes get the user's modes, not root's."""
    try:
        line = next(
            ln
            for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
            if ln.startswith("Umask:")
        )
    except (OSError, StopIteration):
        return None
    return int(line.split()[1], 8)


def nice_of(pid: int) -> int:
    """mosrun's nice value, for its job (0 if mosrun is already gone)."""
    try:
        return os.getpriority(os.PRIO_PROCESS, pid)
    except OSError:
        return 0
