"""The fault hook's file (migration/faults.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pymosix.migration.faults import Faults, Rule, parse


def test_parse_reads_drops_delays_and_once() -> None:
    rules = parse("drop restored\ndelay ATTACH 0.5 once\nbogus\ndelay ASK x\ndrop RESTORED once\n")
    assert rules == {
        "RESTORED": Rule(0, "RESTORED", None, False),
        "ATTACH": Rule(1, "ATTACH", 0.5, True),
    }


def test_no_file_passes_everything(tmp_path: Path) -> None:
    assert asyncio.run(Faults(tmp_path / "faults").passes("RESTORED"))


def test_a_drop_holds_and_a_once_rule_goes_after_one_message(tmp_path: Path) -> None:
    path = tmp_path / "faults"
    path.write_text("drop DONE\ndrop COMMITTED once\ndelay ASK 0.2\n")
    faults = Faults(path)

    async def run() -> list[bool]:
        return [
            await faults.passes("COMMITTED"),
            await faults.passes("COMMITTED"),
            await faults.passes("DONE"),
            await faults.passes("DONE"),
            await faults.passes("VERDICT"),
        ]

    assert asyncio.run(run()) == [False, True, False, False, True]
    assert path.read_text() == "drop DONE\ndelay ASK 0.2\n"
    t0 = time.monotonic()
    assert asyncio.run(faults.passes("ASK"))
    assert time.monotonic() - t0 >= 0.2
