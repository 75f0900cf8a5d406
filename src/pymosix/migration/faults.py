"""The fault hook: protocol messages dropped or delayed on purpose, for tests of what a lost
or late message does (issue 16). Off unless the node's state directory holds a `faults` file
(root-only, as the state directory is); each line is ``drop KIND`` or ``delay KIND SECONDS``,
KIND a frame name (READY: the target refuses the offer; DONE, ATTACH, COMMITTED, RESTORED, ASK, VERDICT), with ``once`` at the end
for a rule that applies to the next such message only (the line is then removed).
``unlist PATH`` leaves PATH out of the file list of the offers this node sends (a source whose
offer disagrees with its image, for the target's image check: imagecheck.py)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    line: int
    kind: str
    #: Seconds of delay; None drops the message.
    delay: float | None
    once: bool


def parse(text: str) -> dict[str, Rule]:
    """KIND -> its rule (the first line naming it); malformed lines are ignored."""
    out: dict[str, Rule] = {}
    for i, line in enumerate(text.splitlines()):
        words = line.split()
        once = bool(words) and words[-1] == "once"
        if once:
            words = words[:-1]
        rule = None
        if len(words) == 2 and words[0] == "drop":
            rule = Rule(i, words[1].upper(), None, once)
        elif len(words) == 2 and words[0] == "unlist":
            rule = Rule(i, "UNLIST " + words[1], None, once)
        elif len(words) == 3 and words[0] == "delay":
            try:
                rule = Rule(i, words[1].upper(), max(0.0, float(words[2])), once)
            except ValueError:
                continue
        if rule is not None and rule.kind not in out:
            out[rule.kind] = rule
    return out


class Faults:
    """Reads the file at every question, so a test can set and clear faults at any time."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _take(self, kind: str) -> Rule | None:
        try:
            text = self.path.read_text()
        except OSError:
            return None
        rule = parse(text).get(kind)
        if rule is not None and rule.once:
            lines = text.splitlines()
            del lines[rule.line]
            self.path.write_text("".join(ln + "\n" for ln in lines))
        return rule

    def unlisted(self, path: str) -> bool:
        """True if the offer is to leave `path` out of its file list."""
        if self._take("UNLIST " + path) is None:
            return False
        log.warning("fault hook: leaving %s out of the offer", path)
        return True

    async def passes(self, kind: str) -> bool:
        """False if a message of this kind is to be dropped; waits first if it is delayed."""
        rule = self._take(kind)
        if rule is None:
            return True
        if rule.delay is None:
            log.warning("fault hook: dropping %s", kind)
            return False
        log.warning("fault hook: delaying %s by %.1f s", kind, rule.delay)
        await asyncio.sleep(rule.delay)
        return True
