"""A job's holder (issue 16 item 5, docs/reliability.md): the spawn helper stays as the job's
parent, as containerd's shim and conmon do, so that a job at home outlives its agent.

The holder keeps copies of the agent's ends of the job's pipes (stdin's write and read ends,
stdout's and stderr's read ends: the job never sees EOF or SIGPIPE because the agent died; it
never reads them), reaps the job and keeps its exit status, and serves a root-only unix socket
``STATE_DIR/jobs/hold-PID.sock``. To each agent that connects (uid 0 by SO_PEERCRED) it sends
one hello line with the pipe fds (SCM_RIGHTS) and the status if the job already ended; then
``{"t": "exit", "status": N}`` when the job ends. The agent sends ``stdin-eof`` (close your copy of
stdin's write end, so the job sees its EOF), ``kill``, ``done`` (the agent needs you no more:
go once the job is dead), and ``moving`` / ``still`` around a move: the hello says whether the
last agent died in one (the job may be frozen, or restored elsewhere: it is not adopted).

No orphan: with no agent connected, the holder kills the job once its mosrun is gone (mosrun
waits 30 s for a new agent, then gives up), and a holder keeps an exit status nobody fetched
for `KEEP_S`. The holder is outside the job's PID, mount and IPC namespaces (it unshares only
CLONE_NEWPID before the fork; the job unshares the rest itself), so CRIU dumps the job as before.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

#: The pipe ends a holder keeps, in this order (stdin's write end goes at the job's stdin EOF).
NAMES = ("in_w", "in_r", "out_r", "err_r")
#: How long a holder keeps an exit status that no agent fetched (mosrun waits 30 s).
KEEP_S = 120.0
#: How long an agent waits for a holder's hello.
HELLO_S = 5.0

#: The holder's loop, run by the spawn helper (spawn.py) after the fork, in the same fresh
#: interpreter (`python -I -S`): stdlib only, no pymosix import.
SOURCE = r"""
import array, select, socket, struct, time
def hold(job, spec):
    h = spec["hold"]
    for fd in spec["stdio"]:
        os.close(fd)  # the job's own ends: the pipes end when the job's writers end
    fds = dict(zip(["in_w", "in_r", "out_r", "err_r"], h["fds"]))
    path = os.path.join(h["dir"], "hold-%d.sock" % job)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    srv.bind(path)
    os.umask(old)
    srv.listen(8)
    watch = os.pidfd_open(job)
    try:
        home = os.pidfd_open(h["home_pid"]) if h["home_pid"] is not None else None
    except OSError:
        home = None
    print("OK %d" % job, flush=True)
    null = os.open(os.devnull, os.O_RDWR)
    for t in (0, 1, 2):
        os.dup2(null, t)
    os.close(null)
    if h.get("notify") is not None:
        os.write(h["notify"], b"0")  # a restore's launcher: criu ended well, the socket is up
        os.close(h["notify"])
    os.setsid()  # out of the agent's session: a terminal's signals to it are not ours
    for s in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    status, conn, buf, released, alone = None, None, b"", False, time.monotonic()
    moving = h.get("moving", False)  # a restored copy is, until its agent says it is committed
    guest = h["home_pid"] is None  # its mosrun is on another node: no PID to watch here
    keep = h["alone_s"] if guest else h["keep_s"]
    def tell(msg):
        try:
            conn.sendall((json.dumps(msg) + "\n").encode())
        except OSError:
            pass
    while True:
        # Done: released by an agent; or no agent, and no mosrun to want the status (or long).
        if status is not None and conn is None and ((home is None and not guest) or time.monotonic() - alone > keep):
            break
        if status is not None and released:
            break
        if status is None and conn is None and home is None and time.monotonic() - alone >= h["alone_s"]:
            os.kill(job, signal.SIGKILL)  # no agent, no mosrun: nobody will ever want it
        rl = [srv] + ([conn] if conn else []) + ([watch] if status is None else []) + ([home] if home is not None else [])
        ready = select.select(rl, [], [], 1.0)[0]
        if status is None and watch in ready:
            status = os.waitpid(job, 0)[1]
            os.close(watch)
            if conn:
                tell({"t": "exit", "status": status})
        if home is not None and home in ready:
            os.close(home)
            home = None
        if conn is not None and conn in ready:
            try:
                data = conn.recv(4096)
            except OSError:
                data = b""
            if not data:
                conn.close()
                conn, buf, alone = None, b"", time.monotonic()
                if moving and status is None:
                    os.kill(job, signal.SIGKILL)  # its agent died moving it: nobody may run it
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line == b"stdin-eof" and "in_w" in fds:
                    os.close(fds.pop("in_w"))
                elif line == b"kill" and status is None:
                    os.kill(job, signal.SIGKILL)
                elif line == b"done":
                    released = True
                elif line in (b"moving", b"still"):
                    moving = line == b"moving"
        if srv in ready:
            c = srv.accept()[0]
            uid = struct.unpack("3i", c.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
            if uid != 0:
                c.close()
                continue
            if conn is not None:
                conn.close()  # an agent that went: the new one speaks for the job now
            conn, buf, released = c, b"", False
            have = [n for n in ["in_w", "in_r", "out_r", "err_r"] if n in fds]
            hello = {"t": "hello", "pid": job, "fds": have, "status": status, "moving": moving}
            hello = (json.dumps(hello) + "\n").encode()
            try:
                if have:
                    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fds[n] for n in have]))]
                    conn.sendmsg([hello], anc)
                else:
                    conn.sendall(hello)
            except OSError:
                conn.close()
                conn, alone = None, time.monotonic()
    try:
        os.unlink(path)
    except OSError:
        pass
"""


def socket_path(jobs_dir: Path, pid: int) -> Path:
    """Where the holder of job `pid` listens."""
    return jobs_dir / f"hold-{pid}.sock"


class Holder:
    """The agent's connection to one job's holder."""

    def __init__(
        self, sock: socket.socket, path: Path, pid: int, fds: dict[str, int], status: int | None
    ) -> None:
        self.sock, self.path, self.pid, self.fds, self.status = sock, path, pid, fds, status
        self._buf = b""
        self._on_exit: Callable[[int], None] | None = None
        self._on_lost: Callable[[], None] | None = None
        self._reading = False
        self.released = False
        #: The agent before was moving the job when it died (the hello says).
        self.was_moving = False

    @classmethod
    def connect_sync(cls, path: Path, timeout_s: float = HELLO_S) -> Holder:
        """Connect and take the hello: the pipe fds (close-on-exec) and the status if any."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout_s)
        fds: list[int] = []
        try:
            sock.connect(str(path))
            buf = b""
            while b"\n" not in buf:
                msg, anc, _flags, _ = sock.recvmsg(
                    4096, socket.CMSG_SPACE(4 * len(NAMES)), socket.MSG_CMSG_CLOEXEC
                )
                for level, kind, data in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds += array.array("i", data[: len(data) - len(data) % 4])
                if not msg:
                    raise OSError(f"the job's holder at {path} closed before its hello")
                buf += msg
            line, rest = buf.split(b"\n", 1)
            hello = json.loads(line)
            names = [str(n) for n in hello["fds"]]
            if len(names) != len(fds) or not set(names) <= set(NAMES):
                raise OSError(f"the job's holder at {path} sent {len(fds)} fds for {names}")
            status = hello.get("status")
            h = cls(sock, path, int(hello["pid"]), dict(zip(names, fds, strict=True)), status)
            h.was_moving = bool(hello.get("moving"))
        except BaseException:
            for fd in fds:
                os.close(fd)
            sock.close()
            raise
        h._buf = rest
        sock.setblocking(False)
        return h

    @classmethod
    async def connect(cls, path: Path) -> Holder:
        return await asyncio.to_thread(cls.connect_sync, path)

    def close_fds(self) -> None:
        """The pipe fds the hello brought, when the agent has its own."""
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = {}

    def watch(self, on_exit: Callable[[int], None], on_lost: Callable[[], None]) -> None:
        """Call on_exit(wait status) when the job ends, on_lost() if the holder goes first."""
        self._on_exit, self._on_lost = on_exit, on_lost
        loop = asyncio.get_running_loop()
        loop.add_reader(self.sock.fileno(), self._readable)
        self._reading = True
        if self._buf:
            loop.call_soon(self._lines)
        if self.status is not None:
            loop.call_soon(on_exit, int(self.status))

    def _readable(self) -> None:
        try:
            data = self.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._stop()
            if self.status is None and not self.released and self._on_lost is not None:
                log.warning("the holder of job pid %d is gone", self.pid)
                self._on_lost()
            return
        self._buf += data
        self._lines()

    def _lines(self) -> None:
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            with contextlib.suppress(ValueError, TypeError, KeyError):
                msg = json.loads(line)
                if msg["t"] == "exit" and self.status is None:
                    self.status = int(msg["status"])
                    if self._on_exit is not None:
                        self._on_exit(self.status)

    def _stop(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self._reading = False

    def _send(self, line: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(line)

    def stdin_ended(self) -> None:
        self._send(b"stdin-eof\n")

    def kill(self) -> None:
        self._send(b"kill\n")

    def moving(self, on: bool) -> None:
        self._send(b"moving\n" if on else b"still\n")

    def release(self) -> None:
        """The agent is done with the job (it exited, or moved away and its original dies)."""
        if self.released:
            return
        self.released = True
        self._send(b"done\n")
        with contextlib.suppress(RuntimeError):
            self._stop()
        self.sock.close()
