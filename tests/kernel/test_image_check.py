"""The image a target restores opens only what the offer listed (issue 14, item 5): the reader of
CRIU images (criuimage.py) on a real dump by the provisioned CRIU, and a real move whose offer
leaves a file out (the `unlist` fault), which the target refuses before `criu restore`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pymosix.migration.criu import CriuDriver, make_images_dir
from pymosix.migration.criuimage import GHOST
from pymosix.migration.imagecheck import read, refusal
from pymosix.migration.needs import gather, job_files
from pymosix.migration.spawn import JobSpec, become_subreaper, spawn_job
from pymosix.testbed import kernel
from tests.kernel.conftest import wait_until
from tests.kernel.jobs import HOLDS, Job, MakeBed

pytestmark = pytest.mark.kernel

#: Holds a file of each kind in its cwd (argv[1]): read, read-write, appended, a shared
#: writable mapping and a private read-only one (both without an fd: mapped with libc's mmap,
#: then closed), and one it deleted; prints its fds, then waits.
HOLDER = r"""
import ctypes, os, sys, time
os.chdir(sys.argv[1])
os.umask(0o022)
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
def mapped(name, prot, flags):
    fd = os.open(name, os.O_RDWR if prot & 2 else os.O_RDONLY)
    addr = libc.mmap(None, 8192, prot, flags, fd, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
    os.close(fd)
mapped("shared.bin", 3, 1)
mapped("private.bin", 1, 2)
ro, rw, log = open("ro.txt"), open("rw.txt", "r+"), open("log.txt", "a")
gone = open("gone.txt", "w")
gone.write("deleted, still open")
gone.flush()
os.unlink("gone.txt")
print(ro.fileno(), rw.fileno(), log.fileno(), gone.fileno(), flush=True)
while True:
    time.sleep(0.05)
"""


@pytest.fixture
def holder() -> Iterator[tuple[int, Path, Path, list[int]]]:
    """The HOLDER job (PID 1 of its own PID namespace, as the agent starts jobs), its directory,
    an image directory, and its fds; all gone afterwards."""
    become_subreaper()
    work = Path(tempfile.mkdtemp(prefix="pmx-imgc-", dir="/var/tmp"))
    images = make_images_dir("pmx-imgc-")
    for name in ("ro.txt", "rw.txt", "log.txt"):
        (work / name).write_text(f"{name}\n")
    for name in ("shared.bin", "private.bin"):
        (work / name).write_bytes(b"\0" * 8192)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = spawn_job(
        JobSpec([sys.executable, "-c", HOLDER, str(work)], env={"PATH": "/usr/bin:/bin"}),
        in_r,
        out_w,
        out_w,
    )
    os.close(in_r)
    os.close(out_w)
    try:
        with os.fdopen(out_r, "rb", closefd=False) as out:
            fds = [int(x) for x in out.readline().split()]
        assert len(fds) == 4
        yield pid, work, images, fds
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        for fd in (in_w, out_r):
            os.close(fd)
        shutil.rmtree(images, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def test_the_reader_lists_exactly_the_files_a_dumped_process_holds(
    holder: tuple[int, Path, Path, list[int]],
) -> None:
    pid, work, images, (ro, rw, log, gone) = holder
    driver = CriuDriver()
    offered = job_files(pid)
    needs = gather(pid, 0, 0, asyncio.run(driver.version()))
    asyncio.run(driver.dump(pid, images, leave_stopped=True))
    opened = read(images)
    mine = {
        (o.path, o.write, tuple(sorted(o.how)))
        for o in opened.values()
        if o.path == str(work) or o.path.startswith(f"{work}/")
    }
    assert mine == {
        (f"{work}/ro.txt", False, (f"fd {ro}",)),
        (f"{work}/rw.txt", True, (f"fd {rw}",)),
        (f"{work}/log.txt", True, (f"fd {log}",)),
        (f"{work}/shared.bin", True, ("mapped",)),
        (f"{work}/private.bin", False, ("mapped",)),
        (f"{work}/gone.txt", True, (f"fd {gone}",)),
        (str(work), False, ("cwd",)),
    }
    # The deleted one: CRIU carries it as a ghost, made again as root's plain 0644 file.
    deleted = [o for o in opened.values() if o.path == f"{work}/gone.txt"]
    assert [(o.remap, o.made) for o in deleted] == [(GHOST, (0, 0, stat.S_IFREG | 0o644))]
    # The offer of the same job says the same, in its words.
    assert {p: how for p, how in offered.items() if p.startswith(str(work))} == {
        f"{work}/ro.txt": "open",
        f"{work}/rw.txt": "open-rw",
        f"{work}/log.txt": "open-rw",
        f"{work}/shared.bin": "open-rw",
        f"{work}/private.bin": "mapped",
        str(work): "cwd",
    }
    # Everything else the image opens: its interpreter, libraries, / and pseudo files.
    others = {o.path for o in opened.values()} - {p for p, *_ in mine}
    assert sys.executable in others or os.path.realpath(sys.executable) in others
    assert "/" in others
    # The whole image agrees with the whole offer; without one file, that file is named.
    assert refusal(opened, needs) is None
    less = replace(needs, files=tuple(f for f in needs.files if f.path != f"{work}/rw.txt"))
    assert refusal(opened, less) == (
        f"the image opens {work}/rw.txt for writing, which the offer did not list"
    )


# --- a real move ---------------------------------------------------------------------------------


def _copies(token: str) -> int:
    """Live copies of the job (any node: the bed shares this PID namespace)."""
    return len(kernel.copies_of(token))


def _row(job: Job) -> dict[str, object]:
    r = job.row()
    assert r is not None
    return r


def _intact(job: Job) -> None:
    """Every value the job printed reached mosrun once, in order, from its first on."""
    ints = [int(x) for x in bytes(job.out).split()]
    assert ints == list(range(1, len(ints) + 1)), ints[:5]


def test_an_offer_that_leaves_out_a_file_the_image_opens_is_refused_and_the_job_goes_on(
    make_bed: MakeBed, jobs: list[Job], user: str
) -> None:
    bed = make_bed(2)
    token = secrets.token_hex(4)
    data = bed.shared_dir / f"imgc-{token}.csv"
    data.write_text("1,2,3\n")
    data.chmod(0o644)
    # Locked (-L): only migrate moves it, never the balancer.
    job = Job(bed, 1, ["-L", "python3", "-c", HOLDS, str(data)], user=user)
    jobs.append(job)
    job.counts(2)
    # node1, the source, leaves the data file out of its offer; its image still opens it.
    bed.set_faults(1, f"unlist {data}\n")
    r = job.migrate("0x640c")
    assert r.returncode != 0
    assert f"the image opens {data}, which the offer did not list" in r.stderr, r.stderr
    assert "it goes on here" in r.stderr
    print(r.stderr)
    row = _row(job)
    assert row["node"] == 0x640B
    assert row["freezes"] == 1, "frozen once, for the move the target refused"
    # Nothing restored on node2, no image left on either node, one copy of the job, counting on.
    assert _copies(token) == 1
    assert bed.glob(2, "/dev/shm/pymosix-640c-*/in-*") == []
    assert bed.glob(1, "/dev/shm/pymosix-640b-*/out-*") == []
    before = job.drain_ints()
    after = job.counts(3)
    seq = before + after
    assert seq == list(range(seq[0], seq[0] + len(seq))), seq
    # An honest offer: the same job moves.
    bed.set_faults(1, "")
    r = job.migrate("0x640c")
    assert r.returncode == 0, r.stderr
    wait_until("home to see the job on node2", lambda: _row(job)["node"] == 0x640C, 10.0)
    wait_until("home to count the second freeze", lambda: _row(job)["freezes"] == 2, 10.0)
    job.counts(2)
    assert _copies(token) == 1
    _intact(job)
    deadline = time.monotonic() + 20
    while job.proc.poll() is None and time.monotonic() < deadline:
        job.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            job.proc.wait(timeout=2)
    assert job.proc.returncode == 128 + signal.SIGTERM
