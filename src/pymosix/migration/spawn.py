"""Start a job so that CRIU can move it: PID 1 of its own PID namespace, session leader, stdio on
pipes the agent owns (research/criu.md §2).

The agent forks directly (never through unshare(1), which keeps copies of the job's stdio and
broke a restore in DESIGN.md §3's test). A short-lived helper unshares the PID (and IPC)
namespace and forks the job; the helper exits at once and the job is re-parented to the agent,
which is a child subreaper. Between fork and exec the children call only what is safe after a
fork in a single-threaded parent: no locks, no allocation-heavy Python.
"""

from __future__ import annotations

import ctypes
import os
import signal
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWPID = 0x20000000
CLONE_NEWIPC = 0x08000000
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)

#: Exit codes of the spawn helper, reported when the job could not be started.
_HELPER_ERRORS = {
    100: "unshare(CLONE_NEWPID) failed: the agent needs root",
    101: "could not fork the job",
}
#: Signals Python changes from their defaults; a job must get the defaults back (criu.md §2).
_RESET_SIGNALS = (
    signal.SIGPIPE,
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGXFSZ,
    signal.SIGCHLD,
    signal.SIGTSTP,
    signal.SIGTTIN,
    signal.SIGTTOU,
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
    uid: int | None = None
    gid: int | None = None
    groups: Sequence[int] = ()
    #: Also a new IPC namespace, so that SysV IPC of the job can be dumped with it.
    new_ipc: bool = True


class SpawnError(OSError):
    """The job could not be started; the message says why."""


def spawn_job(spec: JobSpec, stdin: int, stdout: int, stderr: int) -> int:
    """Start the job with the given fds as its stdio; return its host PID.

    Exec failures (no such program, no permission) are reported by the job's exit status 127/126,
    as a shell would, since the job is already running in its namespace by then.
    """
    if not spec.argv:
        raise SpawnError("nothing to run: empty command")
    flags = CLONE_NEWPID | (CLONE_NEWIPC if spec.new_ipc else 0)
    env = [f"{k}={v}".encode() for k, v in spec.env.items()]
    argv = [a.encode() for a in spec.argv]
    r, w = os.pipe()
    helper = os.fork()
    if helper == 0:  # helper: unshare, fork PID 1 of the new namespace, report it, exit
        try:
            os.close(r)
            if _libc.unshare(flags) != 0:
                os._exit(100)
            job = os.fork()
            if job == 0:
                _exec_job(spec, argv, env, stdin, stdout, stderr)
            os.write(w, str(job).encode())
            os._exit(0)
        except BaseException:
            os._exit(101)
    os.close(w)
    try:
        data = b""
        while chunk := os.read(r, 64):
            data += chunk
    finally:
        os.close(r)
    _, status = os.waitpid(helper, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or not data:
        raise SpawnError(_HELPER_ERRORS.get(code, f"spawn helper failed with status {code}"))
    return int(data)


def _exec_job(
    spec: JobSpec, argv: list[bytes], env: list[bytes], stdin: int, stdout: int, stderr: int
) -> None:
    """In the job (PID 1 of its namespace): set up and exec; never returns."""
    try:
        os.setsid()
        for sig in _RESET_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        # dup2 via a high slot first, so that fds 0-2 passed in any order do not clobber each other.
        fds = [os.dup(fd) for fd in (stdin, stdout, stderr)]
        for target, fd in enumerate(fds):
            os.dup2(fd, target, inheritable=True)
        os.closerange(3, 65536)
        if spec.gid is not None:
            os.setgroups(list(spec.groups))
            os.setgid(spec.gid)
        if spec.uid is not None:
            os.setuid(spec.uid)
        os.chdir(spec.cwd)
        os.execvpe(argv[0], argv, dict(_split_env(env)))
    except FileNotFoundError:
        os.write(2, b"mosrun: " + argv[0] + b": command not found\n")
        os._exit(127)
    except PermissionError:
        os.write(2, b"mosrun: " + argv[0] + b": permission denied\n")
        os._exit(126)
    except BaseException:
        os._exit(127)
    os._exit(127)


def _split_env(env: list[bytes]) -> list[tuple[bytes, bytes]]:
    out = []
    for item in env:
        k, _, v = item.partition(b"=")
        out.append((k, v))
    return out


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
