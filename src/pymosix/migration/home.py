"""A job as its home node holds it: the deputy's side. mosrun's connection on one end, a link to
wherever the job runs on the other; stdin, signals and the exit status pass through here, in
binary frames on mosrun's side (migration/stdio.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pymosix.control_server import ControlConnection
from pymosix.errors import CriuError, MigrationError
from pymosix.ids import format_node_id
from pymosix.migration.checkpoint import SUBDIR, Cursor, Held, InputLog, Store
from pymosix.migration.faults import Faults
from pymosix.migration.handover import serve_left
from pymosix.migration.lifecycle import Arbiter, JobMeta, Keeper, S
from pymosix.migration.link import Frame, Link
from pymosix.migration.outlog import positions, to_wire
from pymosix.migration.stdio import (
    DATA,
    HEAD,
    MAX_DATA,
    TO_AGENT,
    StdioError,
    ctrl_frame,
    data_head,
    parse_ctrl,
    parse_head,
    widen_socket,
)


class HomeEngine(Protocol):
    """What a job's home side needs of the engine (migration/engine.py), without the import."""

    @property
    def faults(self) -> Faults: ...
    def home_gone(self, job: HomeJob) -> None: ...
    def placed(self, job: HomeJob) -> None: ...
    @property
    def state_dir(self) -> Path: ...
    @property
    def max_image_bytes(self) -> int: ...
    async def recover(self, job: HomeJob, held: Held) -> tuple[Link, int]: ...


log = logging.getLogger(__name__)

#: Beats each way on the home-host link; a link silent this long is dead (docs/reliability.md).
BEAT_S = 1.0
DEAD_AFTER_S = 3.0
#: A link lost: how long home waits for an ATTACH (a move's target) before it gives up.
REATTACH_S = 2.0
#: A link its host closed (its agent died; the node lives): how long home waits for the
#: host's next agent to take the job back (rejoin.py; its holder waits less: GUEST_ALONE_S).
REJOIN_S = 10.0
#: mosrun's exit status for a job lost with the node it ran on (documented in mosrun(1)).
LOST_STATUS = 255
#: After mosrun is gone, how long to wait for the job's death to be confirmed.
KILL_WAIT_S = 10.0


@dataclass
class HomeJob:
    """One job whose home (deputy) is this node."""

    engine: HomeEngine
    meta: JobMeta
    conn: ControlConnection
    link: Link
    node: int
    user: str = ""
    state: str = "running"
    cpu_percent: float = 0.0
    rss: int = 0
    #: CPU seconds in all, on every node it ran on; times frozen; why it cannot move.
    cpu_s: float = 0.0
    freezes: int = 0
    why: str | None = None
    exit: dict[str, Any] | None = None
    paused: bool = False
    held: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    move_result: asyncio.Future[dict[str, Any]] | None = None
    #: Home arbitrates every move of the job (lifecycle.py); the move paused for, if any.
    arbiter: Arbiter = field(default_factory=Arbiter)
    pending_move: str = ""
    #: Its checkpoints (migration/checkpoint.py) and what losing its host means (lifecycle).
    keeper: Keeper = field(default_factory=lambda: Keeper(time.monotonic()))
    checkpoints: Store = field(init=False)
    #: Stdout and stderr bytes relayed to mosrun; bytes a restored job writes again are dropped.
    out: Cursor = field(default_factory=Cursor)
    stdin_eof: bool = False
    #: Stdin sent, kept back to the held checkpoint's point for a restore (checkpointed jobs).
    stdin: InputLog = field(default_factory=InputLog)
    _attached: asyncio.Event = field(default_factory=asyncio.Event)
    _exited: asyncio.Event = field(default_factory=asyncio.Event)
    #: Whether mosrun confirms the output it gets (one older than this agent does not: then
    #: the job's host keeps nothing for it); its last count, to pass on (outlog.py).
    acks: bool = False
    _ack: list[int] | None = None
    _ack_ready: asyncio.Event = field(default_factory=asyncio.Event)
    #: Links of nodes the job left, served until they close (migration/handover.py).
    _left: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        root = self.engine.state_dir / SUBDIR / str(self.meta.home_pid)
        self.checkpoints = Store(root, self.engine.max_image_bytes)
        self.stdin.keep = self.meta.checkpoint_s > 0

    async def serve(self) -> None:
        """Relay until the job exits, or until mosrun goes (then the job is killed, wherever)."""
        widen_socket(self.conn.writer)
        from_user = asyncio.create_task(self._from_user())
        from_host = asyncio.create_task(self._from_host())
        beats = asyncio.create_task(self._beats())
        acks = asyncio.create_task(self._acks())
        try:
            done, _ = await asyncio.wait(
                {from_user, from_host}, return_when=asyncio.FIRST_COMPLETED
            )
            if from_user in done and not self._exited.is_set():
                log.info(
                    "mosrun of job %d is gone: killing the job on node %d",
                    self.meta.home_pid,
                    self.node,
                )
                await self.to_host(Frame.KILL, {})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._exited.wait(), KILL_WAIT_S)
        finally:
            for t in (from_user, from_host, beats, acks, *self._left):
                t.cancel()
            for t in (from_user, from_host, beats, acks, *self._left):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            self.link.close()
            self.checkpoints.remove()
            self.engine.home_gone(self)
            if self.move_result is not None and not self.move_result.done():
                # It ended while a move was asked for: its host's answer went with it.
                how = "exited" if self.state == "exited" else "was gone"
                self.move_result.set_result({"ok": False, "error": f"the job {how} meanwhile"})

    async def to_host(self, kind: int, payload: dict[str, Any]) -> None:
        if self.paused and kind in (Frame.IN, Frame.EOF):
            self.held.append((kind, payload))
            return
        try:
            await self.link.send(kind, payload)
        except EOFError:
            if kind != Frame.KILL:
                self.held.append((kind, payload))

    async def tell(self, msg: dict[str, Any]) -> None:
        """A control message to mosrun (exit, error, moved)."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.conn.writer.write(ctrl_frame(msg))
            await self.conn.writer.drain()

    async def _to_user_data(self, fd: int, data: bytes | memoryview) -> None:
        """The job's output to mosrun as it came, no copy; drain() is the backpressure: a slow
        reader stops this relay, then the link, then the host's reads of the job's pipes."""
        view = memoryview(data)
        writer = self.conn.writer
        with contextlib.suppress(ConnectionError, RuntimeError):
            for at in range(0, len(view), MAX_DATA):
                piece = view[at : at + MAX_DATA]
                writer.write(data_head(fd, len(piece)))
                writer.write(piece)
            await writer.drain()

    async def _from_user(self) -> None:
        reader = self.conn.reader
        while True:
            try:
                kind, _fd, size = parse_head(await reader.readexactly(HEAD.size), TO_AGENT)
                payload = await reader.readexactly(size)
                if kind == DATA:
                    await self.to_host(Frame.IN, {"data": payload, "at": self.stdin.add(payload)})
                    continue
                msg = parse_ctrl(payload)
            except asyncio.IncompleteReadError as e:
                if e.partial:
                    log.warning("job %d: mosrun left in mid-frame", self.meta.home_pid)
                return
            except (ConnectionError, ValueError):
                return
            except StdioError as e:
                # One line to whoever sent it, and the connection ends (which ends the job).
                log.warning("job %d: bad frame from mosrun: %s", self.meta.home_pid, e)
                await self.tell({"t": "error", "message": str(e)})
                return
            kind_t = msg["t"]
            if kind_t == "eof":
                self.stdin_eof = True
                await self.to_host(Frame.EOF, {})
            elif kind_t == "ack":
                got = positions(msg.get("o"))
                if got is not None:  # passed on by _acks, the latest only: it never waits
                    self._ack = to_wire(got)
                    self._ack_ready.set()
            elif kind_t == "sig":
                sig = msg.get("n")
                if isinstance(sig, int) and sig in signal.valid_signals():
                    await self.to_host(Frame.SIGNAL, {"sig": sig})
                else:
                    log.warning("job %d: mosrun sent no valid signal: %r", self.meta.home_pid, sig)
            else:
                log.warning("job %d: unknown message from mosrun ignored", self.meta.home_pid)

    async def _acks(self) -> None:
        """mosrun's counts to the job's host, which forgets what mosrun has (outlog.py)."""
        while True:
            await self._ack_ready.wait()
            self._ack_ready.clear()
            with contextlib.suppress(EOFError):
                await self.link.send(Frame.OUT_ACK, {"o": self._ack})

    async def _beats(self) -> None:
        while True:
            await asyncio.sleep(BEAT_S)
            with contextlib.suppress(EOFError):
                await self.link.send(Frame.BEAT, {})

    async def _recover(self) -> bool:
        """The job's host is lost: restore the job here from its last checkpoint, if home
        holds one. A move under way is aborted first: its late ATTACH is refused."""
        if self.pending_move:
            self.arbiter.ask(self.pending_move)
            self.pending_move = ""
        held = self.checkpoints.held
        if self.keeper.host_lost(time.monotonic()) != S.RECOVERING or held is None:
            return False
        lost, replayed = format_node_id(self.node), self.stdin.total
        try:
            # The restored job gets the stdin it read since the checkpoint again, up to now.
            self.link, self.node = await self.engine.recover(self, held)
        except (CriuError, MigrationError, OSError, ValueError, KeyError) as e:
            log.error("job %d: no restore from its checkpoint: %s", self.meta.home_pid, e)
            self.keeper.recovered(False, time.monotonic())
            return False
        self.keeper.recovered(True, time.monotonic())
        self.engine.placed(self)
        self.checkpoints.drop_held()
        self.out.rewind(held.offsets)
        age = time.monotonic() - held.taken_at
        await self.tell(
            {
                "t": "note",
                "message": f"node {lost} lost: the job goes on at home from a checkpoint of "
                f"{age:.0f} s ago",
            }
        )
        if self.move_result is not None and not self.move_result.done():
            self.move_result.set_result({"ok": False, "error": f"node {lost} was lost"})
        # Stdin sent before the restore went into the restored job already: not twice.
        self.held = [(k, p) for k, p in self.held if k != Frame.IN or p["at"] >= replayed]
        await self._release_held(self.link)
        return True

    async def _lost(self) -> None:
        """The link to the node the job runs on is gone and no new one came: say so, end."""
        node = format_node_id(self.node)
        log.error("job %d: lost with node %s", self.meta.home_pid, node)
        # A move that was under way can no longer commit: its late ATTACH will be refused.
        if self.pending_move:
            self.arbiter.ask(self.pending_move)
        self.state = "lost"
        await self.tell({"t": "error", "message": f"job lost with node {node}"})
        await self.tell({"t": "exit", "code": LOST_STATUS, "signal": None})
        self._exited.set()

    def _serve_left(self, link: Link) -> None:
        args = (self.arbiter, self.engine.faults, self.meta.home_pid, BEAT_S, DEAD_AFTER_S)
        task = asyncio.create_task(serve_left(link, *args))
        self._left.add(task)
        task.add_done_callback(self._left.discard)

    async def _from_host(self) -> None:
        link = self.link
        while True:
            if self.link is not link:  # the job moved: its old host may still ask about it
                self._serve_left(link)
                link = self.link
            try:
                # Silence is loss too: the host beats every BEAT_S.
                kind, p = await asyncio.wait_for(link.recv(), DEAD_AFTER_S)
            except (EOFError, TimeoutError) as e:
                if self.link is not link:
                    self._attached.clear()
                    continue  # the job moved: read from its new node
                link.close()
                # A target may be about to commit (or to repeat an ATTACH whose COMMITTED was
                # lost with its connection): a short wait, then the job is gone. A link the
                # host closed, with no move under way, waits for the host's next agent.
                closed = isinstance(e, EOFError) and not self.pending_move
                wait_s = REJOIN_S if closed and self.node != self.meta.home_node else REATTACH_S
                try:
                    await asyncio.wait_for(self._attached.wait(), wait_s)
                except TimeoutError:
                    if await self._recover():
                        continue
                    await self._lost()
                    return
                self._attached.clear()
                continue
            if kind == Frame.BEAT:
                continue
            if kind == Frame.ASK:
                move = str(p.get("move") or "")
                committed = self.arbiter.ask(move)
                log.info("job %d: move %s %s", self.meta.home_pid, move, committed)
                if await self.engine.faults.passes("VERDICT"):
                    with contextlib.suppress(EOFError):
                        await link.send(Frame.VERDICT, {"move": move, "committed": committed})
                continue
            if link is not self.link:
                # Read from the node the job left, after the move committed (the read was under
                # way): its frozen original's frames, an EXIT of it killed, are not the job's.
                continue
            if kind in (Frame.CKPT_MARK, Frame.CKPT_FILE, Frame.CKPT_DONE):
                self.checkpoints.feed(kind, p, self.keeper, self.out.sent)
                if self.checkpoints.held is not None:
                    self.stdin.trim(self.checkpoints.held.stdin_at)
                continue
            if kind == Frame.OUT:
                fd, raw, at = (2 if p.get("fd") == 2 else 1), p["data"], p.get("at")
                at = at if isinstance(at, int) and at >= 0 else None
                if at is not None and (gap := self.out.lacks(fd, at)):
                    # Lost on the way (an agent that died holding it): said, never hidden.
                    log.warning("job %d: %d bytes of output lost", self.meta.home_pid, gap)
                    await self.tell({"t": "lost", "fd": fd, "n": gap})
                data = self.out.take(fd, raw, at)
                if len(data) < len(raw):
                    log.info(
                        "job %d: dropped %d bytes it wrote again",
                        self.meta.home_pid,
                        len(raw) - len(data),
                    )
                if data:
                    await self._to_user_data(fd, data)
            elif kind == Frame.EXIT:
                self.keeper.exited(time.monotonic())
                self.exit = p
                self.state = "exited"
                await self.tell({"t": "exit", "code": p.get("code"), "signal": p.get("signal")})
                self._exited.set()
                return
            elif kind == Frame.STATS:
                self.cpu_percent, self.rss = float(p["cpu"]), int(p["rss"])
                self.cpu_s = float(p.get("cpu_s", self.cpu_s))
                self.freezes = int(p.get("freezes", self.freezes))
                self.why = p.get("why") if isinstance(p.get("why"), str) else None
            elif kind == Frame.PAUSE:
                self.paused = True
                self.pending_move = str(p.get("move") or "")
                await self.to_host(Frame.PAUSED, {})
            elif kind == Frame.RESUME:
                self.pending_move = ""
                await self._release_held(link)
            elif kind == Frame.FLUSHED:
                await self.to_host(Frame.FLUSH_ACK, {})
            elif (
                kind == Frame.MOVED and self.move_result is not None and not self.move_result.done()
            ):
                self.move_result.set_result(p)

    async def _release_held(self, link: Link) -> None:
        while self.held:
            kind, payload = self.held.pop(0)
            try:
                await link.send(kind, payload)
            except EOFError:
                self.held.insert(0, (kind, payload))
                return
        self.paused = False

    async def attach(self, link: Link, node: int, move: str) -> bool:
        """The job was restored on `node` (reachable over `link`) by `move`: the commit point.
        False if home had already given that move up (its copy there must not run)."""
        first = self.arbiter.state(move) == S.UNDECIDED
        if not self.keeper.may_commit():
            self.arbiter.ask(move)  # its host was given up: the job runs elsewhere, or nowhere
        elif first and move != self.pending_move:
            # A move this agent never saw start (every move PAUSEs home first): one an earlier
            # agent here may have given up already, its source going on with the job. It
            # commits nothing (the soak: a target frozen mid-move, home restarted, the target
            # woke and committed beside the running original); its source, if it still waits,
            # asks and hears it aborted.
            self.arbiter.ask(move)
        if not self.arbiter.attach(move):
            log.warning("job %d: refused the late commit of move %s", self.meta.home_pid, move)
            return False
        if await self.engine.faults.passes("COMMITTED"):
            with contextlib.suppress(EOFError):
                await link.send(Frame.COMMITTED, {"out_at": self.out.next_pos(), "keep": self.acks})
        else:
            link.close()  # lost with its connection, as TCP loses a frame
        old, self.link, self.node = self.link, link, node
        self.engine.placed(self)
        self.pending_move = ""
        self.checkpoints.abandon(self.keeper)  # one its old host was sending
        if node == self.meta.home_node:  # nothing can lose it at home
            self.checkpoints.drop_held()
            self.keeper.drop_held()
        if not first:
            old.close()  # an earlier ATTACH of the same move whose COMMITTED went missing
        await self._release_held(link)
        self._attached.set()
        if first:
            self.meta.migrations += 1
            if self.move_result is not None and not self.move_result.done():
                self.move_result.set_result({"ok": True, "node": node})
            await self.tell({"t": "moved", "node": node})
        return True

    async def rejoin(self, link: Link, node: int) -> bool:
        """The agent of the job's host restarted and found the job alive (rejoin.py): the same
        job on a new link, no move. Only from its host, with no move under way, and before
        home gave it up; False otherwise (its copy there must not run)."""
        if (
            node != self.node
            or node == self.meta.home_node
            or self.pending_move
            or self.state != "running"
            or not self.keeper.may_commit()
        ):
            log.warning("job %d: refused node %d's rejoin", self.meta.home_pid, node)
            return False
        try:
            await link.send(
                Frame.COMMITTED,
                {"in_at": self.stdin.total, "out_at": self.out.next_pos(), "keep": self.acks},
            )
        except EOFError:
            return False
        old, self.link = self.link, link
        old.close()
        await self._release_held(link)
        self._attached.set()
        log.info("job %d: node %d's agent restarted; the job goes on", self.meta.home_pid, node)
        await self.tell(
            {
                "t": "note",
                "message": f"the agent of node {format_node_id(node)} restarted; the job goes on",
            }
        )
        return True

    async def move(self, target: int) -> int:
        """Ask the node the job runs on to move it to `target`; the node it runs on afterwards."""
        if self.move_result is not None and not self.move_result.done():
            raise MigrationError(f"job {self.meta.home_pid} is already moving")
        self.move_result = asyncio.get_running_loop().create_future()
        await self.to_host(Frame.MOVE, {"target": target})
        try:
            result = await asyncio.wait_for(self.move_result, 300)
        except TimeoutError:
            raise MigrationError("no answer from the node the job runs on") from None
        if not result.get("ok"):
            raise MigrationError(str(result.get("error", "migration failed")))
        return int(result["node"])
