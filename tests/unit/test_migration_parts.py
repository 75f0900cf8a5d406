"""Pure and near-pure parts of migration: mosrun's options, links,
the job metadata that travels, and the control socket's handling of bad input."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from pymosix.cli.mosrun import exit_status, parse_args, request
from pymosix.control_server import ControlConnection, ControlServer
from pymosix.errors import PymosixError
from pymosix.migration.lifecycle import JobMeta
from pymosix.migration.link import LOCAL_HIGH, Frame, LocalLink


@pytest.mark.parametrize(
    ("args", "where", "home", "nodes", "lock"),
    [
        pytest.param(["perl", "x.pl"], None, False, None, False, id="plain-is-free"),
        pytest.param(["-h", "cmd"], None, True, None, True, id="home-locks"),
        pytest.param(["-h", "-l", "cmd"], None, True, None, False, id="home-unlocked"),
        pytest.param(["-0x640c", "cmd"], 0x640C, False, None, True, id="hex-node"),
        pytest.param(["-25612", "cmd"], 25612, False, None, True, id="decimal-node"),
        pytest.param(["-192.168.100.12", "cmd"], 0x640C, False, None, True, id="ip-node"),
        pytest.param(
            ["-j0x640b,0x640c", "-F", "cmd"], None, False, [0x640B, 0x640C], True, id="list"
        ),
        pytest.param(["-L", "cmd", "-h"], None, False, None, True, id="options-stop-at-command"),
    ],
)
def test_mosrun_options(
    args: list[str], where: int | None, home: bool, nodes: list[int] | None, lock: bool
) -> None:
    o = parse_args(args)
    req = request(o)
    assert (o.where, o.home, o.nodes, req["lock"]) == (where, home, nodes, lock)
    assert o.argv[0] in ("perl", "cmd")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param([], "no command", id="empty"),
        pytest.param(["-zq9", "cmd"], "unknown option or node -zq9", id="unknown"),
        pytest.param(["-jhome", "cmd"], "give node ids", id="list-home"),
        pytest.param(["-j", "cmd"], "give node ids", id="list-empty"),
    ],
)
def test_mosrun_bad_options(args: list[str], message: str) -> None:
    with pytest.raises(PymosixError, match=message):
        parse_args(args)


def test_exit_status_like_a_shell() -> None:
    assert exit_status({"code": 7, "signal": None}) == 7
    assert exit_status({"code": None, "signal": 15}) == 143


def test_job_meta_round_trip() -> None:
    meta = JobMeta(123, 0x640B, 1000, ["perl", "x"], 1.5, 2, True, [0x640B, 0x640C])
    assert JobMeta.from_wire(meta.to_wire()) == meta


async def test_a_local_link_holds_its_sender_back_past_its_bound() -> None:
    """A slow reader at home (mosrun) must not make the agent queue the job's output unbounded."""
    a, b = LocalLink.pair()
    chunk = b"x" * (256 * 1024)
    for _ in range(LOCAL_HIGH // len(chunk)):
        await asyncio.wait_for(a.send(Frame.OUT, {"fd": 1, "data": chunk}), 1)
    blocked = asyncio.ensure_future(a.send(Frame.OUT, {"fd": 1, "data": chunk}))
    for _ in range(10):  # the loop runs it as far as it can go
        await asyncio.sleep(0)
    assert not blocked.done(), "the sender waits while the link holds LOCAL_HIGH bytes"
    await b.recv()
    await asyncio.wait_for(blocked, 1)
    b.close()  # a sender waiting on a closed link is let go
    await asyncio.wait_for(a.send(Frame.OUT, {"fd": 1, "data": chunk}), 1)


async def test_local_link_order_and_close() -> None:
    a, b = LocalLink.pair()
    await a.send(Frame.OUT, {"n": 1})
    await a.send(Frame.EXIT, {"n": 2})
    a.close()
    assert await b.recv() == (Frame.OUT, {"n": 1})
    assert await b.recv() == (Frame.EXIT, {"n": 2})
    with pytest.raises(EOFError):
        await b.recv()
    with pytest.raises(EOFError):
        await a.send(Frame.IN, {})


async def test_control_server_rejects_bad_input_and_goes_on(tmp_path: Path) -> None:
    server = ControlServer(tmp_path / "control.sock")

    async def echo(req: dict[str, object], conn: ControlConnection) -> dict[str, object]:
        if req.get("boom"):
            raise PymosixError("refused, with a reason")
        return {"echo": req.get("x"), "uid": conn.peer.uid}

    server.register("echo", echo)
    await server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "control.sock"))

        async def ask(line: bytes) -> dict[str, object]:
            writer.write(line)
            await writer.drain()
            reply: dict[str, object] = json.loads(await reader.readline())
            return reply

        assert await ask(b'{"op":"echo","x":1}\n') == {"ok": True, "echo": 1, "uid": os.getuid()}
        assert (await ask(b'{"op":"nope"}\n'))["error"] == "unknown op 'nope' (known: echo)"
        assert (await ask(b'{"op":"echo","boom":true}\n'))["error"] == "refused, with a reason"
        assert await ask(b'{"op":"echo","x":2}\n') == {"ok": True, "echo": 2, "uid": os.getuid()}
        assert (await ask(b"this is not json\n"))["error"] == "request is not valid JSON"
        writer.close()
    finally:
        await server.stop()
