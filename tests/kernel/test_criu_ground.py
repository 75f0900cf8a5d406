"""The ground holds: the seed's perl loop, dumped with the project's criu and restored inside
another network namespace, goes on counting from where it was (it was not restarted)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pymosix.migration.criu import CriuDriver, make_images_dir
from pymosix.migration.spawn import (
    JobSpec,
    become_subreaper,
    pipe_inode,
    spawn_job,
    stdio_inodes,
)

pytestmark = pytest.mark.kernel

#: The seed's loop (section 5.3), printing every STEP-th value so the count can be followed.
STEP = 50_000
COUNTER = f'$|=1; $i=1; while($i) {{ $i++; print "$i\\n" if $i % {STEP} == 0; }}'


@dataclass
class Job:
    pid: int
    stdin_w: int
    stdout_r: int
    buf: bytes = b""
    seen: list[int] = field(default_factory=list)

    def read_counts(self, n: int, timeout_s: float = 20.0) -> list[int]:
        """Wait for n more counter lines and return them."""
        want = len(self.seen) + n
        deadline = time.monotonic() + timeout_s
        while len(self.seen) < want:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no counter output within {timeout_s} s (have {self.seen[-3:]})"
                )
            self._read(block_s=0.2)
        return self.seen[want - n : want]

    def drain(self) -> None:
        self._read(block_s=0.0)

    def _read(self, block_s: float) -> None:
        import select

        ready, _, _ = select.select([self.stdout_r], [], [], block_s)
        if not ready:
            return
        try:
            chunk = os.read(self.stdout_r, 65536)
        except BlockingIOError:
            return
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        self.seen += [int(x) for x in lines if x]


def _nonblocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


def start_counter() -> tuple[Job, list[int]]:
    """The loop as PID 1 of its own PID namespace, stdio on pipes; returns the job and fds to close."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = spawn_job(
        JobSpec(["perl", "-e", COUNTER], env={"PATH": "/usr/bin:/bin"}), in_r, out_w, out_w
    )
    os.close(in_r)
    os.close(out_w)
    _nonblocking(out_r)
    return Job(pid, in_w, out_r), [in_w, out_r]


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        # Not our child (adopted elsewhere): wait for it to vanish instead.
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)


@pytest.fixture
def workspace() -> Iterator[dict[str, object]]:
    """An image directory on tmpfs and a throwaway network namespace; all removed afterwards."""
    become_subreaper()
    images = make_images_dir("pmx-fnd-")
    netns = f"pmx-fnd-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=20)
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True, timeout=20)
    state: dict[str, object] = {"images": images, "netns": netns, "pids": [], "fds": []}
    try:
        yield state
    finally:
        for pid in state["pids"]:  # type: ignore[attr-defined]
            kill_and_reap(pid)
        for fd in state["fds"]:  # type: ignore[attr-defined]
            with contextlib.suppress(OSError):
                os.close(fd)
        subprocess.run(["ip", "netns", "delete", netns], check=False, timeout=20)
        shutil.rmtree(images, ignore_errors=True)


def test_dump_restore_in_other_netns_continues_counting(workspace: dict[str, object]) -> None:
    images: Path = workspace["images"]  # type: ignore[assignment]
    netns: str = workspace["netns"]  # type: ignore[assignment]
    pids: list[int] = workspace["pids"]  # type: ignore[assignment]
    fds: list[int] = workspace["fds"]  # type: ignore[assignment]

    job, job_fds = start_counter()
    pids.append(job.pid)
    fds += job_fds
    assert Path(f"/proc/{job.pid}/status").read_text().count("NSpid") == 1
    nspid = [
        ln
        for ln in Path(f"/proc/{job.pid}/status").read_text().splitlines()
        if ln.startswith("NSpid")
    ]
    assert nspid[0].split()[-1] == "1", "the job must be PID 1 of its own PID namespace"
    job.read_counts(3)
    keys = stdio_inodes(job.pid)
    assert keys[1] == keys[2] == pipe_inode(job.stdout_r)

    driver = CriuDriver()
    asyncio.run(driver.dump(job.pid, images, leave_stopped=True))
    job.drain()  # what it printed before the freeze
    last_before = job.seen[-1]
    os.kill(job.pid, signal.SIGKILL)  # the stopped original: the restored copy takes over
    _, status = os.waitpid(job.pid, 0)
    pids.remove(job.pid)
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGKILL

    new_in_r, new_in_w = os.pipe()
    new_out_r, new_out_w = os.pipe()
    fds += [new_in_r, new_in_w, new_out_r, new_out_w]
    result = asyncio.run(
        driver.restore(
            images, {new_in_r: keys[0], new_out_w: keys[1]}, join_netns=f"/run/netns/{netns}"
        )
    )
    pids.append(result.pid)
    os.close(new_out_w)
    fds.remove(new_out_w)
    _nonblocking(new_out_r)

    assert result.pid != job.pid
    # -d -S from an asyncio subprocess: the restored job is our own child, not criu's.
    assert _ppid(result.pid) == os.getpid()
    assert os.stat(f"/proc/{result.pid}/ns/net").st_ino == os.stat(f"/run/netns/{netns}").st_ino
    status_text = Path(f"/proc/{result.pid}/status").read_text()
    assert f"NSpid:\t{result.pid}\t1\n" in status_text, "PID 1 of a fresh PID namespace again"
    restored = Job(result.pid, new_in_w, new_out_r)
    after = restored.read_counts(3)
    # Went on from where it was: the very next value, and nowhere near a fresh start.
    assert after[0] == last_before + STEP, (last_before, after)
    print(f"counted to {last_before} before the dump, {after} after the restore")
    assert after == sorted(after)
    assert stdio_inodes(result.pid)[1] == pipe_inode(new_out_r), "stdout re-bound to our pipe"
    # And we reap it with its real status, as the agent will.
    os.kill(result.pid, signal.SIGKILL)
    _, status = os.waitpid(result.pid, 0)
    pids.remove(result.pid)
    assert os.WTERMSIG(status) == signal.SIGKILL


def test_failed_migration_rolls_back_with_sigcont(workspace: dict[str, object]) -> None:
    images: Path = workspace["images"]  # type: ignore[assignment]
    pids: list[int] = workspace["pids"]  # type: ignore[assignment]
    fds: list[int] = workspace["fds"]  # type: ignore[assignment]

    job, job_fds = start_counter()
    pids.append(job.pid)
    fds += job_fds
    job.read_counts(2)
    asyncio.run(CriuDriver().dump(job.pid, images, leave_stopped=True))
    state = Path(f"/proc/{job.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    assert state == "T", f"dump -s must leave the job stopped, it is {state}"
    job.drain()
    last = job.seen[-1]
    os.kill(job.pid, signal.SIGCONT)
    after = job.read_counts(2)
    assert after[0] == last + STEP
