"""A job's stdout and stderr through mosrun, byte-exact, in bulk: at home, and with a move in the
middle of the stream (the frames of migration/stdio.py, the bounded queues, the flush on a move).
Checksums, not timings: the throughput is bench/stdio.py's business."""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
from dataclasses import dataclass, field

import pytest

from pymosix.migration.stdio import STDIO_FRAMES, TO_MOSRUN, FrameReader, parse_ctrl
from pymosix.testbed import TestBed
from tests.kernel.conftest import wait_until
from tests.kernel.jobs import MakeBed

pytestmark = pytest.mark.kernel

MB = 1 << 20
#: Writes 64 KiB blocks of varied bytes to stdout and a line to stderr every 16th block, until a
#: line arrives on stdin once at least MIN_MB are out; then a trailer on stderr with its checksums.
WRITER = """
import hashlib, os, select, sys
block = bytes(range(256)) * 256
def put(fd, b):
    while b:
        b = b[os.write(fd, b):]
out, err = hashlib.sha256(), hashlib.sha256()
n, stop = 0, False
while not stop or n * 65536 < {min_bytes}:
    data = bytes([n % 251]) + block[n % 256 + 1:] + block[:n % 256]
    put(1, data)
    out.update(data)
    if n % 16 == 0:
        line = f"block {{n}} went out\\n".encode()
        put(2, line)
        err.update(line)
    n += 1
    if not stop and select.select([0], [], [], 0)[0]:
        stop = bool(sys.stdin.readline() or True)
put(2, f"DONE {{n}} {{out.hexdigest()}} {{err.hexdigest()}}\\n".encode())
"""


@dataclass
class Stream:
    """One pipe of mosrun read to its end in the background: its size and checksum."""

    pipe: object
    size: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    #: All of it, for a short stream (stderr).
    keep: bool = False
    data: bytearray = field(default_factory=bytearray)
    thread: threading.Thread | None = None

    def start(self) -> Stream:
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()
        return self

    def _pump(self) -> None:
        f = self.pipe
        while chunk := f.read1(1 << 20):  # type: ignore[attr-defined]
            self.size += len(chunk)
            self.digest.update(chunk)
            if self.keep:
                self.data += chunk


def run_writer(
    bed: TestBed, user: str, procs: list[subprocess.Popen[bytes]], move_at: int | None
) -> None:
    min_bytes = 50 * MB
    p = bed.popen(
        1,
        ["mosrun", "-L", "python3", "-c", WRITER.format(min_bytes=min_bytes)],
        user=user,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    procs.append(p)
    assert p.stdin is not None
    out, err = Stream(p.stdout).start(), Stream(p.stderr, keep=True).start()
    if move_at is not None:
        wait_until(f"{move_at // MB} MB out", lambda: out.size >= move_at, 60.0)
        r = bed.exec(1, ["migrate", str(p.pid), "0x640c"], user=user, timeout_s=120)
        assert r.returncode == 0, r.stderr
        moved_at = out.size
        jobs = bed.call(1, "jobs")["jobs"]
        assert [int(str(j["node"])) for j in jobs if j["home_pid"] == p.pid] == [0x640C]
    # Past the move, still writing: then the job may stop (after at least min_bytes).
    wait_until("more output", lambda: out.size >= (move_at or 0) + 4 * MB, 60.0)
    p.stdin.write(b"stop\n")
    p.stdin.close()
    assert p.wait(timeout=120) == 0
    for s in (out, err):
        assert s.thread is not None
        s.thread.join(timeout=30)
    body, _, trailer = bytes(err.data).rstrip(b"\n").rpartition(b"\n")
    done = trailer.decode().split()
    assert done[0] == "DONE", err.data[-300:]
    blocks, out_sha, err_sha = int(done[1]), done[2], done[3]
    assert out.size == blocks * 65536 >= min_bytes
    assert out.digest.hexdigest() == out_sha, "stdout arrived byte-exact, in order, once"
    assert hashlib.sha256(body + b"\n").hexdigest() == err_sha, "stderr too"
    assert body.count(b"\n") + 1 == len(range(0, blocks, 16))
    if move_at is not None:
        assert moved_at < out.size, "output went on flowing after the move"


def test_50_mb_of_stdout_and_some_stderr_arrive_byte_exact_at_home(
    make_bed: MakeBed, user: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    bed = make_bed(1)
    run_writer(bed, user, procs, move_at=None)


def test_stdout_and_stderr_stay_byte_exact_across_a_move_in_mid_stream(
    make_bed: MakeBed, user: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    bed = make_bed(2, extra_args=["--set", "balance=false"])
    run_writer(bed, user, procs, move_at=20 * MB)


#: A client that starts a job as mosrun does, then sends a frame of no known kind.
BAD_CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
req = {"op": "run", "argv": ["/bin/sleep", "60"], "cwd": "/", "env": {}, "lock": True}
s.sendall(json.dumps(req).encode() + b"\\n")
f = s.makefile("rb")
print(f.readline().decode().strip())
s.sendall(bytes([9, 0, 0, 0, 0, 2]) + b"{}")
print(f.read().hex())
"""


def test_a_bad_frame_ends_that_connection_with_one_line_and_spares_other_jobs(
    make_bed: MakeBed, user: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    bed = make_bed(1)
    other = bed.popen(
        1,
        ["mosrun", "-h", "sh", "-c", "read x; echo got $x"],
        user=user,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    procs.append(other)
    wait_until("the other job", lambda: len(bed.call(1, "jobs")["jobs"]) == 1, 10.0)
    r = bed.exec(1, ["python3", "-c", BAD_CLIENT, str(bed.node(1).socket)], user=user)
    assert r.returncode == 0, r.stderr
    started, rest = r.stdout.splitlines()
    assert json.loads(started)["stdio"] == STDIO_FRAMES
    reader = FrameReader(TO_MOSRUN)
    frames = [parse_ctrl(p) for kind, _fd, p in reader.feed(bytes.fromhex(rest))]
    assert frames[0] == {
        "t": "error",
        "message": "unknown stdio frame kind 9 (not a mosrun of this version?)",
    }
    assert frames[-1]["t"] == "exit", "the job was ended, and then the connection"
    assert other.communicate(b"on\n", timeout=30)[0] == b"got on\n"
    assert other.returncode == 0
    assert "Traceback" not in bed.node(1).log.read_text(errors="replace")
