"""A job as the node it runs on holds it: its process, its stdio pipes, its link home, and the
way out (migration to another node) with rollback if anything fails.

Stdio order across a move (not one byte lost, duplicated or reordered): before freezing, home is
asked to pause stdin; after the freeze, what the job wrote is drained and flushed home and home
acknowledges it; what it had not read yet is read back out of its stdin pipe (the agent keeps a
read end) and travels with the image, to be written first into the new pipe on the target.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import signal
import struct
import termios
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, cast

import psutil

from pymosix.errors import CriuError, MigrationError
from pymosix.ids import format_node_id
from pymosix.keys import KeyRing
from pymosix.migration import checkpoint, cputime, postcopy, procstate
from pymosix.migration.cantmove import cantmove, process_owner, tree_pids
from pymosix.migration.channel import Channel, open_channel
from pymosix.migration.criu import CriuDriver, resume_dumped
from pymosix.migration.faults import Faults
from pymosix.migration.holder import Holder
from pymosix.migration.lifecycle import DEADLINES, RETRY_S, E, JobMeta, Machine, S
from pymosix.migration.link import Frame, Link
from pymosix.migration.moves import CannotMove, MoveStats, Refused
from pymosix.migration.needs import gather
from pymosix.migration.pages import page_socketpair, relay_pages
from pymosix.migration.stdio import CHUNK as STDIO_CHUNK


class _Agent(Protocol):
    @property
    def keys(self) -> KeyRing: ...
    @property
    def node_id(self) -> int: ...
    @property
    def stopping(self) -> bool: ...


class HostEngine(Protocol):
    """What a hosted job needs of its node's engine (migration/engine.py), without the import:
    the engine imports this module, not the other way round."""

    @property
    def agent(self) -> _Agent: ...
    @property
    def criu(self) -> CriuDriver: ...
    @property
    def image_root(self) -> Path: ...
    @property
    def faults(self) -> Faults: ...
    @property
    def postcopy_min_mib(self) -> int: ...
    async def migrate_hosted(
        self, job: HostedJob, target: int, offer_load: float | None = None
    ) -> int: ...
    def hosted_gone(self, job: HostedJob) -> None: ...


__all__ = ["HostEngine", "HostedJob", "JobMeta", "close_channel"]

log = logging.getLogger(__name__)

#: One read of a job's output pipe (they are widened to hold more: migration/stdio.py).
CHUNK = STDIO_CHUNK
#: Bytes of the job's output queued for home before its pipes are left unread (then the job
#: blocks on its writes, as with any pipe), and the level at which reading starts again.
OUT_HIGH = 4 * 1024 * 1024
OUT_LOW = OUT_HIGH // 2
#: Beats to home; a home silent this long is gone: the job is killed (it would be an orphan).
BEAT_S = 1.0
HOME_SILENT_S = 10.0
FILE_CHUNK = 1024 * 1024
#: Signals whose default action ends the process: a namespace init ignores them unless it has a
#: handler, so the agent turns them into SIGKILL and reports the original signal.
_TERMINATING = {
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTERM,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
    signal.SIGPIPE,
    signal.SIGXCPU,
    signal.SIGXFSZ,
    signal.SIGVTALRM,
    signal.SIGPROF,
}
_STOPPING = {signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}


async def close_channel(ch: Channel, wait_s: float = 2.0) -> None:
    """Close, flushing what is queued for a while; a peer that stopped reading (frozen, cut
    off) would hold a plain close forever: then the connection is aborted."""
    try:
        await asyncio.wait_for(ch.aclose(), wait_s)
    except TimeoutError:
        if ch.stream.transport is not None:
            ch.stream.transport.abort()


def _nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


def _read_all(fd: int) -> bytes:
    out = bytearray()
    while True:
        try:
            chunk = os.read(fd, CHUNK)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _read_available(fd: int) -> bytes:
    """What is buffered in a pipe now, without blocking and without touching its O_NONBLOCK."""
    out = bytearray()
    while (n := struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]) > 0:
        out += os.read(fd, n)
    return bytes(out)


@dataclass
class HostedJob:
    """One job running on this node."""

    engine: HostEngine
    meta: JobMeta
    pid: int
    stdin_w: int | None
    stdin_r: int
    out_fds: dict[int, int]  # job fd (1, 2) -> our read end
    link: Link
    arrived_at: float  # monotonic
    stdin_eof: bool = False
    pending_in: bytearray = field(default_factory=bytearray)
    state: str = "running"
    killed_by: int | None = None
    cpu_percent: float = 0.0
    rss: int = 0
    #: CPU seconds its processes used here (the total is meta.cpu_s plus this).
    cpu_here_s: float = 0.0
    #: Why it could not move, last time it tried (mps WHY, mosctl cantmove).
    why: str | None = None
    _moving: asyncio.Lock = field(default_factory=asyncio.Lock)
    _in_ready: asyncio.Event = field(default_factory=asyncio.Event)
    _in_paused: bool = False
    _paused_ack: asyncio.Event = field(default_factory=asyncio.Event)
    _flush_ack: asyncio.Event = field(default_factory=asyncio.Event)
    _outq: asyncio.Queue[tuple[int, dict[str, Any]] | None] = field(default_factory=asyncio.Queue)
    #: Output bytes in _outq; whether its pipes should be read (not while frozen), and whether
    #: reading waits for home to take what is queued (backpressure); pipes at their end.
    _out_bytes: int = 0
    _out_wanted: bool = False
    _out_held: bool = False
    _out_ended: set[int] = field(default_factory=set)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _receiving: asyncio.Task[None] | None = None
    _sent: asyncio.Event = field(default_factory=asyncio.Event)  # a frame went home
    heard: float = field(default_factory=time.monotonic)  # last frame from home
    in_end: int = 0  # stdin: home's count of bytes sent, up to the last IN received
    _pidfd: int = -1
    _done: asyncio.Event = field(default_factory=asyncio.Event)
    #: The move under way (lifecycle.py), its id (home arbitrates by it), home's verdict.
    move: Machine | None = None
    move_id: str = ""
    _verdict: asyncio.Future[bool] | None = None
    #: What the target said it received of the last image (for the metrics' histogram).
    _image_bytes: int = 0
    #: The move under way is a post-copy (both nodes agreed in the offer: postcopy.py).
    postcopy: bool = False
    #: The job's parent when it is not this agent (a job started here: migration/holder.py).
    holder: Holder | None = None

    # --- life --------------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for fd in (
            *self.out_fds.values(),
            *([self.stdin_w] if self.stdin_w is not None else []),
        ):
            # Not stdin_r: it shares its open file, and so O_NONBLOCK, with the job's stdin.
            _nonblocking(fd)
        self._watch_output()
        if self.holder is not None:  # its parent: the job may have ended (and been reaped)
            self.holder.watch(self._exited, self._holder_lost)
        else:
            self._pidfd = os.pidfd_open(self.pid)
            loop.add_reader(self._pidfd, self._on_exit)
        self._receiving = asyncio.create_task(self._receiver())
        self._tasks = [
            asyncio.create_task(self._sender()),
            self._receiving,
            asyncio.create_task(self._stdin_writer()),
            asyncio.create_task(self._stats()),
            asyncio.create_task(self._beats()),
        ]
        if self.meta.checkpoint_s > 0:
            self._tasks += [asyncio.create_task(checkpoint.keep(self))]
            self._tasks += [asyncio.create_task(checkpoint.guard(self))]
        if self.pending_in or self.stdin_eof:  # a restored job whose stdin had ended
            self._in_ready.set()

    def _watch_output(self) -> None:
        self._out_wanted = True
        if not self._out_held:
            self._add_output_readers()

    def _unwatch_output(self) -> None:
        self._out_wanted = False
        self._remove_output_readers()

    def _add_output_readers(self) -> None:
        loop = asyncio.get_running_loop()
        for job_fd, fd in self.out_fds.items():
            if fd not in self._out_ended:
                loop.add_reader(fd, self._on_output, job_fd, fd)

    def _remove_output_readers(self) -> None:
        loop = asyncio.get_running_loop()
        for fd in self.out_fds.values():
            loop.remove_reader(fd)

    def _on_output(self, job_fd: int, fd: int) -> None:
        try:
            data = os.read(fd, CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._out_ended.add(fd)
            asyncio.get_running_loop().remove_reader(fd)
            return
        self._queue_out(job_fd, data)

    def _queue_out(self, job_fd: int, data: bytes) -> None:
        self._outq.put_nowait((Frame.OUT, {"fd": job_fd, "data": data}))
        self._out_bytes += len(data)
        if self._out_bytes >= OUT_HIGH and not self._out_held:
            self._out_held = True
            self._remove_output_readers()

    def _sent_out(self, size: int) -> None:
        self._out_bytes -= size
        if self._out_held and self._out_bytes <= OUT_LOW:
            self._out_held = False
            if self._out_wanted:
                self._add_output_readers()

    async def _sender(self) -> None:
        """All frames home go through one queue, so their order is the order they were made."""
        while (item := await self._outq.get()) is not None:
            try:
                await self.link.send(*item)
            except EOFError:
                return
            if item[0] == Frame.OUT:
                self._sent_out(len(item[1]["data"]))
            self._sent.set()
        # None: nothing more will come from here (the job exited or moved on).
        if self.state != "exited":
            self.link.close()  # moved: home had all of its output before the move committed
            return
        # Exited: its last output and its exit status may still be on their way; the link ends
        # once home has them (and home's frames are read here alone, to be dropped).
        receiving = self._receiving
        if receiving is not None and receiving is not asyncio.current_task():
            receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiving
        await self.link.end()

    def flush_output(self, then: tuple[int, dict[str, Any]] | None = None) -> None:
        """What the job wrote so far goes home now, and `then` right behind it (the job is
        frozen or gone: nothing it writes can come between)."""
        for job_fd, fd in self.out_fds.items():
            if data := _read_all(fd):
                self._queue_out(job_fd, data)
        if then is not None:
            self._outq.put_nowait(then)

    async def send_home(self, kind: int, payload: dict[str, Any]) -> bool:
        """Queue a frame home, waiting while many are queued; False once the job is gone."""
        while self._outq.qsize() > 4 and self.state == "running":
            self._sent.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sent.wait(), 1.0)
        if self.state == "running":
            self._outq.put_nowait((kind, payload))
        return self.state == "running"

    @property
    def moving(self) -> asyncio.Lock:  # held during a move or a checkpoint: one dump at a time
        return self._moving

    async def _beats(self) -> None:
        """Home hears the node is alive even when the job says nothing (home.DEAD_AFTER_S)."""
        while True:
            await asyncio.sleep(BEAT_S)
            self._outq.put_nowait((Frame.BEAT, {}))

    async def _receiver(self) -> None:
        while True:
            try:
                # Home beats too: silence this long means it is gone (or cut off).
                kind, p = await asyncio.wait_for(self.link.recv(), HOME_SILENT_S)
            except (EOFError, TimeoutError):
                if self.holder is not None and self.engine.agent.stopping:
                    return  # the agent stops: the holder keeps the job for its next agent
                if self.state == "running":
                    # Home is gone (mosrun died with its node): no orphans.
                    log.warning("job %d lost its home; killing it", self.meta.home_pid)
                    self.deliver_signal(signal.SIGKILL)
                return
            self.heard = time.monotonic()  # checkpoint.guard stops the job when home is silent
            if kind == Frame.IN:
                self.pending_in += bytes(p["data"])
                self.in_end = int(p.get("at", self.in_end)) + len(p["data"])
                self._in_ready.set()
            elif kind == Frame.EOF:
                self.stdin_eof = True
                self._in_ready.set()
            elif kind == Frame.SIGNAL:
                self.deliver_signal(int(p["sig"]))
            elif kind == Frame.KILL:
                self.deliver_signal(signal.SIGKILL)
            elif kind == Frame.PAUSED:
                self._paused_ack.set()
            elif kind == Frame.FLUSH_ACK:
                self._flush_ack.set()
            elif kind == Frame.VERDICT:
                v = self._verdict
                if v is not None and not v.done() and p.get("move") == self.move_id:
                    v.set_result(bool(p.get("committed")))
            elif kind == Frame.MOVE:
                self._tasks.append(asyncio.create_task(self._move_for_home(int(p["target"]))))

    async def _move_for_home(self, target: int) -> None:
        try:
            await self.engine.migrate_hosted(self, target)
        except (MigrationError, CriuError, OSError) as e:
            self._outq.put_nowait((Frame.MOVED, {"ok": False, "error": str(e)}))
        # On success home learns it from the job's new node (ATTACH), not from here.

    async def _stdin_writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._in_ready.wait()
            self._in_ready.clear()
            while self.pending_in and not self._in_paused and self.stdin_w is not None:
                try:
                    n = os.write(self.stdin_w, self.pending_in[:CHUNK])
                    del self.pending_in[:n]
                except BlockingIOError:
                    writable = loop.create_future()
                    loop.add_writer(self.stdin_w, writable.set_result, None)
                    try:
                        await writable
                    finally:
                        loop.remove_writer(self.stdin_w)
                except BrokenPipeError:
                    self.pending_in.clear()
            if (
                self.stdin_eof
                and not self.pending_in
                and not self._in_paused
                and self.stdin_w is not None
            ):
                os.close(self.stdin_w)
                self.stdin_w = None
                if self.holder is not None:
                    self.holder.stdin_ended()  # its copy too, or the job never sees the EOF

    async def _stats(self) -> None:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(self.pid)
            proc.cpu_percent()
            # The first figure comes early: the balancer waits for it before moving a new job.
            period = 0.5
            while True:
                await asyncio.sleep(period)
                period = 1.0
                procs = [proc]
                with contextlib.suppress(psutil.Error):
                    procs += proc.children(recursive=True)
                cpu = rss = used = 0.0
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        cpu += p.cpu_percent() if p is not proc else proc.cpu_percent()
                        rss += p.memory_info().rss
                        t = p.cpu_times()
                        used += t.user + t.system
                self.cpu_percent, self.rss = cpu, int(rss)
                self.cpu_here_s = max(self.cpu_here_s, used)
                self._outq.put_nowait((Frame.STATS, self.stats()))

    def stats(self) -> dict[str, Any]:
        """What home shows of the job (mps): CPU now, memory, CPU time in all, why it stays."""
        return {
            "cpu": round(self.cpu_percent, 1),
            "rss": self.rss,
            "cpu_s": round(self.meta.cpu_s + self.cpu_here_s, 2),
            "freezes": self.meta.freezes,
            "why": self.why,
        }

    def refused(self, why: str | None) -> None:
        """Note why the job could not move (None: it may again); home hears of it at once."""
        if why != self.why:
            self.why = why
            self._outq.put_nowait((Frame.STATS, self.stats()))

    def _on_exit(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 0
        if pid == 0:
            return
        asyncio.get_running_loop().remove_reader(self._pidfd)
        self._exited(status)

    def _holder_lost(self) -> None:
        """Its holder died first: the job is re-parented to this agent (a subreaper)."""
        self.holder = None
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            self._exited(signal.SIGKILL)  # gone with it, its status with it
            return
        asyncio.get_running_loop().add_reader(self._pidfd, self._on_exit)

    def _exited(self, status: int) -> None:
        if self.state != "running":
            return  # the frozen original of a job that moved: killed on purpose
        self.state = "exited"
        # Whatever the job wrote last goes home before its exit status.
        self.flush_output()
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGKILL and self.killed_by is not None:
                sig = self.killed_by
            self._outq.put_nowait((Frame.EXIT, {"code": None, "signal": sig}))
        else:
            self._outq.put_nowait(
                (Frame.EXIT, {"code": os.waitstatus_to_exitcode(status), "signal": None})
            )
        self._outq.put_nowait(None)
        asyncio.get_running_loop().call_soon(self.finish)

    def finish(self) -> None:
        """Release everything this node held for the job."""
        if self._done.is_set():
            return
        self._done.set()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(self._pidfd)
        if self.holder is not None:
            self.holder.release()
        self._unwatch_output()
        # The sender stays: it delivers what is queued (EXIT last) and ends on its own.
        for t in self._tasks[1:]:
            if t is not asyncio.current_task():
                t.cancel()
        for fd in (
            self._pidfd,
            self.stdin_r,
            *self.out_fds.values(),
            *([self.stdin_w] if self.stdin_w is not None else []),
        ):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.stdin_w = None
        self.engine.hosted_gone(self)

    # --- signals -----------------------------------------------------------------------------

    def deliver_signal(self, sig: int) -> None:
        """Deliver as if the job were an ordinary process, though it is a namespace init."""
        try:
            caught = int(
                next(
                    ln
                    for ln in Path(f"/proc/{self.pid}/status").read_text().splitlines()
                    if ln.startswith("SigCgt:")
                ).split()[1],
                16,
            )
        except (OSError, StopIteration, ValueError):
            caught = 0
        handled = bool(caught & (1 << (sig - 1)))
        target = sig
        if not handled and sig in _TERMINATING:
            self.killed_by = sig
            target = signal.SIGKILL
        elif not handled and sig in _STOPPING:
            target = signal.SIGSTOP
        elif sig == signal.SIGKILL:
            self.killed_by = None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, target)

    # --- moving out --------------------------------------------------------------------------

    async def migrate_out(
        self,
        address: str,
        port: int,
        target: int,
        offer_load: float | None = None,
        reason: str = "request",
    ) -> MoveStats:
        """Move the job to the node at address:port; on any failure it continues here."""
        async with self._moving:
            if self.state != "running":
                raise MigrationError(f"job {self.meta.home_pid} is {self.state}")
            why = cantmove(self.pid, criu_version=await self.engine.criu.version())
            if why:
                raise CannotMove(f"job {self.meta.home_pid} cannot move: {why}")
            t_begin = time.monotonic()
            self.move = Machine.source(t_begin)
            self.move.step(E.OFFER, t_begin)
            self.move_id = secrets.token_hex(8)
            # Ask first: a target that is down or says no costs the job nothing.
            try:
                ch = await self._offer(address, port, target, offer_load, reason)
            except BaseException:
                self.move.step(E.REFUSED, time.monotonic())
                raise
            if self.holder is not None:
                self.holder.moving(True)  # an agent dying from here on leaves it to no one
            try:
                return await self._move(ch, target, t_begin)
            finally:
                if self.holder is not None:
                    self.holder.moving(False)
                await close_channel(ch)

    async def _offer(
        self, address: str, port: int, target: int, offer_load: float | None, reason: str
    ) -> Channel:
        """A channel to the target, which has agreed to take this job."""
        keys = {fd: os.readlink(f"/proc/{self.pid}/fd/{fd}") for fd in (0, 1, 2)}
        uid, gid = process_owner(self.pid) or (self.meta.uid, self.meta.uid)
        needs = await asyncio.to_thread(
            gather, self.pid, uid, gid, await self.engine.criu.version()
        )
        faults = self.engine.faults
        needs = replace(needs, files=tuple(f for f in needs.files if not faults.unlisted(f.path)))
        try:
            ch = await open_channel(
                address, port, self.engine.agent.keys, self.engine.agent.node_id
            )
        except (OSError, TimeoutError) as e:
            raise MigrationError(
                f"cannot reach node {target} at {address}:{port}: {e or type(e).__name__}"
            ) from None
        try:
            # As the job will be once it arrives: moved and frozen once more.
            meta = self.meta.to_wire() | {
                "migrations": self.meta.migrations + 1,
                "freezes": self.meta.freezes + 1,
            }
            wire_keys = {str(k): v for k, v in keys.items()}
            await ch.send(
                Frame.MIGRATE,
                {
                    "meta": meta,
                    "keys": wire_keys,
                    "offer_load": offer_load,
                    "reason": reason,
                    "needs": needs.to_wire(),
                    "move": self.move_id,
                    "postcopy": await postcopy.source_offer(self),
                },
            )
            kind, p = await asyncio.wait_for(ch.recv(), 30)
        except BaseException as e:
            await ch.aclose()
            if isinstance(e, (OSError, EOFError, TimeoutError)):
                why = e or type(e).__name__
                raise MigrationError(f"node {target} did not answer: {why}") from None
            raise
        if kind != Frame.READY:
            await ch.aclose()
            raise Refused(f"the target refused: {p.get('error', 'no reason given')}")
        self.postcopy = bool(p.get("postcopy"))
        return ch

    async def _move(self, ch: Channel, target: int, t_begin: float) -> MoveStats:
        """Freeze, stream the image, restore on the target; roll back here on any failure that
        leaves no doubt (lifecycle.py): once DONE is out, only home's word ends the move."""
        images = Path(self.engine.image_root) / f"out-{self.meta.home_pid}-{secrets.token_hex(4)}"
        m = self.move
        assert m is not None
        self._paused_ack.clear()
        self._in_paused = True
        await self.link.send(Frame.PAUSE, {"move": self.move_id})
        try:
            await asyncio.wait_for(self._paused_ack.wait(), 10)
        except TimeoutError:
            self._in_paused = False
            self._in_ready.set()
            raise MigrationError("home did not pause stdin in time") from None
        m.step(E.READY, time.monotonic())
        leftover = b""
        # Before the freeze: which processes the job itself keeps stopped (they stay so).
        keep_stopped = procstate.stopped_by_job(self.pid)
        lazy: postcopy.LazySource | None = None
        try:
            self._unwatch_output()
            t_freeze = time.monotonic()
            if self.postcopy:
                lazy = await postcopy.dump_lazy(self, ch, images)
                ch = lazy.channel  # pages flow on it from now on, beside the move's frames
            else:
                await self._dump(ch, images, target, m)
            m.step(E.FROZEN, time.monotonic())
            t_dumped = time.monotonic()
            self._flush_ack.clear()
            self.flush_output(then=(Frame.FLUSHED, {}))
            await asyncio.wait_for(self._flush_ack.wait(), 10)
            leftover = _read_available(self.stdin_r)
            t_flushed = time.monotonic()
            new_pid = await self._finish_transfer(
                ch,
                images,
                leftover + bytes(self.pending_in),
                cputime.used_by_tree(self.pid),
                keep_stopped,
                target,
            )
        except BaseException as e:
            if lazy is not None:
                await lazy.stop()  # criu lets go of the job, which stays stopped
            shutil.rmtree(images, ignore_errors=True)  # first: what follows may fail
            if m.state in (S.COMMITTED, S.LOST) or self.state != "running":
                # Not ours any more: never resumed here (see _finish_transfer). Or it ended
                # mid-move (killed: finish() closed its pipes and cancelled this move).
                raise
            # Rollback: the unread stdin goes back into the pipe, the job goes on here.
            if leftover and self.stdin_w is not None:
                with contextlib.suppress(OSError):
                    os.write(self.stdin_w, leftover)
            elif leftover:
                self.pending_in[:0] = leftover
            # Every process of the tree, not just its init; whatever state a failed or killed
            # criu left them in (a failed dump resumes them itself: SIGCONT again is harmless).
            resume_dumped(self.pid, keep_stopped)  # TCP sockets out of repair mode too
            self._watch_output()
            self._in_paused = False
            self._in_ready.set()
            with contextlib.suppress(EOFError):
                await self.link.send(Frame.RESUME, {})
            if m.can(E.FAILED):
                m.step(E.FAILED, time.monotonic())
            if m.can(E.RESUMED):
                m.step(E.RESUMED, time.monotonic())
            if isinstance(e, (MigrationError, CriuError)):
                raise
            if isinstance(e, (OSError, EOFError, TimeoutError, KeyError, ValueError)):
                raise MigrationError(
                    f"migration to node {target} failed: {e or type(e).__name__}"
                ) from None
            raise
        t_done = time.monotonic()
        if lazy is not None:
            self.state = "moved"  # it runs on the target: nothing here acts for it any more
            # The original stays frozen until the target has every page; after the commit a
            # broken transfer loses the job (the target's copy ran on: never resumed here).
            try:
                await lazy.last_page(self.meta.home_pid)
            except MigrationError as e:
                log.error("job %d: %s after the move committed", self.meta.home_pid, e)
        self._drop_original(images)
        await self._reap_original()
        log.info(
            "job %d moved to node %d (pid %d there): frozen %.3f s (dump and pages %.3f, "
            "flush %.3f, rest of the image and restore %.3f); pause took %.3f s",
            self.meta.home_pid,
            target,
            new_pid,
            t_done - t_freeze,
            t_dumped - t_freeze,
            t_flushed - t_dumped,
            t_done - t_flushed,
            t_freeze - t_begin,
        )
        self.finish()
        return MoveStats(new_pid, t_done - t_freeze, self._image_bytes)

    def lose(self) -> None:
        """The job cannot go on here (its memory stopped coming): home hears the link end and
        reports the job lost, with no exit status of ours (it was killed on purpose)."""
        self.state = "lost"
        self._outq.put_nowait(None)

    def _drop_original(self, images: Path) -> None:
        """The copy on the target is the job now (or may be): the frozen original goes."""
        self.state = "moved"
        for pid in tree_pids(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(images, ignore_errors=True)
        self._outq.put_nowait(None)

    async def _reap_original(self) -> None:
        await reap(self.pid)

    async def _dump(self, ch: Channel, images: Path, target: int, m: Machine) -> None:
        """criu dump, its pages streamed to the target; a target that stops taking them for
        the FREEZING deadline ends the dump (criu fails cleanly when its socket closes)."""
        criu_end, ours = page_socketpair()
        watched = _Watched(ch, m)
        relay = asyncio.ensure_future(relay_pages(cast(Channel, watched), ours, limit=1 << 20))
        self.meta.freezes += 1
        # The log lives beside the images, not in them: a rollback removes them.
        dump_log = Path(self.engine.image_root) / f"dump-{self.meta.home_pid}.log"
        dump = asyncio.ensure_future(
            self.engine.criu.dump(
                self.pid,
                images,
                leave_stopped=True,
                page_socket=criu_end,
                log=dump_log,
                owner=process_owner(self.pid),
            )
        )
        stalled = False
        try:
            while not dump.done():
                await asyncio.wait({dump}, timeout=0.25)
                if not dump.done() and m.expired(time.monotonic()) and not relay.done():
                    stalled = True
                    relay.cancel()
                    ours.close()
            try:
                await dump
            except CriuError:
                if stalled:
                    raise MigrationError(
                        f"node {format_node_id(target)} stopped taking the job's memory for "
                        f"{DEADLINES[('source', S.FREEZING)]:.0f} s (step: pages); "
                        "it goes on here"
                    ) from None
                # A dump that failed because the pages had nowhere to go: say why that was.
                lost = relay.done() and not relay.cancelled() and relay.exception()
                if lost:
                    raise MigrationError(
                        f"node {target} stopped taking the job's memory "
                        f"({lost or type(lost).__name__}); it goes on here"
                    ) from None
                raise
            dump_log.unlink(missing_ok=True)
            await asyncio.wait_for(relay, DEADLINES[("source", S.FREEZING)])
        finally:
            if not dump.done():
                dump.cancel()
            if not relay.done():
                relay.cancel()
            await asyncio.gather(dump, relay, return_exceptions=True)
            ours.close()  # the relay closes it, unless cancelled before it ever ran

    async def _finish_transfer(
        self,
        ch: Channel,
        images: Path,
        stdin: bytes,
        cpu_used: dict[int, float],
        keep_stopped: set[int],
        target: int,
    ) -> int:
        """Send what the dump left here (all but the pages), the unread stdin and the CPU time
        each process used here (by its PID in the job's namespace); the pid the job has on the
        target once it is restored there (0 if only home knows it committed)."""
        m = self.move
        assert m is not None
        files_s = DEADLINES[("source", S.TRANSFERRING)]
        for f in sorted(images.iterdir()):
            if f.name.endswith(".log"):
                continue
            with f.open("rb") as fh:
                chunk, first = fh.read(FILE_CHUNK), True
                while True:
                    payload = {"name": f.name, "data": chunk, "first": first}
                    await asyncio.wait_for(ch.send(Frame.FILE, payload), files_s)
                    chunk, first = fh.read(FILE_CHUNK), False
                    if not chunk:
                        break
        # From here the target may restore the job: a doubt is settled by home, never guessed.
        m.step(E.DONE_SENT, time.monotonic())
        why = "no answer"
        try:
            if await self.engine.faults.passes("DONE"):
                done = {
                    "stdin": stdin,
                    "stdin_eof": self.stdin_eof,
                    "in_end": self.in_end,
                    "cpu_used": {str(k): v for k, v in cpu_used.items()},
                    "stopped": sorted(keep_stopped),
                }
                await asyncio.wait_for(ch.send(Frame.DONE, done), files_s)
            while True:
                due = (m.deadline() or 0.0) - time.monotonic()
                kind, p = await asyncio.wait_for(ch.recv(), max(0.0, due))
                if kind == Frame.BEAT:
                    m.touch(time.monotonic())
                elif kind == Frame.RESTORED:
                    m.step(E.RESTORED, time.monotonic())
                    self._image_bytes = int(p.get("image_bytes") or 0)
                    return int(p["pid"])
                else:
                    why = f"it refused: {p.get('error', 'no reason given')}"
                    break
        except TimeoutError:
            why = f"it did not answer for {DEADLINES[('source', S.RESTORING)]:.0f} s"
        except (EOFError, OSError) as e:
            why = f"the connection broke ({e or type(e).__name__})"
        m.step(E.FAILED, time.monotonic())
        committed = await self._ask_home(m)
        node = format_node_id(target)
        if committed is None:
            m.step(E.NO_ANSWER, time.monotonic())
            self._drop_original(images)
            self.state = "lost"
            await self._reap_original()
            self.finish()
            raise MigrationError(
                f"node {node} did not confirm the restore ({why}, step: restore) and home did "
                "not say whether the move committed: the copy here is gone"
            )
        if committed:
            m.step(E.HOME_COMMITTED, time.monotonic())
            log.warning("job %d: home says the move to node %s committed", self.meta.home_pid, node)
            return 0
        m.step(E.HOME_ABORTED, time.monotonic())
        raise MigrationError(
            f"node {node} did not restore the job ({why}, step: restore); it goes on here"
        )

    async def _ask_home(self, m: Machine) -> bool | None:
        """Did the move commit? Home's decision (it aborts a move nobody committed yet);
        None if home does not answer within the DECIDING deadline."""
        self._verdict = asyncio.get_running_loop().create_future()
        try:
            while not m.expired(time.monotonic()):
                if await self.engine.faults.passes("ASK"):
                    self._outq.put_nowait((Frame.ASK, {"move": self.move_id}))
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(self._verdict), RETRY_S)
            return None
        finally:
            self._verdict = None


async def reap(pid: int, timeout_s: float = 5.0) -> None:
    """Wait (without blocking the loop) for a killed child of ours to be gone, and reap it."""
    for _ in range(int(timeout_s / 0.01)):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG never blocks
        except ChildProcessError:
            return
        if done:
            return
        await asyncio.sleep(0.01)


class _Watched:
    """A channel whose every frame counts as progress of the move (the pages' deadline)."""

    def __init__(self, ch: Channel, m: Machine) -> None:
        self._ch, self._m = ch, m

    async def send(self, kind: int, payload: dict[str, Any]) -> None:
        await self._ch.send(kind, payload)
        self._m.touch(time.monotonic())

    async def send_plaintext(self, plaintext: Any) -> None:
        await self._ch.send_plaintext(plaintext)
        self._m.touch(time.monotonic())

    async def recv(self) -> tuple[int, dict[str, Any]]:
        got = await self._ch.recv()
        self._m.touch(time.monotonic())
        return got
