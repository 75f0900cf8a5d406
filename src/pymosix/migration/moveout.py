"""The way out: the source side of a move (offer, freeze, stream the image, restore on the
target, home's commit) with rollback if anything fails; mixed into HostedJob (hosted.py).

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
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pymosix.errors import CriuError, MigrationError
from pymosix.ids import format_node_id
from pymosix.migration import cputime, postcopy, procstate
from pymosix.migration.cantmove import cantmove, process_owner, tree_pids
from pymosix.migration.channel import Channel, open_channel
from pymosix.migration.criu import resume_dumped
from pymosix.migration.lifecycle import DEADLINES, RETRY_S, E, Machine, S
from pymosix.migration.link import Frame
from pymosix.migration.moves import CannotMove, MoveStats, Refused
from pymosix.migration.needs import gather
from pymosix.migration.orphans import runs
from pymosix.migration.pages import page_socketpair, relay_pages

if TYPE_CHECKING:
    from pymosix.migration.hosted import HostedJob

log = logging.getLogger(__name__)

FILE_CHUNK = 1024 * 1024


def _read_available(fd: int) -> bytes:
    """What is buffered in a pipe now, without blocking and without touching its O_NONBLOCK."""
    out = bytearray()
    while (n := struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]) > 0:
        out += os.read(fd, n)
    return bytes(out)


async def migrate_out(
    job: HostedJob,
    address: str,
    port: int,
    target: int,
    offer_load: float | None = None,
    reason: str = "request",
) -> MoveStats:
    """Move the job to the node at address:port; on any failure it continues here."""
    async with job._moving:
        if job.state != "running":
            raise MigrationError(f"job {job.meta.home_pid} is {job.state}")
        why = cantmove(job.pid, criu_version=await job.engine.criu.version())
        if why:
            raise CannotMove(f"job {job.meta.home_pid} cannot move: {why}")
        t_begin = time.monotonic()
        job.move = Machine.source(t_begin)
        job.move.step(E.OFFER, t_begin)
        job.move_id = secrets.token_hex(8)
        # Ask first: a target that is down or says no costs the job nothing.
        try:
            ch = await _offer(job, address, port, target, offer_load, reason)
        except BaseException:
            job.move.step(E.REFUSED, time.monotonic())
            raise
        if job.holder is not None:
            job.holder.moving(True)  # an agent dying from here on leaves it to no one
        try:
            return await _move(job, ch, target, t_begin)
        finally:
            if job.holder is not None:
                job.holder.moving(False)
            await close_channel(ch)


async def _offer(
    job: HostedJob, address: str, port: int, target: int, offer_load: float | None, reason: str
) -> Channel:
    """A channel to the target, which has agreed to take this job."""
    keys = {fd: os.readlink(f"/proc/{job.pid}/fd/{fd}") for fd in (0, 1, 2)}
    uid, gid = process_owner(job.pid) or (job.meta.uid, job.meta.uid)
    needs = await asyncio.to_thread(gather, job.pid, uid, gid, await job.engine.criu.version())
    faults = job.engine.faults
    needs = replace(needs, files=tuple(f for f in needs.files if not faults.unlisted(f.path)))
    try:
        ch = await open_channel(address, port, job.engine.agent.keys, job.engine.agent.node_id)
    except (OSError, TimeoutError) as e:
        raise MigrationError(
            f"cannot reach node {target} at {address}:{port}: {e or type(e).__name__}"
        ) from None
    try:
        # As the job will be once it arrives: moved and frozen once more.
        meta = job.meta.to_wire() | {
            "migrations": job.meta.migrations + 1,
            "freezes": job.meta.freezes + 1,
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
                "move": job.move_id,
                "postcopy": await postcopy.source_offer(job),
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
    job.postcopy = bool(p.get("postcopy"))
    return ch


async def _move(job: HostedJob, ch: Channel, target: int, t_begin: float) -> MoveStats:
    """Freeze, stream the image, restore on the target; roll back here on any failure that
    leaves no doubt (lifecycle.py): once DONE is out, only home's word ends the move."""
    images = Path(job.engine.image_root) / f"out-{job.meta.home_pid}-{secrets.token_hex(4)}"
    m = job.move
    assert m is not None
    job._paused_ack.clear()
    job._in_paused = True
    try:
        await job.link.send(Frame.PAUSE, {"move": job.move_id})
        await asyncio.wait_for(job._paused_ack.wait(), 10)
    except (TimeoutError, EOFError) as e:
        job._in_paused = False
        job._in_ready.set()
        if isinstance(e, EOFError):  # its mosrun went (the job is being killed) or home did
            raise MigrationError("the link to the job's home is closed") from None
        raise MigrationError("home did not pause stdin in time") from None
    m.step(E.READY, time.monotonic())
    leftover = b""
    # Before the freeze: which processes the job itself keeps stopped (they stay so).
    keep_stopped = procstate.stopped_by_job(job.pid)
    lazy: postcopy.LazySource | None = None
    try:
        job._unwatch_output()
        t_freeze = time.monotonic()
        if job.postcopy:
            lazy = await postcopy.dump_lazy(job, ch, images)
            ch = lazy.channel  # pages flow on it from now on, beside the move's frames
        else:
            await _dump(job, ch, images, target, m)
        m.step(E.FROZEN, time.monotonic())
        t_dumped = time.monotonic()
        job._flush_ack.clear()
        job.flush_output(then=(Frame.FLUSHED, {}))
        await asyncio.wait_for(job._flush_ack.wait(), 10)
        leftover = _read_available(job.stdin_r)
        t_flushed = time.monotonic()
        new_pid = await _finish_transfer(
            job,
            ch,
            images,
            leftover + bytes(job.pending_in),
            cputime.used_by_tree(job.pid),
            keep_stopped,
            target,
        )
    except BaseException as e:
        if lazy is not None:
            await lazy.stop()  # criu lets go of the job, which stays stopped
        shutil.rmtree(images, ignore_errors=True)  # first: what follows may fail
        if m.state in (S.COMMITTED, S.LOST) or job.state != "running":
            # Not ours any more: never resumed here (see _finish_transfer). Or it ended
            # mid-move (killed: finish() closed its pipes and cancelled this move).
            raise
        # Rollback: the unread stdin goes back into the pipe, the job goes on here.
        if leftover and job.stdin_w is not None:
            with contextlib.suppress(OSError):
                os.write(job.stdin_w, leftover)
        elif leftover:
            job.pending_in[:0] = leftover
        # Every process of the tree, not just its init; whatever state a failed or killed
        # criu left them in (a failed dump resumes them itself: SIGCONT again is harmless).
        resume_dumped(job.pid, keep_stopped)  # TCP sockets out of repair mode too
        job._watch_output()
        job._in_paused = False
        job._in_ready.set()
        with contextlib.suppress(EOFError):
            await job.link.send(Frame.RESUME, {})
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
        job.state = "moved"  # it runs on the target: nothing here acts for it any more
        # The original stays frozen until the target has every page; after the commit a
        # broken transfer loses the job (the target's copy ran on: never resumed here).
        try:
            await lazy.last_page(job.meta.home_pid)
        except MigrationError as e:
            log.error("job %d: %s after the move committed", job.meta.home_pid, e)
    _drop_original(job, images)
    await _reap_original(job)
    log.info(
        "job %d moved to node %d (pid %d there): frozen %.3f s (dump and pages %.3f, "
        "flush %.3f, rest of the image and restore %.3f); pause took %.3f s",
        job.meta.home_pid,
        target,
        new_pid,
        t_done - t_freeze,
        t_dumped - t_freeze,
        t_flushed - t_dumped,
        t_done - t_flushed,
        t_freeze - t_begin,
    )
    job.finish()
    return MoveStats(new_pid, t_done - t_freeze, job._image_bytes)


def lose(job: HostedJob) -> None:
    """The job cannot go on here (its memory stopped coming): home hears the link end and
    reports the job lost, with no exit status of ours (it was killed on purpose)."""
    job.state = "lost"
    job._outq.put_nowait(None)


def _drop_original(job: HostedJob, images: Path) -> None:
    """The copy on the target is the job now (or may be): the frozen original goes."""
    job.state = "moved"
    for pid in tree_pids(job.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(images, ignore_errors=True)
    job._outq.put_nowait(None)


async def _reap_original(job: HostedJob) -> None:
    await reap(job.pid)


async def _dump(job: HostedJob, ch: Channel, images: Path, target: int, m: Machine) -> None:
    """criu dump, its pages streamed to the target; a target that stops taking them for
    the FREEZING deadline ends the dump (criu fails cleanly when its socket closes)."""
    criu_end, ours = page_socketpair()
    watched = _Watched(ch, m)
    relay = asyncio.ensure_future(relay_pages(cast(Channel, watched), ours, limit=1 << 20))
    job.meta.freezes += 1
    # The log lives beside the images, not in them: a rollback removes them.
    dump_log = Path(job.engine.image_root) / f"dump-{job.meta.home_pid}.log"
    dump = asyncio.ensure_future(
        job.engine.criu.dump(
            job.pid,
            images,
            leave_stopped=True,
            page_socket=criu_end,
            log=dump_log,
            owner=process_owner(job.pid),
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
    job: HostedJob,
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
    m = job.move
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
        if await job.engine.faults.passes("DONE"):
            done = {
                "stdin": stdin,
                "stdin_eof": job.stdin_eof,
                "in_end": job.in_end,
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
                job._image_bytes = int(p.get("image_bytes") or 0)
                return int(p["pid"])
            else:
                why = f"it refused: {p.get('error', 'no reason given')}"
                break
    except TimeoutError:
        why = f"it did not answer for {DEADLINES[('source', S.RESTORING)]:.0f} s"
    except (EOFError, OSError) as e:
        why = f"the connection broke ({e or type(e).__name__})"
    m.step(E.FAILED, time.monotonic())
    committed = await _ask_home(job, m)
    node = format_node_id(target)
    if committed is None:
        m.step(E.NO_ANSWER, time.monotonic())
        _drop_original(job, images)
        job.state = "lost"
        await _reap_original(job)
        job.finish()
        raise MigrationError(
            f"node {node} did not confirm the restore ({why}, step: restore) and home did "
            "not say whether the move committed: the copy here is gone"
        )
    if committed:
        m.step(E.HOME_COMMITTED, time.monotonic())
        log.warning("job %d: home says the move to node %s committed", job.meta.home_pid, node)
        return 0
    m.step(E.HOME_ABORTED, time.monotonic())
    raise MigrationError(
        f"node {node} did not restore the job ({why}, step: restore); it goes on here"
    )


async def _ask_home(job: HostedJob, m: Machine) -> bool | None:
    """Did the move commit? Home's decision (it aborts a move nobody committed yet);
    None if home does not answer within the DECIDING deadline."""
    job._verdict = asyncio.get_running_loop().create_future()
    try:
        while not m.expired(time.monotonic()):
            if await job.engine.faults.passes("ASK"):
                job._outq.put_nowait((Frame.ASK, {"move": job.move_id}))
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(job._verdict), RETRY_S)
        return None
    finally:
        job._verdict = None


async def close_channel(ch: Channel, wait_s: float = 2.0) -> None:
    """Close, flushing what is queued for a while; a peer that stopped reading (frozen, cut
    off) would hold a plain close forever: then the connection is aborted."""
    try:
        await asyncio.wait_for(ch.aclose(), wait_s)
    except TimeoutError:
        if ch.stream.transport is not None:
            ch.stream.transport.abort()


async def reap(pid: int, timeout_s: float = 5.0) -> None:
    """Wait (without blocking the loop) for a killed child of ours to be gone, and reap it;
    for a job under a holder (its parent), wait for it to be gone."""
    for _ in range(int(timeout_s / 0.01)):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG never blocks
        except ChildProcessError:
            done = not runs(pid)
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
