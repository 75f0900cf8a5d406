"""Home's side of the link a job has just left (issue 16).

A move commits when home records the target's ATTACH, and home then talks to the job over the
target's link. The source may not know yet: its RESTORED may be late or lost, and then it asks
home (ASK) over its own link and waits for the verdict, watching home's beats meanwhile
(hosted.HOME_SILENT_S). So home keeps that link served, answering ASKs and beating, until the
source closes it (it does once its frozen original is gone) or falls silent. A link left unread
and unbeaten made a source whose RESTORED came late take home for lost: it killed its frozen
original, and its image directory stayed behind (bench/soak.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from pymosix.errors import PymosixError
from pymosix.migration.faults import Faults
from pymosix.migration.lifecycle import Arbiter
from pymosix.migration.link import Frame, Link

log = logging.getLogger(__name__)


async def serve_left(
    link: Link, arbiter: Arbiter, faults: Faults, home_pid: int, beat_s: float, silent_s: float
) -> None:
    """Answer the ASKs of a job's former host on `link` and beat it, until it closes the link
    or says nothing for silent_s (it beats every second while it holds the job); then close."""
    beats = asyncio.create_task(_beat(link, beat_s))
    try:
        while True:
            try:
                kind, p = await asyncio.wait_for(link.recv(), silent_s)
            except (EOFError, TimeoutError, OSError, PymosixError):
                return
            if kind != Frame.ASK:
                continue  # its beats and stats: the job's state comes from its new node now
            move = str(p.get("move") or "")
            committed = arbiter.ask(move)
            log.info("job %d: move %s %s (asked by the node it left)", home_pid, move, committed)
            if await faults.passes("VERDICT"):
                with contextlib.suppress(EOFError, OSError):
                    await link.send(Frame.VERDICT, {"move": move, "committed": committed})
    finally:
        beats.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beats
        link.close()


async def _beat(link: Link, beat_s: float) -> None:
    with contextlib.suppress(EOFError, OSError):
        while True:
            await asyncio.sleep(beat_s)
            await link.send(Frame.BEAT, {})
