"""A job away from home outlives its home agent (issue 16 item 5, step 3; docs/reliability.md).

While a job runs on another node, its home keeps a record of it (`STATE_DIR/away/HOME_PID.json`,
root-only): its JobMeta, the node it runs on, and its mosrun's start time. When the home agent
dies, mosrun (same process, same PID) retries the next agent's control socket, and the host,
seeing its link home closed, asks the next agent to let the job rejoin (rejoin.py). The next
agent meets the two: only mosrun's own process (PID, start time, owner: restart.reattach_refusal)
and only the node the record names. Then the job goes on as if the agent had never gone: a
new deputy (HomeJob) between the same mosrun and the same process on the same host.

Whichever comes first waits for the other (`WAIT_S`); a record whose mosrun is gone is dropped
at once (its host then hears no to its rejoin, and kills the job: no orphan).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymosix.migration.lifecycle import JobMeta
from pymosix.migration.link import Frame, Link
from pymosix.migration.orphans import start_time

log = logging.getLogger(__name__)

#: How long the next agent waits for the second of mosrun and the host (mosrun tries 30 s,
#: the host home.REJOIN_S from when its link closed).
WAIT_S = 15.0
BEAT_S = 1.0


class AwayRecords:
    """Records of this home's jobs that run on other nodes."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "away"

    def _path(self, home_pid: int) -> Path:
        return self.dir / f"{home_pid}.json"

    def write(self, meta: JobMeta, node: int) -> None:
        started = start_time(meta.home_pid)
        if started is None:
            return  # mosrun is gone: nothing would take it back
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        rec = {"meta": meta.to_wire(), "node": node, "home_start": started}
        tmp = self._path(meta.home_pid).with_suffix(".tmp")
        tmp.write_text(json.dumps(rec))
        tmp.replace(self._path(meta.home_pid))

    def forget(self, home_pid: int) -> None:
        self._path(home_pid).unlink(missing_ok=True)

    def take(self) -> list[dict[str, Any]]:
        """The records a dead agent left whose mosrun still runs; every file is removed (the
        jobs taken back are recorded again)."""
        out = []
        for f in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            try:
                rec = dict(json.loads(f.read_text()))
                meta = JobMeta.from_wire(rec["meta"])
                rec["home_pid"], rec["node"] = meta.home_pid, int(rec["node"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                rec = {}
            f.unlink(missing_ok=True)
            if rec and start_time(rec["home_pid"]) == rec.get("home_start"):
                out.append(rec)
        return out


@dataclass
class Waiting:
    """A job away from home, between a dead agent and its next: who came back so far."""

    rec: dict[str, Any]
    link: asyncio.Future[tuple[Link, int]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    beats: asyncio.Task[None] | None = None
    #: Its mosrun came back (and waits for the host).
    claimed: bool = False

    def offer_link(self, link: Link, node: int) -> bool:
        """The host asks to rejoin: parked (with beats, so it waits) until mosrun comes."""
        if node != self.rec["node"] or self.link.done():
            return False
        self.link.set_result((link, node))
        self.beats = asyncio.get_running_loop().create_task(_beat(link))
        return True

    async def wait_link(self) -> tuple[Link, int] | None:
        try:
            got = await asyncio.wait_for(asyncio.shield(self.link), WAIT_S)
        except TimeoutError:
            return None
        if self.beats is not None:
            self.beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.beats
        return got

    def drop(self) -> None:
        """Nobody came for it in time: a parked link hears no (its host kills its copy)."""
        if self.beats is not None:
            self.beats.cancel()
        if self.link.done() and not self.link.cancelled():
            link, _ = self.link.result()
            asyncio.get_running_loop().create_task(_refuse(link))
        elif not self.link.done():
            self.link.cancel()


async def _beat(link: Link) -> None:
    with contextlib.suppress(EOFError):
        while True:
            await link.send(Frame.BEAT, {})
            await asyncio.sleep(BEAT_S)


async def _refuse(link: Link) -> None:
    with contextlib.suppress(EOFError, OSError):
        await link.send(Frame.KILL, {})
    link.close()
