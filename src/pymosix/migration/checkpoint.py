"""Checkpoints of a guest, sent to its home; a restore at home when the guest's host is lost.

The node running a job whose home is elsewhere dumps it every `JobMeta.checkpoint_s` seconds
(criu dump -s, the same dump a move makes, then every process resumed: the job is frozen for the
dump only) and streams the image home over the job's own link. Not --leave-running: criu would
let the job go on before its pipes are drained, and the offsets below would be a guess. Home keeps the last complete one
(root's alone: a 0700 directory of 0600 files under its state directory) and, when the host is
lost, restores the job from it at home (docs/reliability.md, lifecycle.HOME_JOB).

Stdout and stderr stay one stream, without a gap or a repeat. Right after the dump, the job
still stopped, the host drains what the job wrote into its pipes and queues it home, then the
CKPT_MARK frame, on the one ordered link: when home reads the mark it has relayed to mosrun
exactly the bytes the job wrote before the dump, so its count then is the checkpoint's offset.
A restored job writes again what it wrote after the dump; home drops those bytes up to what
mosrun already has (`Cursor`). CRIU keeps no pipe data for our stdio: it dumps none for a write
end, and skips the restore of data for an inherited pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import struct
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pymosix.config import RANGES, NodeConfig
from pymosix.errors import CriuError, MigrationError, PymosixError
from pymosix.migration import cputime, procstate
from pymosix.migration.cantmove import cantmove, process_owner, tree_pids
from pymosix.migration.criu import CriuDriver, resume_dumped
from pymosix.migration.images import ImageError, ImageReceiver
from pymosix.migration.lifecycle import JobMeta, Keeper
from pymosix.migration.link import Frame
from pymosix.migration.outlog import FDS, to_wire


class _Node(Protocol):
    @property
    def node_id(self) -> int: ...


class _HostSide(Protocol):
    @property
    def agent(self) -> _Node: ...
    @property
    def criu(self) -> CriuDriver: ...
    @property
    def image_root(self) -> Path: ...


class Guest(Protocol):
    """What a checkpoint needs of the job on the node running it (hosted.HostedJob), named
    here so that neither module imports the other's."""

    meta: JobMeta
    pid: int
    state: str
    #: Stdin: home's count of bytes sent up to the last one received here; those not yet in
    #: the pipe; the agent's read end of the pipe.
    in_end: int
    pending_in: bytearray
    stdin_r: int
    #: When home was last heard from (monotonic).
    heard: float

    @property
    def engine(self) -> _HostSide: ...
    @property
    def moving(self) -> asyncio.Lock: ...
    def flush_output(self, then: tuple[int, dict[str, Any]] | None = None) -> None: ...
    async def send_home(self, kind: int, payload: dict[str, Any]) -> bool: ...
    async def drained(self, timeout_s: float) -> bool: ...


log = logging.getLogger(__name__)

FILE_CHUNK = 1024 * 1024
#: Where a home agent keeps checkpoints, under its state directory.
SUBDIR = "checkpoints"
#: A host whose home is silent this long stops a checkpointed job (SIGSTOP, all its processes):
#: before home, which gives the host up after home.DEAD_AFTER_S, may restore it elsewhere.
FENCE_S = 2.0
_ID = re.compile(r"^[0-9a-f]{16}$")


def interval(asked: Any, config: NodeConfig) -> float:
    """A job's checkpoint interval in seconds: mosrun -C's, else the node's; 0 is none."""
    if asked is None:
        return float(config.checkpoint_interval)
    _, high, _ = RANGES["checkpoint_interval"]
    try:
        seconds = float(asked)
    except (TypeError, ValueError):
        seconds = -1.0
    if not (seconds == 0 or 1 <= seconds <= high) or isinstance(asked, bool):
        raise PymosixError(f"checkpoint interval {asked!r}: give 0 (none) or 1 to {high} seconds")
    return seconds


# --- pure: the output a restored job writes again ----------------------------------------------


def fresh(sent: int, pos: int, data: bytes | memoryview) -> bytes | memoryview:
    """The part of `data`, the stream's bytes from position `pos` on, that lies beyond the
    `sent` bytes mosrun already has: a restored job writes again what followed its checkpoint."""
    return data[max(0, min(len(data), sent - pos)) :]


@dataclass
class Cursor:
    """Per stdio fd: bytes relayed to mosrun (`sent`), and where the job's next byte falls in
    the stream (`pos`): equal but after a restore, when `pos` is the checkpoint's offset."""

    sent: dict[int, int] = field(default_factory=dict)
    pos: dict[int, int] = field(default_factory=dict)
    #: fds whose position mosrun did not say (a mosrun older than its agent): the next frame's
    #: is taken as where the stream stands.
    unknown: set[int] = field(default_factory=set)

    def take(self, fd: int, data: bytes | memoryview, at: int | None = None) -> bytes | memoryview:
        """What of `data`, written by the job on `fd` from position `at` (the frame's; else
        where the last one ended), goes to mosrun (a slice: no copy)."""
        if at is not None and fd in self.unknown:
            self.unknown.discard(fd)
            self.sent[fd] = self.pos[fd] = at
        sent = self.sent.get(fd, 0)
        pos = self.pos.get(fd, sent) if at is None else at
        out = fresh(sent, pos, data)
        self.pos[fd] = pos + len(data)
        # A position, not a count: past a gap (lacks) it is where mosrun's stream stands.
        self.sent[fd] = max(sent, pos + len(data))
        return out

    def lacks(self, fd: int, at: int) -> int:
        """Bytes before position `at` that mosrun never had (lost on the way: a gap)."""
        return 0 if fd in self.unknown else max(0, at - self.sent.get(fd, 0))

    def next_pos(self) -> list[int]:
        """Where the job's next byte on each of stdout, stderr falls (outlog.to_wire's order)."""
        return to_wire({fd: self.pos.get(fd, self.sent.get(fd, 0)) for fd in FDS})

    def received(self, got: dict[int, int] | None) -> None:
        """mosrun has `got[fd]` bytes (its reattach, after home's agent restarted); None: it
        did not say (an older mosrun): the stream stands where the next frame says."""
        if got is None:
            self.unknown = {1, 2}
            return
        self.sent = dict(got)
        self.pos = dict(got)

    def rewind(self, offsets: dict[int, int]) -> None:
        """The job goes on from a checkpoint whose offsets these are (none: nothing yet)."""
        self.pos = {fd: offsets.get(fd, 0) for fd in {*offsets, *self.sent}}


@dataclass
class InputLog:
    """Stdin home sent to the job, in order: `total` bytes in all, those from `base` on kept
    (at most `limit`), for a restored job to read again what it read after its checkpoint."""

    keep: bool = False
    limit: int = 16 << 20
    total: int = 0
    base: int = 0
    kept: bytearray = field(default_factory=bytearray)

    def add(self, data: bytes) -> int:
        """Log `data`; its first byte's offset in the stream."""
        at, self.total = self.total, self.total + len(data)
        if not self.keep:
            self.base = self.total
            return at
        self.kept += data
        self.trim(self.total - self.limit)
        return at

    def trim(self, upto: int) -> None:
        """Bytes before `upto` are needed no more (a checkpoint's job had read them)."""
        upto = min(upto, self.total)
        if upto > self.base:
            del self.kept[: upto - self.base]
            self.base = upto

    def since(self, at: int) -> bytes:
        """What was sent from offset `at` on (from `base` if older bytes were dropped)."""
        return bytes(self.kept[max(0, at - self.base) :])


def _unread(fd: int) -> int:
    """Bytes in a pipe not read yet."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


# --- the host: take one, send it home ----------------------------------------------------------


async def keep(job: Guest) -> None:
    """Every meta.checkpoint_s while the job runs here away from home: a checkpoint home."""
    while job.state == "running":
        await asyncio.sleep(job.meta.checkpoint_s)
        if job.meta.home_node == job.engine.agent.node_id:
            continue
        async with job.moving:  # never during a move
            if job.state != "running":
                return
            try:
                await take(job)
            except (CriuError, MigrationError, OSError) as e:
                log.warning("job %d: no checkpoint this time: %s", job.meta.home_pid, e)


async def last_one(job: Guest, timeout_s: float) -> bool:
    """A checkpoint home now, whatever the job's interval (a stopping agent's guest that
    could not leave: home restores it when it gives this host up); True once home has it all."""
    try:
        async with asyncio.timeout(timeout_s):
            async with job.moving:
                if job.state != "running" or not await take(job):
                    return False
                return await job.drained(timeout_s)
    except (CriuError, MigrationError, OSError, TimeoutError) as e:
        log.warning("job %d: no checkpoint at the stop: %s", job.meta.home_pid, e)
        return False


async def take(job: Guest) -> bool:
    """Dump the job (stopped for the dump only) and send the image home; False if it cannot
    be dumped now (cantmove) or the job went meanwhile."""
    why = cantmove(job.pid, criu_version=await job.engine.criu.version())
    if why:
        log.debug("job %d: no checkpoint: %s", job.meta.home_pid, why)
        return False
    ckpt = os.urandom(8).hex()
    root = Path(job.engine.image_root)
    images, dump_log = root / f"ckpt-{job.meta.home_pid}-{ckpt}", root / f"ckpt-{ckpt}.log"
    keys = {str(fd): os.readlink(f"/proc/{job.pid}/fd/{fd}") for fd in (0, 1, 2)}
    keep_stopped = procstate.stopped_by_job(job.pid)
    t0 = time.monotonic()
    try:
        try:
            await job.engine.criu.dump(
                job.pid, images, leave_stopped=True, log=dump_log, owner=process_owner(job.pid)
            )
            # Still stopped: all it wrote goes home before the mark, nothing after it yet.
            mark = {
                "id": ckpt,
                "keys": keys,
                "stopped": sorted(keep_stopped),
                "cpu_used": {str(k): v for k, v in cputime.used_by_tree(job.pid).items()},
                "meta": job.meta.to_wire(),
                # Where the job is in its stdin: what home sent and it has read.
                "stdin_at": job.in_end - len(job.pending_in) - _unread(job.stdin_r),
            }
            job.flush_output(then=(Frame.CKPT_MARK, mark))
        finally:
            resume_dumped(job.pid, keep_stopped)
        frozen = time.monotonic() - t0
        dump_log.unlink(missing_ok=True)
        _SENDING.add(id(job))
        sent = await _send_files(job, ckpt, images)
    finally:
        _SENDING.discard(id(job))
        shutil.rmtree(images, ignore_errors=True)
    if sent:
        log.info(
            "job %d: checkpoint %s sent home (frozen %.3f s, %.3f s in all)",
            job.meta.home_pid,
            ckpt,
            frozen,
            time.monotonic() - t0,
        )
    return sent


async def _send_files(job: Guest, ckpt: str, images: Path) -> bool:
    for f in sorted(images.iterdir()):
        if f.name.endswith(".log"):
            continue
        with f.open("rb") as fh:
            chunk, first = fh.read(FILE_CHUNK), True
            while first or chunk:
                frame = {"id": ckpt, "name": f.name, "data": chunk, "first": first}
                if not await job.send_home(Frame.CKPT_FILE, frame):
                    return False
                chunk, first = fh.read(FILE_CHUNK), False
    return await job.send_home(Frame.CKPT_DONE, {"id": ckpt, "ok": True})


#: Jobs (by id()) whose checkpoint is past its dump: their move lock does not keep them running.
_SENDING: set[int] = set()


def fences(job: Guest) -> bool:
    """Whether the host stops this job when home goes silent: a guest home may restore from a
    checkpoint (a copy home gave up must not run on); not while it is dumped for a move or a
    checkpoint (those resume it themselves, and a move has its own deadlines)."""
    return (
        job.meta.checkpoint_s > 0
        and job.meta.home_node != job.engine.agent.node_id
        and job.state == "running"
        and (not job.moving.locked() or id(job) in _SENDING)
    )


async def guard(job: Guest) -> None:
    """Stop the job while home is silent for FENCE_S; resume it if home speaks again (it had
    not given this host up). The job's receiver kills it after hosted.HOME_SILENT_S."""
    fenced: set[int] | None = None
    job.heard = time.monotonic()  # a job restored here may have waited long for its commit
    while job.state == "running":
        await asyncio.sleep(0.2)
        silent = time.monotonic() - job.heard >= FENCE_S
        if fenced is None and silent and fences(job):
            fenced = fence(job)
        elif fenced is not None and not silent:
            procstate.resume(job.pid, fenced)
            log.info("job %d: home heard again: job resumed", job.meta.home_pid)
            fenced = None


def fence(job: Guest) -> set[int]:
    """Home is silent: stop every process of a checkpointed job, so that it cannot run on while
    home may restore it from its checkpoint; the PIDs (in the job) that were stopped already."""
    already = procstate.stopped_by_job(job.pid)
    for p in tree_pids(job.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGSTOP)
    log.warning("job %d: home silent for %.0f s: job stopped", job.meta.home_pid, FENCE_S)
    return already


# --- home: receive, hold, restore --------------------------------------------------------------


@dataclass
class Held:
    """A checkpoint at home: its files, stdio offsets, and what the restore needs."""

    id: str
    path: Path
    offsets: dict[int, int]
    keys: dict[int, str]
    stopped: set[int]
    cpu_used: dict[int, float]
    meta: JobMeta
    #: Stdin bytes (home's count) the job had read at the checkpoint.
    stdin_at: int
    #: When home read its mark (monotonic): the job's state at that moment, give or take a frame.
    taken_at: float


def _parse_mark(p: dict[str, Any], path: Path, offsets: dict[int, int], now: float) -> Held:
    keys = {int(k): str(v) for k, v in dict(p["keys"]).items()}
    if sorted(keys) != [0, 1, 2]:
        raise ImageError("checkpoint without the job's stdio")
    return Held(
        str(p["id"]),
        path,
        dict(offsets),
        keys,
        {int(x) for x in p.get("stopped") or []},
        {int(k): float(v) for k, v in dict(p.get("cpu_used") or {}).items()},
        JobMeta.from_wire(dict(p["meta"])),
        int(p.get("stdin_at") or 0),
        now,
    )


class Store:
    """Home's checkpoints of one job under `root` (0700; files 0600, checked as a move's are):
    the one arriving, and the last complete one, replaced only once a newer one is whole."""

    def __init__(self, root: Path, limit_bytes: int) -> None:
        self.root = root
        self.limit = limit_bytes
        self.held: Held | None = None
        self._partial: Held | None = None
        self._receiver: ImageReceiver | None = None

    def feed(self, kind: int, p: dict[str, Any], keeper: Keeper, sent: dict[int, int]) -> None:
        """One checkpoint frame from the job's host; `sent`: bytes relayed to mosrun so far."""
        now = time.monotonic()
        ckpt = str(p.get("id") or "")
        try:
            if kind == Frame.CKPT_MARK:
                self._drop_partial()
                if not _ID.match(ckpt):
                    raise ImageError(f"bad checkpoint id {ckpt[:40]!r}")
                if not keeper.begin(ckpt, now):
                    return
                self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(self.root, 0o700)
                self._partial = _parse_mark(p, self.root / f"new-{ckpt}", sent, now)
                self._receiver = ImageReceiver(self._partial.path, self.limit)
                return
            part, receiver = self._partial, self._receiver
            if part is None or receiver is None or part.id != ckpt:
                return  # one home gave up on
            if kind == Frame.CKPT_FILE:
                receiver.feed(p)
            elif kind == Frame.CKPT_DONE:
                if not p.get("ok"):
                    raise ImageError("its host could not finish it")
                receiver.close()
                final = self.root / f"ckpt-{ckpt}"
                part.path.rename(final)
                part.path, self._partial, self._receiver = final, None, None
                if keeper.done(ckpt, now):
                    old, self.held = self.held, part
                    if old is not None:
                        shutil.rmtree(old.path, ignore_errors=True)
                    log.info("checkpoint %s of %s complete", ckpt, self.root.name)
                else:
                    shutil.rmtree(final, ignore_errors=True)
        except (ImageError, OSError, KeyError, TypeError, ValueError) as e:
            log.warning("checkpoint %s of %s dropped: %s", ckpt[:16], self.root.name, e)
            self._drop_partial()
            keeper.failed(now)

    def abandon(self, keeper: Keeper) -> None:
        """The job moved on: the checkpoint its old host was sending will not be finished."""
        if self._partial is not None:
            self._drop_partial()
            keeper.failed(time.monotonic())

    def drop_held(self) -> None:
        if self.held is not None:
            shutil.rmtree(self.held.path, ignore_errors=True)
            self.held = None

    def _drop_partial(self) -> None:
        if self._receiver is not None:
            self._receiver.close()
        if self._partial is not None:
            shutil.rmtree(self._partial.path, ignore_errors=True)
        self._partial, self._receiver = None, None

    def remove(self) -> None:
        """The job ended: nothing of it stays."""
        self._drop_partial()
        self.held = None
        shutil.rmtree(self.root, ignore_errors=True)


def sweep(state_dir: Path) -> None:
    """A starting agent: checkpoints a previous one left (its jobs' mosruns are gone) go."""
    shutil.rmtree(state_dir / SUBDIR, ignore_errors=True)


def resume_meta(meta: JobMeta, held: Held) -> dict[int, int]:
    """The job's CPU account as its checkpoint had it, plus its stint until then; the whole
    seconds to take off each restored process's RLIMIT_CPU (cputime.carry_limits)."""
    meta.cpu_s, meta.cpu_by_pid = held.meta.cpu_s, dict(held.meta.cpu_by_pid)
    meta.freezes = held.meta.freezes + 1
    return cputime.account(meta, held.cpu_used)
