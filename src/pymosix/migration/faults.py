"""The fault hook: protocol messages dropped or delayed on purpose, for tests of what a lost
or late message does (issue 16). Off unless the node's state directory holds a `faults` file
(root-only, as the state directory is); each line is ``drop KIND`` or ``delay KIND SECONDS``,
KIND a frame name (RESTORED, ATTACH, COMMITTED, ASK, VERDICT, DONE, BEAT)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def parse(text: str) -> dict[str, float | None]:
    """KIND -> seconds of delay, or None to drop; malformed lines are ignored."""
    out: dict[str, float | None] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "drop":
            out[words[1].upper()] = None
        elif len(words) == 3 and words[0] == "delay":
            try:
                out[words[1].upper()] = max(0.0, float(words[2]))
            except ValueError:
                continue
    return out


class Faults:
    """Reads the file at every question, so a test can set and clear faults at any time."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rules(self) -> dict[str, float | None]:
        try:
            return parse(self.path.read_text())
        except OSError:
            return {}

    async def passes(self, kind: str) -> bool:
        """False if a message of this kind is to be dropped; waits first if it is delayed."""
        rules = self.rules()
        if kind not in rules:
            return True
        delay = rules[kind]
        if delay is None:
            log.warning("fault hook: dropping %s", kind)
            return False
        log.warning("fault hook: delaying %s by %.1f s", kind, delay)
        await asyncio.sleep(delay)
        return True
