"""The migration engine: the agent component that starts jobs for mosrun, keeps the jobs whose
home is here and the jobs that run here, moves jobs between nodes, and answers mps/migrate."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from pymosix.control_server import ControlConnection
from pymosix.errors import (
    AuthError,
    CriuError,
    DecodeError,
    JobCannotMove,
    MigrationError,
    PymosixError,
)
from pymosix.ids import format_node_id
from pymosix.migration import checkpoint, cputime, procstate, spool
from pymosix.migration.away import AwayRecords
from pymosix.migration.cantmove import cantmove
from pymosix.migration.channel import accept_channel, frame_length
from pymosix.migration.checkpoint import Held
from pymosix.migration.criu import CriuDriver
from pymosix.migration.faults import Faults
from pymosix.migration.framestream import FrameStream, listen
from pymosix.migration.home import HomeJob
from pymosix.migration.hosted import HostedJob, close_channel
from pymosix.migration.lifecycle import JobMeta
from pymosix.migration.link import ChannelLink, Frame, Link, LocalLink
from pymosix.migration.moves import (
    RECENT_MOVES,
    MoveRecord,
    MoveStats,
    reason_of,
    result_of,
)
from pymosix.migration.orphans import JobRecords
from pymosix.migration.receive import receive, restore_job
from pymosix.migration.rejoin import home_again
from pymosix.migration.restart import Restarts, record_extra, start_held, user_name
from pymosix.migration.spawn import (
    JobSpec,
    SpawnError,
    become_subreaper,
    groups_of,
    nice_of,
    umask_of,
)
from pymosix.migration.stdio import STDIO_FRAMES, stdio_pipes
from pymosix.refusals import Refusals

if TYPE_CHECKING:
    from pymosix.agent import NodeAgent
    from pymosix.load.component import LoadComponent

log = logging.getLogger(__name__)

#: How long a stopping agent tries to send its guests away (systemd's stop timeout is longer).
STOP_GUESTS_S = 20.0
#: Then, for each guest that could not leave, how long its last checkpoint home may take.
STOP_CKPT_S = 30.0
#: Where agents keep the images of moves in progress (tmpfs: a dump is a memory copy).
IMAGES_PARENT = Path("/dev/shm")


def image_root(node_id: int, pid: int) -> Path:
    """The images directory of the agent `pid` of node `node_id`."""
    return IMAGES_PARENT / f"pymosix-{node_id:04x}-{pid}"


def orphaned_image_roots(node_id: int | None = None) -> list[Path]:
    """Images directories (of node_id's agents, or any) whose agent is gone."""
    pattern = f"pymosix-{node_id:04x}-*" if node_id is not None else "pymosix-*-*"
    out = []
    for d in IMAGES_PARENT.glob(pattern):
        pid = d.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            out.append(d)
    return out


def remove_images_of(pids: Iterable[int]) -> None:
    """Remove the images directories of agents that are gone (killed, so they left them)."""
    for pid in pids:
        for d in IMAGES_PARENT.glob(f"pymosix-*-{pid}"):
            shutil.rmtree(d, ignore_errors=True)


def _root_only(conn: ControlConnection, what: str) -> None:
    if conn.peer.uid != 0:
        raise PymosixError(f"only root may {what} (mosctl {what} as root)")


async def _all_or_why(moves: list[tuple[int, Awaitable[int]]], what: str) -> None:
    """Run the moves together; if any failed, say which and why."""
    results = await asyncio.gather(*(m for _, m in moves), return_exceptions=True)
    failed = [
        f"{pid}: {r}"
        for (pid, _), r in zip(moves, results, strict=True)
        if isinstance(r, BaseException)
    ]
    if failed:
        raise PymosixError(f"{what}: " + "; ".join(failed))


def _key(job: HostedJob) -> tuple[int, int]:
    return job.meta.home_pid, job.meta.home_node


class MigrationEngine:
    """Jobs and their moves on one node."""

    def __init__(self, agent: NodeAgent, load: LoadComponent | None = None) -> None:
        self.agent = agent
        self.load = load
        self.criu = CriuDriver(agent.config.criu)
        self.image_root = image_root(agent.node_id, os.getpid())
        #: Largest image taken from a peer (max_image_mib).
        self.max_image_bytes = agent.config.max_image_mib << 20
        self.postcopy_min_mib = agent.config.postcopy_min_mib
        self.home_jobs: dict[int, HomeJob] = {}
        self.hosted: dict[tuple[int, int], HostedJob] = {}
        #: Protocol messages dropped or delayed on purpose (tests; migration/faults.py).
        self.faults = Faults(agent.config.state_dir / "faults")
        #: Records of the jobs held here, so that a next agent removes what a crash left.
        self.state_dir = agent.config.state_dir
        self.records = JobRecords(self.state_dir)
        self.away = AwayRecords(self.state_dir)  # jobs away outlive it too (away.py)
        self.restarts = Restarts(self)  # jobs at home outlive this agent (restart.py)
        #: Moves refused lately, per job (the balancer leaves those jobs in peace a while).
        self.refusals = Refusals()
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        #: Migrations into this node under way (expel waits for them).
        self._incoming = 0
        #: Recent moves in and out (the web monitor), and who hears of each (the metrics).
        self.moves: deque[MoveRecord] = deque(maxlen=RECENT_MOVES)
        self.move_listeners: list[Callable[[MoveRecord], None]] = []
        #: Who hears that a job here has its first CPU figure (the balancer wakes for it).
        self.measure_listeners: list[Callable[[], None]] = []
        for op, handler in (
            ("run", self._op_run),
            ("jobs", self._op_jobs),
            ("migrate", self._op_migrate),
            ("expel", self._op_expel),
            ("bring", self._op_bring),
            ("cantmove", self._op_cantmove),
        ):
            agent.control.register(op, handler)
        if load is not None:
            load.job_counts = self.job_counts
        #: The balancer's check of incoming jobs: (home node, believed load) -> reason to refuse.
        self.accept: Callable[[int, float | None], str | None] | None = None
        #: The answer to a peer's QUERY frame (pymosix.pool sets it): read-only, no side effects.
        self.answer_query: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    # --- life --------------------------------------------------------------------------------

    async def start(self) -> None:
        become_subreaper()
        self._remove_stale_images()
        self.records.sweep()
        self.restarts.adopt(self.records.left)
        self.restarts.adopt_away(self.away.take())
        checkpoint.sweep(self.state_dir)
        self.image_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._server = await listen(
            self.agent.address, self.agent.config.migration_port, frame_length, self._accept
        )

    def _remove_stale_images(self) -> None:
        """An agent of this node that was killed mid-move left its images: they go now."""
        for d in orphaned_image_roots(self.agent.node_id):
            shutil.rmtree(d, ignore_errors=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.agent.flags.block = True
        # Guests go home (or elsewhere) rather than die with this agent; what is left goes.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._send_guests_away(), STOP_GUESTS_S)
        me = self.agent.node_id
        stuck = [j for j in self.hosted.values() if j.meta.home_node != me and j.state == "running"]
        # Those that could not leave: a checkpoint home now, from which home restores the job
        # once it gives this node up (unless a next agent here takes it back first: rejoin.py).
        sent = await asyncio.gather(*(checkpoint.last_one(j, STOP_CKPT_S) for j in stuck))
        for job, ok in zip(stuck, sent, strict=True):
            how = "checkpointed home" if ok else "no checkpoint home"
            log.error("job %d of node %d could not leave: %s, left to its holder", *_key(job), how)
        for job in list(self.hosted.values()):
            if job.holder is not None and job.state == "running":
                # What it read of the job's output and mosrun may lack: for the next agent.
                frames = job.leftover()
                with contextlib.suppress(OSError):
                    spool.write(self.records.dir, job.pid, frames)
                kept = sum(len(d) for _, _, d in frames)
                log.info("stopping: job %d: %d bytes of its output kept", job.meta.home_pid, kept)
        for job in list(self.hosted.values()):
            if job.holder is None:  # a job at home waits for the next agent (restart.py)
                job.deliver_signal(9)
        for t in list(self._conns):
            t.cancel()
        shutil.rmtree(self.image_root, ignore_errors=True)

    async def _send_guests_away(self) -> None:
        me = self.agent.node_id
        guests = [
            h for h in self.hosted.values() if h.meta.home_node != me and h.state == "running"
        ]
        if guests:
            log.info("stopping: sending %d guest(s) away", len(guests))
        await asyncio.gather(*(self._send_away(h) for h in guests))

    async def _send_away(self, job: HostedJob) -> None:
        """Home first; if home refuses, any other node that takes it (in map order)."""
        me, home = self.agent.node_id, job.meta.home_node
        others = [n.node_id for n in self.agent.cluster.nodes() if n.node_id not in (me, home)]
        for target in (home, *others):
            try:
                await self.migrate_hosted(job, target)
            except (MigrationError, CriuError, OSError) as e:
                log.warning(
                    "stopping: job %d did not go to node %d: %s", job.meta.home_pid, target, e
                )
                if job.state != "running":
                    return
                continue
            log.info("stopping: job %d went to node %d", job.meta.home_pid, target)
            return

    @property
    def incoming(self) -> int:
        """Moves into this node under way (the one being checked among them)."""
        return self._incoming

    def job_counts(self) -> tuple[int, int]:
        me = self.agent.node_id
        local = sum(
            1 for j in self.hosted.values() if j.meta.home_node == me and j.state == "running"
        )
        return local, sum(
            1 for j in self.hosted.values() if j.meta.home_node != me and j.state == "running"
        )

    def hosted_gone(self, job: HostedJob) -> None:
        key = (job.meta.home_node, job.meta.home_pid)
        if self.hosted.get(key) is job:
            del self.hosted[key]
            self.records.forget(job.pid)
            if self.load is not None:
                self.load.job_moved(-1)

    async def recover(self, job: HomeJob, held: Held) -> tuple[Link, int]:
        """Restore a job whose host was lost, here, from its checkpoint (checkpoint.py)."""
        spent = checkpoint.resume_meta(job.meta, held)
        replay = job.stdin.since(held.stdin_at)  # what it read after the checkpoint, again
        hosted = await restore_job(self, job.meta, held.path, held.keys, replay, job.stdin_eof)
        hosted.outlog.start_at(held.offsets, keep=job.acks)  # it writes again from there
        hosted.link, home_end, hosted.in_end = *LocalLink.pair(), job.stdin.total
        self.add_hosted(hosted)  # first: a cancelled restore leaves no unknown process
        with contextlib.suppress(OSError):
            await asyncio.to_thread(cputime.carry_limits, hosted.pid, spent)
        procstate.resume(hosted.pid, held.stopped)
        log.info("job %d restored here from checkpoint %s", job.meta.home_pid, held.id)
        return home_end, self.agent.node_id

    def measured(self, job: HostedJob) -> None:
        for listener in self.measure_listeners:
            listener()

    def home_gone(self, job: HomeJob) -> None:
        if self.home_jobs.get(job.meta.home_pid) is job:
            del self.home_jobs[job.meta.home_pid]
            self.away.forget(job.meta.home_pid)

    def placed(self, job: HomeJob) -> None:
        """The job now runs on job.node: away from home, it is recorded (away.py)."""
        if job.node == self.agent.node_id:
            self.away.forget(job.meta.home_pid)
        else:
            self.away.write(job.meta, job.node)

    async def home_again(self, job: HostedJob) -> Link | None:
        return await home_again(self, job)

    def add_hosted(self, job: HostedJob) -> None:
        if job.holder is not None:
            job.holder.moving(False)  # restored and committed: a next agent may take it back
        self.hosted[(job.meta.home_node, job.meta.home_pid)] = job
        self.records.record(job.pid, job.meta.home_node, job.meta.home_pid, record_extra(job))
        job.start()
        if self.load is not None:
            self.load.job_moved(+1)

    # --- mosrun ------------------------------------------------------------------------------

    async def _op_run(self, req: dict[str, Any], conn: ControlConnection) -> dict[str, Any] | None:
        argv = [str(a) for a in req["argv"]]
        if not argv:
            raise PymosixError("nothing to run")
        home_pid = conn.peer.pid
        if home_pid in self.home_jobs:
            raise PymosixError(f"process {home_pid} already has a job here")
        meta = JobMeta(
            home_pid=home_pid,
            home_node=self.agent.node_id,
            uid=conn.peer.uid,
            argv=argv,
            started_at=time.time(),
            locked=bool(req.get("lock")),
            allowed_nodes=[int(n) for n in req["nodes"]] if req.get("nodes") else None,
            checkpoint_s=checkpoint.interval(req.get("checkpoint"), self.agent.config),
        )
        spec = JobSpec(
            argv,
            cwd=str(req.get("cwd") or "/"),
            env={str(k): str(v) for k, v in dict(req.get("env") or {}).items()},
            uid=conn.peer.uid,
            gid=conn.peer.gid,
            groups=groups_of(conn.peer.pid),
            umask=umask_of(conn.peer.pid),
            nice=nice_of(conn.peer.pid),
        )
        in_r, in_w, out_r, out_w, err_r, err_w = fds = stdio_pipes()
        try:
            pid, holder = await start_held(spec, fds, self.records.dir, home_pid)
        except SpawnError as e:
            for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
                os.close(fd)
            raise PymosixError(str(e)) from None
        for fd in (out_w, err_w):
            os.close(fd)
        host_end, home_end = LocalLink.pair()
        hosted = HostedJob(
            self, meta, pid, in_w, in_r, {1: out_r, 2: err_r}, host_end, time.monotonic()
        )
        hosted.holder = holder
        home = HomeJob(
            self, meta, conn, home_end, self.agent.node_id, user=user_name(conn.peer.uid)
        )
        # A mosrun that confirms what it gets (this version's): the output is kept until then.
        home.acks = hosted.outlog.keep = bool(req.get("acks"))
        self.home_jobs[home_pid] = home
        self.add_hosted(hosted)
        log.info("job %d started for uid %d: %s", home_pid, conn.peer.uid, " ".join(argv)[:200])
        # The last JSON line on this connection: stdio frames follow (migration/stdio.py).
        started = {"t": "started", "home_pid": home_pid, "node": self.agent.node_id}
        await conn.send({"ok": True, **started, "stdio": STDIO_FRAMES, "acks": True})
        serving = asyncio.create_task(home.serve())
        target = await self._initial_target(req, meta)
        if target is not None and target != self.agent.node_id:
            try:
                await home.move(target)
            except MigrationError as e:
                fallback = bool(req.get("fallback"))
                how = f" ({e}); running at home" if fallback else f": {e}"
                await home.tell({"t": "error", "message": f"could not start on node {target}{how}"})
                if not fallback:
                    await home.to_host(Frame.KILL, {})
        await serving
        return None

    async def _initial_target(self, req: dict[str, Any], meta: JobMeta) -> int | None:
        where = req.get("where")
        if where is not None:
            return int(where)
        if req.get("best") or req.get("nodes"):
            balancer = getattr(self.agent, "balancer", None)
            if balancer is not None:
                best: int | None = balancer.best_node_for(meta)
                return best
            if meta.allowed_nodes:
                return meta.allowed_nodes[0]
        return None

    # --- moving ------------------------------------------------------------------------------

    def _moved(self, record: MoveRecord) -> None:
        self.moves.append(record)
        for listener in self.move_listeners:
            listener(record)

    async def migrate_hosted(
        self,
        job: HostedJob,
        target: int,
        offer_load: float | None = None,
        reason: str | None = None,
    ) -> int:
        """Move a job that runs here to `target` (a node id); `offer_load` marks an automatic move."""
        why = reason_of(offer_load, reason)
        t0 = time.monotonic()
        try:
            stats = await self._migrate_hosted(job, target, offer_load, why)
        except BaseException as e:
            self._moved(self._record(job.meta, "out", target, why, t0, e))
            raise
        self._moved(self._record(job.meta, "out", target, why, t0, None, *stats[1:]))
        return target

    def _record(
        self,
        meta: JobMeta,
        direction: str,
        other: int,
        reason: str,
        t0: float,
        error: BaseException | None,
        freeze_s: float | None = None,
        image_bytes: int | None = None,
    ) -> MoveRecord:
        me = self.agent.node_id
        return MoveRecord(
            time.time(),
            direction,
            meta.home_node,
            meta.home_pid,
            meta.uid,
            me if direction == "out" else other,
            other if direction == "out" else me,
            reason,
            result_of(error),
            round(time.monotonic() - t0, 4),
            freeze_s,
            image_bytes,
            "" if error is None else str(error) or type(error).__name__,
        )

    async def _migrate_hosted(
        self, job: HostedJob, target: int, offer_load: float | None, reason: str
    ) -> MoveStats:
        if target == self.agent.node_id:
            raise MigrationError(
                f"job {job.meta.home_pid} already runs on node {format_node_id(target)}"
            )
        entry = self.agent.cluster.get(target)  # type: ignore[arg-type]
        if entry is None:
            raise MigrationError(
                f"node {target} ({format_node_id(target)}) is not in the map (see showmap)"
            )
        port = entry.migration_port or self.agent.config.migration_port
        pid = job.meta.home_pid
        try:
            stats = await job.migrate_out(entry.address, port, target, offer_load, reason)
        except (JobCannotMove, CriuError) as e:
            # The job's own state (a pre-check, or what criu could not dump): any node.
            self.refusals.record(pid, None, str(e), self.agent.now())
            job.refused(str(e))
            raise
        except MigrationError as e:
            self.refusals.record(pid, target, str(e), self.agent.now())
            job.refused(str(e))
            raise
        self.refusals.cleared(pid)
        if self.load is not None:
            self.load.table.adjust(target, 1.0)
        return stats

    def _find_home_job(self, pid: int) -> HomeJob:
        job = self.home_jobs.get(pid)
        if job is None:
            raise PymosixError(
                f"no job with home PID {pid} on this node (mosrun starts migratable jobs; see mps)"
            )
        return job

    def resolve_target(self, job: HomeJob, target: Any) -> int:
        if target == "home":
            return self.agent.node_id
        if target == "balance":
            balancer = getattr(self.agent, "balancer", None)
            if balancer is None:
                raise PymosixError("automatic balancing is off on this node")
            best: int | None = balancer.best_node_for(job.meta, current=job.node)
            if best is None or best == job.node:
                raise PymosixError(f"job {job.meta.home_pid} is best where it is (node {job.node})")
            return best
        return int(target)

    async def _op_migrate(self, req: dict[str, Any], conn: ControlConnection) -> dict[str, Any]:
        job = self._find_home_job(int(req["pid"]))
        if conn.peer.uid not in (0, job.meta.uid):
            raise PymosixError(f"job {job.meta.home_pid} belongs to another user")
        target = self.resolve_target(job, req["target"])
        if target == job.node:
            raise PymosixError(
                f"job {job.meta.home_pid} already runs on node {target} ({format_node_id(target)})"
            )
        start = time.monotonic()
        node = await job.move(target)
        return {
            "home_pid": job.meta.home_pid,
            "node": node,
            "seconds": round(time.monotonic() - start, 3),
        }

    async def _op_jobs(self, req: dict[str, Any], conn: ControlConnection) -> dict[str, Any]:
        return {"node_id": self.agent.node_id, "jobs": self.job_rows()}

    def job_rows(self) -> list[dict[str, Any]]:
        """mps's rows: the jobs whose home is here (wherever they run) and the guests here."""
        rows = []
        me = self.agent.node_id
        for j in self.home_jobs.values():
            rows.append(
                {
                    "home_pid": j.meta.home_pid,
                    "user": j.user,
                    "node": j.node,
                    "home_node": me,
                    "guest": False,
                    "state": j.state,
                    "cpu": j.cpu_percent,
                    "rss": j.rss,
                    "migrations": j.meta.migrations,
                    "locked": j.meta.locked,
                    "command": " ".join(j.meta.argv),
                    "cpu_s": j.cpu_s,
                    "freezes": j.freezes,
                    "why": j.why,
                }
            )
        for h in self.hosted.values():
            if h.meta.home_node != me:
                rows.append(
                    {
                        "home_pid": h.meta.home_pid,
                        "user": user_name(h.meta.uid),
                        "node": me,
                        "home_node": h.meta.home_node,
                        "guest": True,
                        "state": h.state,
                        "cpu": h.cpu_percent,
                        "rss": h.rss,
                        "migrations": h.meta.migrations,
                        "locked": h.meta.locked,
                        "command": " ".join(h.meta.argv),
                        "pid": h.pid,
                        **{k: v for k, v in h.stats().items() if k in ("cpu_s", "freezes", "why")},
                    }
                )
            elif h.meta.home_pid in self.home_jobs:
                rows[[r["home_pid"] for r in rows].index(h.meta.home_pid)]["pid"] = h.pid
        listed = {r["home_pid"] for r in rows}
        return rows + [r for r in self.restarts.rows() if r["home_pid"] not in listed]

    async def _op_cantmove(self, req: dict[str, Any], conn: ControlConnection) -> dict[str, Any]:
        """Why a job cannot move (openMosix's /proc/PID/cantmove), for its owner and root."""
        pid = int(req["pid"])
        home = self.home_jobs.get(pid)
        hosted = next((h for h in self.hosted.values() if h.meta.home_pid == pid), None)
        if home is None and hosted is None:
            raise PymosixError(f"no job with home PID {pid} here (see mps)")
        job = home or hosted
        assert job is not None
        if conn.peer.uid not in (0, job.meta.uid):
            raise PymosixError(f"job {pid} belongs to another user")
        why: str | None = None
        if hosted is not None and hosted.state == "running":
            why = (
                await asyncio.to_thread(
                    cantmove, hosted.pid, criu_version=await self.criu.version()
                )
                or hosted.why
            )
        elif home is not None:
            why = home.why
        return {"home_pid": pid, "why": why}

    async def _op_expel(self, req: dict[str, Any], conn: ControlConnection) -> dict[str, Any]:
        """Send every guest home; this node blocks guests from now on."""
        _root_only(conn, "expel")
        self.agent.flags.block = True
        me = self.agent.node_id
        expelled = 0
        # Guests already on their way in when block went on arrive after it: wait, expel again.
        while True:
            guests = [
                h for h in self.hosted.values() if h.meta.home_node != me and h.state == "running"
            ]
            if not guests and not self._incoming:
                break
            await _all_or_why(
                [
                    (h.meta.home_pid, self.migrate_hosted(h, h.meta.home_node, reason="expel"))
                    for h in guests
                ],
                "some guests could not be sent home",
            )
            expelled += len(guests)
            if self._incoming:
                await asyncio.sleep(0.05)
        return {"expelled": expelled, "message": f"expelled {expelled} guest(s); block is on"}

    async def _op_bring(self, req: dict[str, Any], conn: ControlConnection) -> dict[str, Any]:
        """Bring every job of this node home; its local jobs stay from now on."""
        _root_only(conn, "bring")
        self.agent.flags.lstay = True
        me = self.agent.node_id
        away = [j for j in self.home_jobs.values() if j.node != me]
        await _all_or_why(
            [(j.meta.home_pid, j.move(me)) for j in away], "some jobs could not come home"
        )
        return {"brought": len(away), "message": f"brought {len(away)} job(s) home; lstay is on"}

    # --- the other agents --------------------------------------------------------------------

    async def _accept(self, stream: FrameStream) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            ch = await accept_channel(stream, self.agent.keys, self.agent.node_id)
        except (AuthError, DecodeError, TimeoutError, ConnectionError, OSError) as e:
            log.warning("refused a migration-channel connection: %s", e)
            self.agent.counters.rejected_auth += 1
            stream.close()
            self._conns.discard(task)
            return
        keep = False
        try:
            kind, p = await asyncio.wait_for(ch.recv(), 30)
            if kind == Frame.ATTACH:
                home = self.home_jobs.get(int(p["home_pid"]))
                if not await self.faults.passes("ATTACH"):
                    pass
                elif home is None and p.get("rejoin"):  # this agent restarted (away.py)
                    keep = self.restarts.offer_link(int(p["home_pid"]), ChannelLink(ch), ch.peer_id)
                    if not keep:
                        await ch.send(Frame.KILL, {})
                elif home is None or home.meta.home_node != self.agent.node_id:
                    await ch.send(Frame.KILL, {})
                elif p.get("rejoin"):  # the host's agent restarted (rejoin.py)
                    keep = await home.rejoin(ChannelLink(ch), ch.peer_id)
                    if not keep:
                        await ch.send(Frame.KILL, {})
                else:
                    # The node the handshake authenticated, not what the frame claims.
                    link = ChannelLink(ch)
                    keep = await home.attach(link, ch.peer_id, str(p.get("move") or ""))
                    if not keep:
                        await ch.send(Frame.KILL, {})
            elif kind == Frame.MIGRATE:
                keep = await receive(self, ch, p)
            elif kind == Frame.QUERY and self.answer_query is not None:
                await ch.send(Frame.REPLY, self.answer_query(p))
        except (
            EOFError,
            AuthError,
            DecodeError,
            TimeoutError,
            KeyError,
            ValueError,
            TypeError,
            OSError,
        ) as e:
            log.warning("migration channel from node %d: %s", ch.peer_id, e)
        finally:
            if not keep:
                await close_channel(ch)
            self._conns.discard(task)

    async def wait_closed(self) -> None:
        with contextlib.suppress(Exception):
            if self._server is not None:
                await self._server.wait_closed()
