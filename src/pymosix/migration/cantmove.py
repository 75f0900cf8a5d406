"""Why a job cannot move, found before freezing it (openMosix's /proc/PID/cantmove).

Reads /proc only; the proc root is a parameter so tests feed a fake one.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Devices every process may hold: they exist the same on every node.
_HARMLESS_DEVICES = {"/dev/null", "/dev/zero", "/dev/random", "/dev/urandom", "/dev/full"}
_INET_TABLES = ("tcp", "tcp6", "udp", "udp6", "raw", "raw6", "udplite", "udplite6")


def _socket_inodes(proc: Path, pid: int) -> dict[str, str]:
    """inode -> which table it is in, for the inet and packet sockets of the process's netns."""
    out: dict[str, str] = {}
    for table in (*_INET_TABLES, "packet"):
        try:
            lines = (proc / str(pid) / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        col = 8 if table == "packet" else 9
        for line in lines:
            parts = line.split()
            if len(parts) > col:
                out[parts[col]] = table
    return out


def process_owner(pid: int, proc: Path = Path("/proc")) -> tuple[int, int] | None:
    """The real (uid, gid) of a process, or None if it is gone."""
    ids: dict[str, int] = {}
    try:
        for line in (proc / str(pid) / "status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Uid", "Gid"):
                ids[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return (ids["Uid"], ids["Gid"]) if len(ids) == 2 else None


def tree_pids(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """The job and all its descendants (children files of every task)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tasks = os.listdir(proc / str(p) / "task")
        except OSError:
            continue
        for t in tasks:
            try:
                todo += [
                    int(c) for c in (proc / str(p) / "task" / t / "children").read_text().split()
                ]
            except OSError:
                continue
    return out


def cantmove(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The reason the job rooted at `pid` cannot migrate, or None if nothing is found."""
    sockets: dict[str, str] | None = None
    for p in tree_pids(pid, proc):
        base = proc / str(p)
        try:
            status = (base / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("TracerPid:") and line.split()[1] != "0":
                return f"process {p} is being traced (ptrace)"
        try:
            maps = (base / "maps").read_text()
        except OSError:
            maps = ""
        if "SYSV" in maps:
            return f"process {p} uses System V shared memory"
        try:
            fds = os.listdir(base / "fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(base / "fd" / fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                if sockets is None:
                    sockets = _socket_inodes(proc, p)
                table = sockets.get(target[8:-1])
                if table is not None:
                    what = (
                        "a TCP connection or port"
                        if table.startswith("tcp")
                        else f"an {table} socket"
                    )
                    return f"process {p} holds {what} (fd {fd}); inet sockets cannot move with CRIU 4.1 on this kernel"
            elif (
                target.startswith("/dev/")
                and target not in _HARMLESS_DEVICES
                and not target.startswith("/dev/shm/")
            ):
                return f"process {p} has the device {target} open (fd {fd})"
            elif (
                target.startswith("/") and " (deleted)" not in target and not os.path.exists(target)
            ):
                return f"process {p} has {target} open, which other nodes cannot see at that path"
    return None
