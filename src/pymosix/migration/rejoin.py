"""A guest outlives its host's agent (issue 16 item 5, step 2; docs/reliability.md).

A guest is restored under a holder (heldrestore.py). When the host's agent dies, the kernel
closes its link home; home waits `home.REJOIN_S` for the host's next agent. That agent finds the
guest's record and holder (orphans.py), takes the pipe fds from the holder, opens a channel
home and asks to *rejoin* (an ATTACH of no move). Home accepts only from the node it records as
the job's host, with no move under way and the job not given up (home.HomeJob.rejoin); then the
job goes on, the same process, with its output, stdin and signals relayed as before.

Exactly one copy: a holder with no agent kills its guest after `GUEST_ALONE_S`, before home
gives the job up (REJOIN_S, then a checkpoint restore or "job lost"), and home refuses a rejoin
after that. An agent that died moving the guest leaves it to no one (the holder says so): the
move's target may run it, as home's arbiter decides; the original is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pymosix.errors import AuthError
from pymosix.migration import procstate, spool
from pymosix.migration.cantmove import tree_pids
from pymosix.migration.channel import open_channel
from pymosix.migration.holder import Holder
from pymosix.migration.hosted import HostedJob
from pymosix.migration.lifecycle import RETRY_S, JobMeta
from pymosix.migration.link import ChannelLink, Frame, Link, LocalLink
from pymosix.migration.orphans import start_time

if TYPE_CHECKING:
    from pymosix.migration.engine import MigrationEngine

log = logging.getLogger(__name__)

#: How long a new agent tries to reach a guest's home (home waits REJOIN_S from the old end).
TRY_S = 8.0


def _kill(rec: dict[str, Any]) -> None:
    if start_time(int(rec["pid"])) == rec["start"]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(rec["pid"]), signal.SIGKILL)


async def rejoin_guest(engine: MigrationEngine, rec: dict[str, Any]) -> bool:
    """Take back a guest a dead agent of this node left (`rec`: its record, with "file");
    True if it runs on here, linked to its home again. Otherwise it is killed."""
    home_pid, home_node = int(rec["home_pid"]), int(rec["home_node"])
    try:
        holder = await Holder.connect(Path(rec["holder"]))
        meta = JobMeta.from_wire(rec["meta"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning(
            "guest %d of node %d: its holder did not answer (%s); killed", home_pid, home_node, e
        )
        _kill(rec)
        Path(rec["file"]).unlink(missing_ok=True)
        return False
    Path(rec["file"]).unlink(missing_ok=True)  # recorded again, under this agent, if it stays
    if holder.was_moving:
        # The move's target may run it (home's arbiter decides): this original must not.
        log.warning("guest %d of node %d: its agent died moving it; killed", home_pid, home_node)
        _give_up(holder)
        return False
    # Its link home is set once home takes it back.
    hosted = HostedJob.from_holder(engine, meta, holder, LocalLink.pair()[0], stdin_eof=False)
    # Home may restore a checkpointed job once it gives this host up (REJOIN_S): until home
    # says yes, the job must not run (its holder kept it running until now, < GUEST_ALONE_S).
    fenced = _fence(holder.pid) if meta.checkpoint_s > 0 else None
    link, said, why = await _rejoin_home(engine, meta)
    if link is not None and fenced is not None:
        procstate.resume(holder.pid, fenced)
    if link is None:
        log.warning("guest %d of node %d: %s; killed", home_pid, home_node, why)
        _give_up(holder)
        for fd in (hosted.stdin_r, *hosted.out_fds.values(), *filter(None, [hosted.stdin_w])):
            with contextlib.suppress(OSError):
                os.close(fd)
        return False
    hosted.link, hosted.in_end = link, int(said.get("in_at") or 0)
    # What a stopped agent kept goes first, from where home's stream stands (a killed one's
    # is lost).
    hosted.adopt_output(spool.take(engine.records.dir, holder.pid), said)
    engine.add_hosted(hosted)
    log.info("guest %d of node %d taken back (pid %d here)", home_pid, home_node, holder.pid)
    return True


def _fence(pid: int) -> set[int]:
    """Stop every process of the job; those it had stopped itself (they stay so)."""
    already = procstate.stopped_by_job(pid)
    for p in tree_pids(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGSTOP)
    return already


def _give_up(holder: Holder) -> None:
    holder.kill()
    holder.release()
    spool.drop(holder.path.parent, holder.pid)  # beside its socket, in the records' directory


async def home_again(engine: MigrationEngine, job: HostedJob) -> Link | None:
    """A guest whose link home closed (home's agent died, or the connection broke): a new link
    once home, or its next agent, takes it back (away.py); None if none does in TRY_S."""
    if job.meta.home_node == engine.agent.node_id:
        return None
    log.info("job %d: its link home closed; asking home to take it back", job.meta.home_pid)
    link, said, why = await _rejoin_home(engine, job.meta)
    if link is None:
        log.warning("job %d: %s", job.meta.home_pid, why)
        return None
    job.in_end = int(said.get("in_at") or 0)
    job.resend_from(said)  # what the dead agent had not passed on to mosrun
    log.info("job %d: linked to its home again", job.meta.home_pid)
    return link


async def _rejoin_home(
    engine: MigrationEngine, meta: JobMeta
) -> tuple[Link | None, dict[str, Any], str]:
    """A link home on which home said yes to the rejoin, with what home said (its count of
    stdin bytes, in_at; where the job's output stands, out_at); or None and why not."""
    deadline = time.monotonic() + TRY_S
    why = "its home did not answer"
    while time.monotonic() < deadline:
        entry = engine.agent.cluster.get(meta.home_node)  # type: ignore[arg-type]
        if entry is None:
            why = f"its home node {meta.home_node} is not in the map"
            await asyncio.sleep(RETRY_S / 2)  # the map fills as hellos come in
            continue
        try:
            ch = await asyncio.wait_for(
                open_channel(
                    entry.address,
                    entry.migration_port or engine.agent.config.migration_port,
                    engine.agent.keys,
                    engine.agent.node_id,
                ),
                RETRY_S * 2,
            )
        except (OSError, AuthError, TimeoutError) as e:
            why = f"could not reach its home: {e or type(e).__name__}"
            await asyncio.sleep(RETRY_S / 2)
            continue
        link = ChannelLink(ch)
        try:
            await ch.send(
                Frame.ATTACH,
                {"home_pid": meta.home_pid, "node": engine.agent.node_id, "rejoin": True},
            )
            kind: int = Frame.BEAT
            p: dict[str, Any] = {}
            while kind == Frame.BEAT:
                kind, p = await asyncio.wait_for(link.recv(), RETRY_S * 2)
        except (OSError, EOFError, TimeoutError) as e:
            link.close()
            why = f"its home did not answer: {e or type(e).__name__}"
            continue
        if kind == Frame.COMMITTED:
            return link, p, ""
        link.close()
        return None, {}, "its home had given it up"
    return None, {}, why
