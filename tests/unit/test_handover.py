"""Home keeps serving the link a job left (migration/handover.py): the old host's ASK gets the
move's verdict and home's beats go on until the old host closes the link."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pymosix.migration.faults import Faults
from pymosix.migration.handover import serve_left
from pymosix.migration.lifecycle import Arbiter
from pymosix.migration.link import Frame, LocalLink


def test_the_node_a_job_left_hears_the_commit_and_beats_until_it_closes(tmp_path: Path) -> None:
    async def main() -> list[int]:
        arbiter = Arbiter()
        assert arbiter.attach("m1")  # the target's ATTACH committed the move
        host, home = LocalLink.pair()
        serving = asyncio.create_task(
            serve_left(home, arbiter, Faults(tmp_path / "faults"), 7, 0.05, 2.0)
        )
        await host.send(Frame.BEAT, {})
        await host.send(Frame.ASK, {"move": "m1"})
        kinds: list[int] = []
        async with asyncio.timeout(5):
            while Frame.VERDICT not in kinds or kinds.count(Frame.BEAT) < 2:
                kind, p = await host.recv()
                kinds.append(kind)
                if kind == Frame.VERDICT:
                    assert p == {"move": "m1", "committed": True}
        host.close()
        async with asyncio.timeout(5):
            await serving  # ends once the old host closed its end
        return kinds

    kinds = asyncio.run(main())
    assert kinds.count(Frame.VERDICT) == 1


def test_an_ask_for_a_move_nobody_committed_aborts_it_and_a_silent_link_is_closed(
    tmp_path: Path,
) -> None:
    async def main() -> bool:
        arbiter = Arbiter()
        host, home = LocalLink.pair()
        serving = asyncio.create_task(
            serve_left(home, arbiter, Faults(tmp_path / "faults"), 7, 0.05, 0.3)
        )
        await host.send(Frame.ASK, {"move": "m2"})
        async with asyncio.timeout(5):
            while (got := await host.recv())[0] != Frame.VERDICT:
                pass
            await serving  # the host says nothing more: given up after 0.3 s
        assert not arbiter.attach("m2")  # aborted by the ASK: a late ATTACH is refused
        return bool(got[1]["committed"])

    assert asyncio.run(main()) is False
