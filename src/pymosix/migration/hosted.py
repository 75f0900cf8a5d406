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
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from pymosix.errors import CriuError, MigrationError
from pymosix.keys import KeyRing
from pymosix.migration import checkpoint, moveout
from pymosix.migration.criu import CriuDriver
from pymosix.migration.faults import Faults
from pymosix.migration.holder import Holder
from pymosix.migration.lifecycle import JobMeta, Machine
from pymosix.migration.link import Frame, Link
from pymosix.migration.moveout import close_channel, reap
from pymosix.migration.moves import MoveStats
from pymosix.migration.outlog import OutLog, positions
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
    def measured(self, job: HostedJob) -> None: ...
    async def home_again(self, job: HostedJob) -> Link | None: ...


__all__ = ["HostEngine", "HostedJob", "JobMeta", "close_channel", "reap"]

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
    #: Its anonymous resident memory (RSS less file-backed and shared pages), about what a move
    #: copies: CRIU dumps no clean file page (perl's 5 MB RSS, 0.5 MB of it anonymous).
    anon: int = 0
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
    _unsent: tuple[int, dict[str, Any]] | None = None
    _in_flight: tuple[int, dict[str, Any]] | None = None
    _measured: bool = False
    _sending: bool = False
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
    #: Where its output stands in the stream mosrun receives, and what of it went home and is
    #: not yet confirmed by mosrun: sent again if home's agent restarts (outlog.py).
    outlog: OutLog = field(default_factory=OutLog)
    #: Frames to send home before anything queued (outlog.resend_from).
    _resend: list[tuple[int, dict[str, Any]] | None] = field(default_factory=list)

    @classmethod
    def from_holder(
        cls, engine: HostEngine, meta: JobMeta, holder: Holder, link: Link, stdin_eof: bool
    ) -> HostedJob:
        """A job a dead agent left with its holder, rebuilt from the fds the holder handed over
        (restart.py at home, rejoin.py for a guest)."""
        fds = holder.fds
        return cls(
            engine,
            meta,
            holder.pid,
            fds.get("in_w"),
            fds["in_r"],
            {1: fds["out_r"], 2: fds["err_r"]},
            link,
            time.monotonic(),
            stdin_eof=stdin_eof or "in_w" not in fds,
            holder=holder,
        )

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
        at = self.outlog.stamp(job_fd, len(data))
        self._outq.put_nowait((Frame.OUT, {"fd": job_fd, "data": data, "at": at}))
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
        """All frames home go through one queue, so their order is the order they were made;
        frames sent again after a relink go first."""
        while True:
            if self._resend:
                item: tuple[int, dict[str, Any]] | None = self._resend.pop(0)
            elif self._unsent is not None:
                item, self._unsent = self._unsent, None
            else:
                item = await self._outq.get()
                if self._resend:  # a relink came while this waited: its frames go first
                    self._resend.append(item)
                    continue
            if item is None:
                break
            self._sending, self._in_flight = True, item
            link = self.link
            try:
                await link.send(*item)
            except EOFError:
                self._unsent = item  # for the link to home's next agent, if one comes
                if self.link is not link:
                    continue  # it came while this send failed: go on there (no one restarts us)
                return
            finally:
                self._sending, self._in_flight = False, None
            if item[0] == Frame.OUT:
                p = item[1]
                self.outlog.sent(p["fd"], p["at"], p["data"])
                if p.get("again"):
                    continue  # sent again: it was counted out of the queue the first time
                self._sent_out(len(p["data"]))
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

    def leftover(self) -> list[tuple[int, int, bytes]]:
        """The agent stops and leaves the job to its holder: its pipes are read no more, and
        this is what it read that mosrun may lack, in order (spool.py keeps it for the next)."""
        self._unwatch_output()
        items = [*self._resend, self._in_flight, self._unsent]
        while not self._outq.empty():
            items.append(self._outq.get_nowait())
        frames = list(self.outlog.unconfirmed)
        for item in items:
            if item is not None and item[0] == Frame.OUT:
                p = item[1]
                frames.append((int(p["fd"]), int(p["at"]), bytes(p["data"])))
        return frames

    async def drained(self, timeout_s: float) -> bool:
        """Whether every frame queued for home went out within timeout_s (a stopping agent's
        last checkpoint of a guest must reach home before the agent exits)."""
        end = time.monotonic() + timeout_s
        while self._outq.qsize() or self._sending or self._unsent is not None:
            if time.monotonic() >= end:
                return False
            await asyncio.sleep(0.05)
        return True

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
            except (EOFError, TimeoutError) as e:
                if self.holder is not None and self.engine.agent.stopping:
                    return  # the agent stops: the holder keeps the job for its next agent
                if isinstance(e, EOFError) and self.state == "running" and await self._relink():
                    continue
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
            elif kind == Frame.OUT_ACK:
                got = positions(p.get("o"))
                if got is not None:
                    self.outlog.confirmed(got)
            elif kind == Frame.VERDICT:
                v = self._verdict
                if v is not None and not v.done() and p.get("move") == self.move_id:
                    v.set_result(bool(p.get("committed")))
            elif kind == Frame.MOVE:
                self._tasks.append(asyncio.create_task(self._move_for_home(int(p["target"]))))

    async def _relink(self) -> bool:
        """Home closed the link (its agent died): the next one may take the job back
        (migration/away.py). True once it did, on a new link; the sender goes on there."""
        link = await self.engine.home_again(self)
        if link is None or self.state != "running":
            return False
        self.link = link
        if self._tasks and self._tasks[0].done():
            self._tasks[0] = asyncio.create_task(self._sender())
        elif self._resend:
            self._outq.put_nowait((Frame.BEAT, {}))  # wakes the sender: the resend goes first
        return True

    def resend_from(self, said: dict[str, Any]) -> None:
        """Home's next agent says what mosrun has (COMMITTED's out_at, `[stdout, stderr]`):
        what it lacks of what went to the dead agent is sent again, first (outlog.py)."""
        got = positions(said.get("out_at"))
        if got is None:  # an older home or mosrun: as before, it may lack some
            self.outlog.forget()
            return
        self.outlog.keep = bool(said.get("keep"))
        self._send_first(*self.outlog.resend_from(got))

    def adopt_output(self, kept: list[tuple[int, int, bytes]], said: dict[str, Any]) -> None:
        """Where the job's output stands, as home says (COMMITTED's out_at: mosrun's counts, or
        home's), and whether its mosrun confirms what it gets (keep: else nothing is kept for
        it). Taken over from an agent that stopped, `kept` is what that one spooled: what of it
        lies beyond goes first. On a move's commit, or after a kill -9, nothing is kept."""
        got = positions(said.get("out_at"))
        if got is None:
            self.outlog.forget()
            return
        again, missing = self.outlog.adopt(kept, got)
        self.outlog.keep = bool(said.get("keep"))
        if kept:
            size = sum(len(d) for _, _, d in again)
            log.info("job %d: %d bytes of its output to send again", self.meta.home_pid, size)
        self._send_first(again, missing)

    def _send_first(self, again: list[tuple[int, int, bytes]], missing: int) -> None:
        self._resend = [
            (Frame.OUT, {"fd": fd, "data": data, "at": at, "again": True}) for fd, at, data in again
        ]
        if missing:
            log.warning("job %d: %d bytes of output were not kept", self.meta.home_pid, missing)

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
            # The first figure comes early: the balancer waits for it before moving a new job
            # (whose minimum age, policy.min_age_s 0.5, counts from mosrun's request: a spawn
            # takes 0.1 to 0.2 s on a busy node).
            period = 0.3
            while True:
                await asyncio.sleep(period)
                period = 1.0
                procs = [proc]
                with contextlib.suppress(psutil.Error):
                    procs += proc.children(recursive=True)
                cpu = rss = anon = used = 0.0
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        cpu += p.cpu_percent() if p is not proc else proc.cpu_percent()
                        mem = p.memory_info()
                        rss += mem.rss
                        anon += max(0, mem.rss - mem.shared)
                        t = p.cpu_times()
                        used += t.user + t.system
                self.cpu_percent, self.rss, self.anon = cpu, int(rss), int(anon)
                self.cpu_here_s = max(self.cpu_here_s, used)
                self._outq.put_nowait((Frame.STATS, self.stats()))
                if not self._measured:
                    self._measured = True
                    self.engine.measured(self)  # the balancer may move it now, not next round

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

    # --- moving out (migration/moveout.py) ----------------------------------------------------

    async def migrate_out(
        self,
        address: str,
        port: int,
        target: int,
        offer_load: float | None = None,
        reason: str = "request",
    ) -> MoveStats:
        """Move the job to the node at address:port; on any failure it continues here."""
        return await moveout.migrate_out(self, address, port, target, offer_load, reason)

    def lose(self) -> None:
        """The job cannot go on here (its memory stopped coming): home hears it lost."""
        moveout.lose(self)

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
