"""Thin wrappers over iproute2 and the cgroup v1 cpuset hierarchy; every call is idempotent
where teardown needs it to be."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

CPUSET = Path("/sys/fs/cgroup/cpuset")


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


def host_cpus() -> list[int]:
    """The CPUs the root cpuset has (the host's online CPUs)."""
    try:
        return parse_cpu_list((CPUSET / "cpuset.cpus").read_text())
    except OSError:
        return list(range(os.cpu_count() or 1))


def parse_cpu_list(text: str) -> list[int]:
    """``0-2,5`` -> [0, 1, 2, 5]."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def make_cpuset(name: str, cpus: list[int]) -> Path:
    path = CPUSET / name
    path.mkdir(exist_ok=True)
    (path / "cpuset.cpus").write_text(",".join(map(str, cpus)))
    (path / "cpuset.mems").write_text((CPUSET / "cpuset.mems").read_text().strip())
    return path


def cgroup_pids(path: Path) -> list[int]:
    try:
        return [int(x) for x in (path / "tasks").read_text().split()]
    except OSError:
        return []


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


def remove_cpuset(path: Path) -> None:
    for _ in range(100):
        kill_pids(cgroup_pids(path))
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)
    raise KernelError(f"cannot remove cgroup {path}: processes remain in it")
