"""The pre-checks agree with CRIU. Each refusal: pymosix refuses the job without freezing it, and
bare criu, run in pymosix's order (dump -s on node1, restore -d -S on node2), fails on the very
same job or restores it broken. Each accepted kind: the job moves with `migrate` and what it
holds still works there (System V shm, memfd shared between processes, symlinks, ping)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import select
import shutil
import signal
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pymosix.config import find_criu
from pymosix.migration.criu import CriuDriver, dump_args, last_error, restore_args
from pymosix.testbed import TestBed
from tests.kernel.jobs import Job, MakeBed

pytestmark = pytest.mark.kernel

#: A CRIU 4.1 to compare against, if one is kept: the 4.1 case is skipped without it.
CRIU_41 = os.environ.get("PYMOSIX_CRIU41", "")


def looping(setup: str, each: str = "pass") -> str:
    """A Python job: `setup`, then every 50 ms `each` and print the round's number; if `each`
    fails (the state it holds does not work), print "broken WHY" and exit."""
    return (
        "import ctypes, mmap, os, socket, struct, sys, time\n"
        f"{textwrap.dedent(setup)}\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        "    try:\n"
        f"{textwrap.indent(textwrap.dedent(each), '        ')}\n"
        "    except Exception as e:\n"
        '        print("broken", type(e).__name__, e, flush=True)\n'
        "        sys.exit(3)\n"
        "    print(i, flush=True)\n"
        "    time.sleep(0.05)\n"
    )


def start(
    bed: TestBed, jobs: list[Job], program: str, user: str | None = None, args: Sequence[str] = ()
) -> Job:
    """The job on node1, counting (its state is set up by then)."""
    argv = ["python3", "-c", program, *args]
    job = Job(bed, 1, argv, user=user, cwd=str(bed.shared_dir))
    jobs.append(job)
    job.counts(2)
    return job


def moves_and_goes_on(job: Job, target: str = "0x640c", node: int = 0x640C) -> None:
    """migrate the job and see it count on there, doing its round's work."""
    r = job.migrate(target)
    assert r.returncode == 0, r.stderr
    row = job.row()
    assert row is not None, f"the job ended: {bytes(job.out[-200:])!r}"
    assert row["node"] == node
    before = job.drain_ints()
    after = job.counts(5)
    seq = before + after
    assert seq == list(range(seq[0], seq[0] + len(seq))), seq


def refused_and_stays(job: Job, reason: str) -> str:
    """migrate is refused with `reason`; the job was not frozen and goes on at home."""
    r = job.migrate("0x640c")
    assert r.returncode != 0
    assert reason in r.stderr, r.stderr
    assert "cannot move" in r.stderr, r.stderr
    assert job.node() == 0x640B
    row = job.row()
    assert row is not None
    assert row["migrations"] == 0
    before = job.drain_ints()
    after = job.counts(3)
    seq = before + after
    assert seq == list(range(seq[0], seq[0] + len(seq))), seq
    return r.stderr.strip()


@dataclass
class Bare:
    """What bare criu made of a job: the step that failed and criu's error, or ("ran", the
    restored copy's first lines)."""

    step: str
    said: str = ""
    lines: list[str] = field(default_factory=list)


def _read_lines(fd: int, until: float) -> list[str]:
    buf = b""
    while time.monotonic() < until:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
        lines = buf.decode(errors="replace").splitlines()
        if len(lines) >= 6 or any(ln.startswith("broken") for ln in lines):
            break
    return buf.decode(errors="replace").splitlines()


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)


def bare_criu(bed: TestBed, job: Job, criu: str | None = None) -> Bare:
    """Dump the job on node1 and restore it on node2 with criu alone, in pymosix's order and
    with its options; the restored copy's stdout comes to a pipe of ours."""
    criu = criu or find_criu() or "criu"
    row = job.row()
    assert row is not None
    pid = int(str(row["pid"]))
    images = bed.shared_dir / f"bare-{secrets.token_hex(3)}"
    images.mkdir(mode=0o700)
    try:
        dump = bed.exec(1, [criu, *dump_args(pid, images, images / "dump.log")], timeout_s=60)
        if dump.returncode != 0:
            return Bare("dump", last_error((images / "dump.log").read_text(errors="replace")))
        out_r, out_w = os.pipe()
        try:
            keys = {out_w: os.readlink(f"/proc/{pid}/fd/1")}
            argv = [criu, *restore_args(images, images / "restore.log", images / "pid", keys)]
            rst = bed.exec(2, argv, timeout_s=60, pass_fds=(out_w,))
            os.close(out_w)
            if rst.returncode != 0:
                return Bare("restore", last_error((images / "restore.log").read_text("utf-8")))
            restored = int((images / "pid").read_text())
            try:
                return Bare("ran", lines=_read_lines(out_r, time.monotonic() + 5))
            finally:
                _kill(restored)
        finally:
            os.close(out_r)
            with contextlib.suppress(OSError):
                os.close(out_w)
    finally:
        shutil.rmtree(images, ignore_errors=True)


def broke(bare: Bare) -> bool:
    """Whether the restored copy found what it held broken (or never ran at all)."""
    return bare.step != "ran" or not bare.lines or bare.lines[-1].startswith("broken")


@pytest.fixture(name="criu42")
def _criu42() -> None:
    version = asyncio.run(CriuDriver().version())
    if version < (4, 2):
        pytest.skip(f"needs CRIU >= 4.2 (PYMOSIX_CRIU); this one is {version}")


# --- accepted: they move, and keep working -------------------------------------------------

SYSV = looping(
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    shm = libc.shmget(0, 4096, 0o1600)
    addr = libc.shmat(shm, None, 0)
    seg = (ctypes.c_char * 4096).from_address(addr)
    seg[0:5] = b"hello"
    """,
    """
    assert seg[0:5] == b"hello", seg[0:5]
    seg[8:16] = struct.pack("q", i)
    assert struct.unpack("q", seg[8:16])[0] == i
    """,
)


def test_system_v_shared_memory_moves_with_its_contents(
    make_bed: MakeBed, jobs: list[Job], criu42: None
) -> None:
    bed = make_bed(2)
    job = start(bed, jobs, SYSV)
    moves_and_goes_on(job)
    moves_and_goes_on(job, "home", 0x640B)


MEMFD = looping(
    """
    fd = os.memfd_create("pmx-shared")
    os.ftruncate(fd, 4096)
    mem = mmap.mmap(fd, 4096, mmap.MAP_SHARED)
    mem[0:5] = b"hello"
    if os.fork() == 0:  # a second process of the job counts into the shared page
        n = 0
        while True:
            n += 1
            mem[8:16] = struct.pack("q", n)
            time.sleep(0.01)
    last, still = -1, 0
    """,
    """
    now = struct.unpack("q", mem[8:16])[0]
    still = still + 1 if now == last else 0  # right after a restore the child may not have run
    assert mem[0:5] == b"hello" and still < 20, (mem[0:5], now, last)
    last = now
    """,
)


def test_memfd_shared_between_processes_moves_and_stays_shared(
    make_bed: MakeBed, jobs: list[Job], criu42: None
) -> None:
    bed = make_bed(2)
    job = start(bed, jobs, MEMFD)
    moves_and_goes_on(job)


SYMLINK = looping(
    """
    link = os.path.join(os.getcwd(), "pmx-link-%d" % os.getpid())
    os.symlink("/nonexistent/target", link)
    fd = os.open(link, os.O_PATH | os.O_NOFOLLOW)
    """,
    """
    assert os.readlink("", dir_fd=fd) == "/nonexistent/target"
    """,
)


def test_an_o_path_fd_on_a_dangling_symlink_moves(
    make_bed: MakeBed, jobs: list[Job], criu42: None
) -> None:
    bed = make_bed(2)
    job = start(bed, jobs, SYMLINK)
    moves_and_goes_on(job)


PING = looping(
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    s.settimeout(5)
    """,
    """
    s.sendto(b"\\x08\\x00\\x00\\x00\\x00\\x00" + struct.pack("!H", i & 0xFFFF) + b"pmx",
             ("127.0.0.1", 0))
    assert s.recv(64)[0] == 0  # an echo reply
    """,
)


def allow_ping(bed: TestBed) -> None:
    """Let every group open ICMP ("ping") sockets on every node, as most distributions do."""
    for node in bed.nodes:
        bed.exec(
            node.index, ["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"], check=True
        )


def test_a_ping_socket_moves_and_pings(make_bed: MakeBed, jobs: list[Job], criu42: None) -> None:
    bed = make_bed(2)
    allow_ping(bed)
    job = start(bed, jobs, PING)
    moves_and_goes_on(job)


# --- refused: pymosix does not freeze the job, and bare criu fails on it -------------------

TRACED = looping(
    """
    child = os.fork()
    if child == 0:
        ctypes.CDLL(None).ptrace(0, 0, None, None)  # PTRACE_TRACEME: the parent traces it
        while True:
            time.sleep(1)
    """
)


def test_a_traced_process_is_refused(make_bed: MakeBed, jobs: list[Job]) -> None:
    bed = make_bed(2)
    job = start(bed, jobs, TRACED)
    refused_and_stays(job, "is being traced (ptrace); CRIU cannot seize it")
    bare = bare_criu(bed, job)
    assert bare.step == "dump", bare


DEVICE = looping("dev = open('/dev/loop-control', 'rb')")


def test_a_device_is_refused(make_bed: MakeBed, jobs: list[Job]) -> None:
    if not Path("/dev/loop-control").exists():
        pytest.skip("no /dev/loop-control here")
    bed = make_bed(2)
    job = start(bed, jobs, DEVICE)
    refused_and_stays(job, "has the device /dev/loop-control open (fd 3); CRIU cannot dump it")
    bare = bare_criu(bed, job)
    assert bare.step == "dump", bare
    assert "Can't dump file 3 of that type" in bare.said, bare


PENDING = looping(
    """
    srv = socket.socket(); srv.bind(("127.0.0.1", 7022)); srv.listen()
    cli = socket.create_connection(("127.0.0.1", 7022))  # never accepted
    """
)


def test_connections_not_yet_accepted_are_refused(
    make_bed: MakeBed, jobs: list[Job], criu42: None
) -> None:
    bed = make_bed(2)
    job = start(bed, jobs, PENDING)
    refused_and_stays(job, "has 1 connection(s) not yet accepted on 127.0.0.1:7022")
    bare = bare_criu(bed, job)
    assert bare.step == "dump", bare
    assert "In-flight connection" in bare.said, bare


def test_listening_on_an_address_of_this_node_is_refused(
    make_bed: MakeBed, jobs: list[Job], criu42: None
) -> None:
    bed = make_bed(2)
    address = bed.node(1).address
    job = start(
        bed, jobs, looping(f'srv = socket.socket(); srv.bind(("{address}", 7020)); srv.listen()')
    )
    refused_and_stays(job, f"listens on {address}:7020, an address only this node has")
    bare = bare_criu(bed, job)
    assert bare.step == "restore", bare
    assert "Cannot assign requested address" in bare.said, bare


INET = looping('udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("127.0.0.1", 0))')


def test_criu_41_cannot_dump_inet_sockets_on_this_kernel(
    make_bed: MakeBed, jobs: list[Job], monkeypatch: pytest.MonkeyPatch
) -> None:
    if not CRIU_41 or asyncio.run(CriuDriver(CRIU_41).version())[:2] != (4, 1):
        pytest.skip(f"no CRIU 4.1 given (PYMOSIX_CRIU41={CRIU_41!r})")
    release = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
    if release < (6, 16):
        pytest.skip("CRIU 4.1 dumps inet sockets before Linux 6.16")
    monkeypatch.setenv("PYMOSIX_CRIU", CRIU_41)  # the agents run 4.1
    bed = make_bed(2)
    job = start(bed, jobs, INET)
    refused_and_stays(job, "holds a UDP socket (fd 3); CRIU 4.1.1 cannot dump inet sockets")
    bare = bare_criu(bed, job, CRIU_41)
    assert bare.step == "dump", bare
    assert "Can't get 1:16 opt" in bare.said, bare
