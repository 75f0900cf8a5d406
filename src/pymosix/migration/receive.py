"""The target's side of a move: take the offer (or refuse it), the image, restore the job
(stopped, under a holder), and have its home commit the move before it runs (lifecycle.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pymosix.errors import (
    AuthError,
    CriuError,
    MigrationError,
)
from pymosix.ids import format_node_id
from pymosix.migration import cputime, postcopy, procstate
from pymosix.migration.channel import Channel, open_channel
from pymosix.migration.heldrestore import restore_held
from pymosix.migration.hosted import HostedJob, reap
from pymosix.migration.imagecheck import receive_rest
from pymosix.migration.lifecycle import RETRY_S, E, JobMeta, Machine
from pymosix.migration.link import ChannelLink, Frame, Link, LocalLink
from pymosix.migration.moves import (
    Refused,
    reason_of,
)
from pymosix.migration.needs import Needs, look_here
from pymosix.migration.needs import refusal as needs_refusal
from pymosix.migration.pages import page_socketpair, relay_pages
from pymosix.migration.stdio import stdio_pipes

if TYPE_CHECKING:
    from pymosix.migration.engine import MigrationEngine

log = logging.getLogger(__name__)


async def beat(ch: Channel) -> None:
    """While a target restores and attaches a job: the source hears it is alive."""
    with contextlib.suppress(OSError, EOFError):
        while True:
            await asyncio.sleep(1.0)
            await ch.send(Frame.BEAT, {})


async def receive(engine: MigrationEngine, ch: Channel, p: dict[str, Any]) -> bool:
    """An incoming job: take the image, restore it, tell its home where it is now."""
    engine._incoming += 1
    try:
        return await _receive_job(engine, ch, p)
    finally:
        engine._incoming -= 1


async def _receive_job(engine: MigrationEngine, ch: Channel, p: dict[str, Any]) -> bool:
    meta = JobMeta.from_wire(p["meta"])
    me = engine.agent.node_id
    t_offer = time.monotonic()
    why = reason_of(p.get("offer_load"), p.get("reason"))
    image_bytes = None

    def moved(error: BaseException | None) -> None:
        engine._moved(
            engine._record(meta, "in", ch.peer_id, why, t_offer, error, None, image_bytes)
        )

    refusal = None
    if engine.agent.flags.block and meta.home_node != me:
        refusal = f"node {format_node_id(me)} blocks guests (mosctl noblock)"
    elif engine.accept is not None and p.get("offer_load") is not None:
        refusal = engine.accept(meta.home_node, float(p["offer_load"]))
    if not refusal:
        refusal = await _check_needs(engine, p.get("needs"))
    if not refusal and not await engine.faults.passes("READY"):
        refusal = f"node {format_node_id(me)} refuses (fault hook)"
    if refusal:
        log.info("refused job %d of node %d: %s", meta.home_pid, ch.peer_id, refusal)
        moved(Refused(refusal))
        await ch.send(Frame.FAILED, {"error": refusal})
        return False
    if await postcopy.target_takes(engine, p, meta.home_pid):
        await ch.send(Frame.READY, {"postcopy": True})
        return await postcopy.receive(engine, ch, p, moved)
    images = engine.image_root / f"in-{meta.home_pid}-{secrets.token_hex(4)}"
    images.mkdir(mode=0o700)
    criu_end, ours = page_socketpair()
    server = asyncio.ensure_future(engine.criu.page_server(images, criu_end))
    beats: asyncio.Future[None] | None = None
    restored = False
    try:
        await ch.send(Frame.READY, {})
        t0 = time.monotonic()
        await relay_pages(ch, ours, engine.max_image_bytes)
        await asyncio.wait_for(server, 30)
        t_pages = time.monotonic()
        done = await receive_rest(ch, images, engine.max_image_bytes, p.get("needs"))
        t_received = time.monotonic()
        image_bytes = sum(f.stat().st_size for f in images.iterdir())
        keys = {int(k): str(v) for k, v in dict(p["keys"]).items()}
        stint = {int(k): float(v) for k, v in dict(done.get("cpu_used") or {}).items()}
        spent = cputime.account(meta, stint)
        beats = asyncio.ensure_future(beat(ch))
        hosted = await restore_job(
            engine, meta, images, keys, bytes(done.get("stdin") or b""), bool(done.get("stdin_eof"))
        )
        await asyncio.to_thread(cputime.carry_limits, hosted.pid, spent)
        hosted.in_end = int(done.get("in_end") or 0)
    except EOFError:
        log.warning("job %d: node %d gave up sending it", meta.home_pid, ch.peer_id)
        moved(MigrationError(f"node {ch.peer_id} gave up sending it"))
        return False
    except (CriuError, MigrationError, OSError, ValueError, TimeoutError) as e:
        log.warning("could not take job %d: %s", meta.home_pid, e)
        moved(e)
        with contextlib.suppress(OSError, EOFError):
            await ch.send(Frame.FAILED, {"error": str(e) or type(e).__name__})
        return False
    else:
        restored = True
        log.info(
            "job %d: pages received in %.3f s, the rest in %.3f s, restored in %.3f s",
            meta.home_pid,
            t_pages - t0,
            t_received - t_pages,
            time.monotonic() - t_received,
        )
    finally:
        if beats is not None and not restored:
            beats.cancel()
        if not server.done():
            server.cancel()
        await asyncio.gather(server, return_exceptions=True)
        criu_end.close()
        ours.close()
        shutil.rmtree(images, ignore_errors=True)
    # Restored and stopped: it runs only once home has recorded the commit (lifecycle.py).
    try:
        error = await commit(engine, hosted, str(p.get("move") or ""))
    finally:
        assert beats is not None
        beats.cancel()
        await asyncio.gather(beats, return_exceptions=True)
    if error is not None:
        moved(MigrationError(error))
        await discard(engine, hosted)
        log.warning("job %d: %s; its copy here is gone", meta.home_pid, error)
        with contextlib.suppress(OSError, EOFError):
            await ch.send(Frame.FAILED, {"error": f"restored, but {error}"})
        return False
    procstate.resume(hosted.pid, {int(x) for x in done.get("stopped") or []})
    engine.add_hosted(hosted)
    moved(None)
    if await engine.faults.passes("RESTORED"):
        with contextlib.suppress(OSError, EOFError):
            await ch.send(Frame.RESTORED, {"pid": hosted.pid, "image_bytes": image_bytes})
    log.info(
        "job %d arrived from node %d (pid %d here, move %d)",
        meta.home_pid,
        ch.peer_id,
        hosted.pid,
        meta.migrations,
    )
    return False


async def commit(engine: MigrationEngine, job: HostedJob, move: str) -> str | None:
    """Ask home to record the move (ATTACH), again until the ATTACHING deadline; None once
    home said COMMITTED (the job's link is then set), else why not."""
    m = Machine.target(time.monotonic())
    m.step(E.IMAGE_IN, m.since)
    m.step(E.RESTORED, m.since)
    why = "its home did not confirm the move"
    while not m.expired(time.monotonic()):
        try:
            link = await asyncio.wait_for(_link_home(engine, job, move), RETRY_S * 2)
            kind: int = Frame.KILL
            said: dict[str, Any] = {}
            if link is not None:
                try:
                    kind = Frame.BEAT
                    while kind == Frame.BEAT:
                        kind, said = await asyncio.wait_for(link.recv(), RETRY_S * 2)
                except BaseException:
                    link.close()
                    raise
        except (OSError, EOFError, AuthError, TimeoutError) as e:
            why = f"could not reach its home node: {e or type(e).__name__}"
            await asyncio.sleep(RETRY_S / 2)
            continue
        if kind == Frame.COMMITTED and link is not None:
            m.step(E.HOME_COMMITTED, time.monotonic())
            job.link = link
            job.adopt_output([], said)
            return None
        if link is not None:
            link.close()
        m.step(E.HOME_ABORTED, time.monotonic())
        return "its home had already given the move up"
    m.step(E.NO_ANSWER, time.monotonic())
    return why


async def discard(engine: MigrationEngine, job: HostedJob) -> None:
    """Kill a restored copy that must not run (its move did not commit), and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(job.pid, 9)
    if job.holder is not None:
        job.holder.release()  # it goes once the job is dead
    await reap(job.pid)
    for fd in (job.stdin_r, *job.out_fds.values(), *([job.stdin_w] if job.stdin_w else [])):
        with contextlib.suppress(OSError):
            os.close(fd)


async def _check_needs(engine: MigrationEngine, wire: Any) -> str | None:
    """The target's yes or no to what the job needs (migration/needs.py)."""
    if wire is None:
        return "the offer says nothing of what the job needs (update pymosix on that node)"
    try:
        needs = Needs.from_wire(wire)
    except (KeyError, TypeError, ValueError) as e:
        return f"malformed offer: {e or type(e).__name__}"
    here = await asyncio.to_thread(
        look_here, needs, engine.agent.node_id, await engine.criu.version(), engine.image_root
    )
    return needs_refusal(needs, here)


async def restore_job(
    engine: MigrationEngine,
    meta: JobMeta,
    images: Path,
    keys: dict[int, str],
    stdin: bytes,
    stdin_eof: bool,
    lazy: bool = False,
) -> HostedJob:
    in_r, in_w, out_r, out_w, err_r, err_w = stdio_pipes()
    inherit = {in_r: keys[0], out_w: keys[1]}
    if keys[2] != keys[1]:
        inherit[err_w] = keys[2]
    at_home = meta.home_node == engine.agent.node_id
    try:
        # Under a holder, so that it outlives this agent (heldrestore.py).
        result, holder = await restore_held(
            engine.criu,
            images,
            inherit,
            (in_w, in_r, out_r, err_r),
            engine.records.dir,
            meta.home_pid if at_home else None,
            leave_stopped=True,
            lazy=lazy,
        )
    except BaseException:
        for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
            os.close(fd)
        raise
    for fd in (out_w, err_w):
        os.close(fd)
    job = HostedJob(
        engine,
        meta,
        result.pid,
        in_w,
        in_r,
        {1: out_r, 2: err_r},
        link=LocalLink.pair()[0],
        arrived_at=time.monotonic(),
        stdin_eof=stdin_eof,
        holder=holder,
    )
    job.pending_in += stdin
    return job


async def _link_home(engine: MigrationEngine, job: HostedJob, move: str) -> Link | None:
    """A link to the job's home with ATTACH sent on it (COMMITTED or KILL is the answer);
    None if home, this very node, refused the commit."""
    me = engine.agent.node_id
    if job.meta.home_node == me:
        home = engine.home_jobs.get(job.meta.home_pid)
        if home is None:
            raise OSError("its deputy (mosrun) is gone")
        host_end, home_end = LocalLink.pair()
        return host_end if await home.attach(home_end, me, move) else None
    entry = engine.agent.cluster.get(job.meta.home_node)  # type: ignore[arg-type]
    if entry is None:
        raise OSError(f"home node {job.meta.home_node} is not in the map")
    ch = await open_channel(
        entry.address,
        entry.migration_port or engine.agent.config.migration_port,
        engine.agent.keys,
        me,
    )
    await ch.send(Frame.ATTACH, {"home_pid": job.meta.home_pid, "node": me, "move": move})
    return ChannelLink(ch)
