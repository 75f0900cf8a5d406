"""Thin wrappers over iproute2 and the cgroup tree (v1 or v2, through `pymosix.cgroups`); every
call is idempotent where teardown needs it to be."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from pymosix import cgroups
from pymosix.cgroups import Hierarchy


class KernelError(RuntimeError):
    """An iproute2 or cgroup step failed; the message has the command and its error."""


def ip(*args: str, check: bool = True) -> str:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise KernelError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def netns_list() -> list[str]:
    return [ln.split()[0] for ln in ip("netns", "list", check=False).splitlines() if ln.strip()]


def links() -> list[str]:
    try:
        return sorted(p.name for p in Path("/sys/class/net").iterdir())
    except OSError:
        return []


def netns_pids(ns: str) -> list[int]:
    return [int(x) for x in ip("netns", "pids", ns, check=False).split() if x.isdigit()]


def cgroup_tree() -> Hierarchy:
    """The hierarchy the bed confines its nodes in here (see `pymosix.cgroups.detect`)."""
    return cgroups.detect()


def host_cpus() -> list[int]:
    """The host's CPUs (those of the root cpuset, where there is one)."""
    return cgroup_tree().host_cpus()


def kill_pids(pids: list[int], timeout_s: float = 5.0) -> None:
    """SIGKILL and wait until they are gone (or are zombies someone else will reap)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                break
            if state in ("Z", "X"):
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)
                break
            time.sleep(0.01)


def remove_cgroup(tree: Hierarchy, path: Path) -> None:
    """Kill what is in the cgroup (and below), then remove it, innermost first."""
    for _ in range(100):
        tree.kill(path)
        kill_pids(tree.pids(path))
        try:
            for d in sorted(
                (p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
            ):
                d.rmdir()
            path.rmdir()
            return
        except FileNotFoundError:
            if not path.exists():
                return
        except OSError:
            time.sleep(0.05)
    raise KernelError(f"cannot remove cgroup {path}: processes remain in it")


def copies_of(token: str, program: bytes = b"python3") -> list[int]:
    """Live processes running `program` with `token` in one of its arguments, on any bed node
    (the bed's nodes share this PID namespace): how tests and benches count a job's copies.
    mosrun's own argv holds the job's too, hence the check of argv[0]."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if argv[0] == program and any(token.encode() in a for a in argv[1:]) and state != "Z":
            out.append(int(d.name))
    return out
