"""An agent restart keeps every job at home (issue 16 item 5, docs/reliability.md).

A job started here has a holder (holder.py) that outlives the agent. Its record (orphans.py)
holds what a next agent needs to rebuild it: the holder's socket, the job's JobMeta, the start
time of its mosrun. A starting agent keeps the records of dead agents whose holder answers
(`JobRecords.left`) and waits `WAIT_S` for each job's mosrun to come back (`reattach`, by its own
PID: SO_PEERCRED); it then takes the pipe fds and the exit status from the holder and goes on as
if it had started the job. A job whose mosrun does not come back is killed (no orphan).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pymosix.control_server import ControlConnection
from pymosix.errors import PymosixError
from pymosix.ids import format_node_id
from pymosix.migration import spool
from pymosix.migration.away import Waiting
from pymosix.migration.holder import Holder, socket_path
from pymosix.migration.home import LOST_STATUS, HomeJob
from pymosix.migration.hosted import HostedJob
from pymosix.migration.lifecycle import JobMeta
from pymosix.migration.link import Frame, Link, LocalLink
from pymosix.migration.orphans import start_time
from pymosix.migration.outlog import positions, to_wire
from pymosix.migration.rejoin import rejoin_guest
from pymosix.migration.spawn import Hold, JobSpec, SpawnError, start_job
from pymosix.migration.stdio import STDIO_FRAMES, ctrl_frame

if TYPE_CHECKING:
    from pymosix.migration.engine import MigrationEngine

log = logging.getLogger(__name__)

#: How long a new agent waits for the mosrun of a job it may adopt (mosrun retries this long).
WAIT_S = 30.0


async def start_held(
    spec: JobSpec, fds: Sequence[int], jobs_dir: Path, home_pid: int
) -> tuple[int, Holder]:
    """Start a job at home with a holder; fds are (in_r, in_w, out_r, out_w, err_r, err_w)."""
    in_r, in_w, out_r, out_w, err_r, err_w = fds
    jobs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    hold = Hold(jobs_dir, (in_w, in_r, out_r, err_r), home_pid)
    pid = await start_job(spec, in_r, out_w, err_w, hold)
    try:
        holder = await Holder.connect(socket_path(jobs_dir, pid))
    except (OSError, ValueError, KeyError) as e:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        raise SpawnError(f"the job's holder did not answer: {e}") from None
    holder.close_fds()  # the agent has its own ends of the pipes
    return pid, holder


def record_extra(job: HostedJob) -> dict[str, Any] | None:
    """What a job's record holds beyond its PID for a next agent to adopt it."""
    if job.holder is None:
        return None
    return {
        "holder": str(job.holder.path),
        "meta": job.meta.to_wire(),
        "home_start": start_time(job.meta.home_pid),
    }


def reattach_refusal(rec: dict[str, Any] | None, uid: int, started: int | None) -> str | None:
    """Why a process (of `uid`, started at `started`) may not take the job `rec` back; None if
    it may: the job's own mosrun (its PID, found by the caller, and its start time, so a reused
    PID cannot), of the job's owner."""
    if rec is None:
        return "no job of this process waits here to be re-attached"
    meta = rec.get("meta")
    if not isinstance(meta, dict) or int(meta.get("uid", -1)) != uid:
        return "that job belongs to another user"
    if started is None or rec.get("home_start") != started:
        return "this process is not the job's mosrun (its PID was reused)"
    return None


class Restarts:
    """Jobs a dead agent of this node left with their holders, waiting for their mosrun."""

    def __init__(self, engine: MigrationEngine) -> None:
        self.engine = engine
        self.pending: dict[int, dict[str, Any]] = {}
        self.rejoining: set[asyncio.Task[bool]] = set()
        #: Jobs away from home a dead agent left, waiting for mosrun and their host (away.py).
        self.away: dict[int, Waiting] = {}
        engine.agent.control.register("reattach", self._op_reattach)

    def adopt(self, records: list[dict[str, Any]]) -> None:
        """Wait for the mosrun of each job left (JobRecords.left); those that do not come go."""
        loop = asyncio.get_running_loop()
        for rec in records:
            if rec["home_node"] != self.engine.agent.node_id:
                # A guest: this agent takes it back and links it home again (rejoin.py).
                task = loop.create_task(rejoin_guest(self.engine, rec))
                self.rejoining.add(task)
                task.add_done_callback(self.rejoining.discard)
                continue
            self.pending[rec["home_pid"]] = rec
            loop.call_later(WAIT_S, self._give_up, rec["home_pid"])
            log.info(
                "job %d (pid %d) outlived its agent: waiting %.0f s for its mosrun",
                rec["home_pid"],
                rec["pid"],
                WAIT_S,
            )

    def adopt_away(self, records: list[dict[str, Any]]) -> None:
        """Wait for the mosrun and the host of each job away a dead agent left (away.py)."""
        loop = asyncio.get_running_loop()
        for rec in records:
            self.away[rec["home_pid"]] = Waiting(rec)
            loop.call_later(WAIT_S, self._away_give_up, rec["home_pid"])
            log.info(
                "job %d runs on node %d: waiting %.0f s for its mosrun and its host",
                rec["home_pid"],
                rec["node"],
                WAIT_S,
            )

    def rows(self) -> list[dict[str, Any]]:
        """mps's rows for the jobs a dead agent left that wait for their mosrun (and host)."""
        me = int(self.engine.agent.node_id)
        waiting = [(rec, me) for rec in self.pending.values()]
        waiting += [(w.rec, int(w.rec["node"])) for w in self.away.values()]
        rows = []
        for rec, node in waiting:
            meta = JobMeta.from_wire(rec["meta"])
            rows.append(
                {
                    "home_pid": meta.home_pid,
                    "user": user_name(meta.uid),
                    "node": node,
                    "home_node": me,
                    "guest": False,
                    "state": "waiting",  # for its mosrun to re-attach (docs/reliability.md)
                    "cpu": 0.0,
                    "rss": 0,
                    "migrations": meta.migrations,
                    "locked": meta.locked,
                    "command": " ".join(meta.argv),
                    "cpu_s": meta.cpu_s,
                    "freezes": meta.freezes,
                    "why": "its agent restarted: waiting for its mosrun",
                }
            )
        return rows

    def offer_link(self, home_pid: int, link: Link, node: int) -> bool:
        """The host of a job away asks to rejoin: kept until its mosrun comes back."""
        waiting = self.away.get(home_pid)
        return waiting is not None and waiting.offer_link(link, node)

    def _away_give_up(self, home_pid: int) -> None:
        waiting = self.away.get(home_pid)
        if waiting is not None and not waiting.claimed:  # else its mosrun's wait decides
            del self.away[home_pid]
            log.warning("job %d: its mosrun did not come back; its host hears no", home_pid)
            waiting.drop()

    def _give_up(self, home_pid: int) -> None:
        rec = self.pending.pop(home_pid, None)
        if rec is None:
            return
        log.warning("job %d: its mosrun did not come back; killed", home_pid)
        spool.drop(self.engine.records.dir, int(rec["pid"]))
        if start_time(rec["pid"]) == rec["start"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec["pid"], signal.SIGKILL)
        Path(rec["file"]).unlink(missing_ok=True)
        # Its holder reaps it and, with no agent and no mosrun, goes (holder.py).

    async def _op_reattach(
        self, req: dict[str, Any], conn: ControlConnection
    ) -> dict[str, Any] | None:
        # What mosrun has of the job's output: the stream goes on from there (outlog.py).
        got = positions(req.get("got"))  # None: a mosrun older than this agent
        if conn.peer.pid in self.away:
            await self._reattach_away(conn, got)
            return None
        rec = self.pending.get(conn.peer.pid)
        why = reattach_refusal(rec, conn.peer.uid, start_time(conn.peer.pid))
        if why is not None or rec is None:
            raise PymosixError(why or "no job")
        del self.pending[conn.peer.pid]
        try:
            holder = await Holder.connect(Path(rec["holder"]))
        except (OSError, ValueError, KeyError) as e:
            self.pending[conn.peer.pid] = rec  # perhaps once more; the timer still runs
            raise PymosixError(f"the job's holder did not answer: {e}") from None
        Path(rec["file"]).unlink(missing_ok=True)  # recorded again, under this agent
        if holder.was_moving:
            await self._lost_in_a_move(rec, holder, conn)
        else:
            await self._serve(rec, holder, conn, bool(req.get("stdin_eof")), got)
        return None

    async def _reattach_away(self, conn: ControlConnection, got: dict[int, int] | None) -> None:
        """mosrun of a job away from home: the job's new deputy once its host rejoins."""
        waiting = self.away[conn.peer.pid]
        why = reattach_refusal(waiting.rec, conn.peer.uid, start_time(conn.peer.pid))
        if why is None and waiting.claimed:
            why = "that job was re-attached already"
        if why is not None:
            raise PymosixError(why)
        waiting.claimed = True  # stays listed until its host rejoins (offer_link finds it)
        meta, node = JobMeta.from_wire(waiting.rec["meta"]), int(waiting.rec["node"])
        await conn.send(
            {"ok": True, "t": "reattached", "node": node, "stdio": STDIO_FRAMES, "acks": True}
        )
        # mosrun waits 5 s for this reply: the host may take longer (its frames wait meanwhile).
        linked = await waiting.wait_link()
        self.away.pop(conn.peer.pid, None)
        if linked is None:
            log.error("job %d: its host node %d did not come back", meta.home_pid, node)
            waiting.drop()
            await _tell_lost(conn, f"job lost with node {format_node_id(node)}")
            return
        link, node = linked
        engine = self.engine
        home = HomeJob(engine, meta, conn, link, node, user=user_name(meta.uid))
        home.out.received(got)
        home.acks = got is not None
        with contextlib.suppress(EOFError):  # the host went meanwhile: serve() says so
            # The host sends again what mosrun lacks of what went to the dead agent (not to
            # an older mosrun, which says nothing of what it has, and confirms nothing).
            said = {} if got is None else {"out_at": to_wire(got), "keep": True}
            await link.send(Frame.COMMITTED, {"in_at": 0, **said})
        engine.home_jobs[meta.home_pid] = home
        engine.placed(home)
        log.info("job %d (on node %d) re-attached to its mosrun", meta.home_pid, node)
        await home.serve()

    async def _lost_in_a_move(
        self, rec: dict[str, Any], holder: Holder, conn: ControlConnection
    ) -> None:
        """Its agent died moving it: the original may be frozen and a copy restored on the
        target, which cannot commit now (home knows no such move): no copy, told truthfully."""
        log.warning("job %d: its agent died moving it; killed", rec["home_pid"])
        holder.kill()
        holder.close_fds()
        holder.release()
        await conn.send(
            {"ok": True, "t": "reattached", "node": rec["home_node"], "stdio": STDIO_FRAMES}
        )
        await _tell_lost(conn, "the agent died while it moved the job: the job is gone")

    async def _serve(
        self,
        rec: dict[str, Any],
        holder: Holder,
        conn: ControlConnection,
        stdin_eof: bool,
        got: dict[int, int] | None,
    ) -> None:
        engine, me = self.engine, self.engine.agent.node_id
        meta = JobMeta.from_wire(rec["meta"])
        host_end, home_end = LocalLink.pair()
        hosted = HostedJob.from_holder(engine, meta, holder, host_end, stdin_eof)
        home = HomeJob(engine, meta, conn, home_end, me, user=user_name(meta.uid))
        # From what mosrun has: first what a stopped agent kept of the job's output (a killed
        # one's is lost), then the pipes again.
        kept = spool.take(engine.records.dir, holder.pid)
        if got is None:  # an older mosrun: it can neither say what it has nor confirm
            hosted.adopt_output([], {"out_at": [0, 0], "keep": False})
        else:
            hosted.adopt_output(kept, {"out_at": to_wire(got), "keep": True})
        home.out.received(got)
        home.acks = got is not None
        home.stdin_eof = hosted.stdin_eof
        engine.home_jobs[meta.home_pid] = home
        engine.add_hosted(hosted)
        log.info("job %d re-attached to its mosrun (pid %d here)", meta.home_pid, holder.pid)
        await conn.send(
            {"ok": True, "t": "reattached", "node": me, "stdio": STDIO_FRAMES, "acks": True}
        )
        await home.serve()


async def _tell_lost(conn: ControlConnection, why: str) -> None:
    """A re-attached mosrun's last words: why the job is gone, and the lost status."""
    for msg in ({"t": "error", "message": why}, {"t": "exit", "code": LOST_STATUS, "signal": None}):
        conn.writer.write(ctrl_frame(msg))
    await conn.writer.drain()


def user_name(uid: int) -> str:
    """A uid's name, or the number if it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
