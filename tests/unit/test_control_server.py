"""The control socket against hostile local input: budgets, caps, idle timeouts, one-line errors."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from pymosix.config import root_socket_path
from pymosix.control_client import ControlClient
from pymosix.control_server import (
    MAX_REQUEST_BYTES,
    Budget,
    ControlConnection,
    ControlServer,
    Limits,
    parse_request,
)
from pymosix.errors import PymosixError
from pymosix.jsondepth import MAX_DEPTH


def test_budget_per_uid_total_and_root_apart() -> None:
    b = Budget(Limits(connections_per_uid=2, connections=3, requests_per_uid=1, root_connections=2))
    assert b.open(1000) is None
    assert b.open(1000) is None
    assert "uid 1000 holds 2" in (b.open(1000) or "")
    assert b.open(1001) is None
    assert "local users hold 3" in (b.open(1002) or "")
    assert b.open(0) is None  # root is not counted with the others
    assert b.open(0) is None
    assert b.open(0) is not None
    b.close(1000)
    assert b.open(1002) is None
    assert b.start_request(1000) is None
    assert "requests in flight" in (b.start_request(1000) or "")
    b.end_request(1000)
    assert b.start_request(1000) is None
    assert b.refused == 4


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b'{"op":"x","v":Infinity}', "Infinity or NaN"),
        (b'{"op":"x","v":NaN}', "Infinity or NaN"),
        (b'{"op":"x","v":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not valid JSON|nested"),
        (b'{"op":"x","v":' + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b"}", "nested"),
        (b'{"op":"x","v":' + b"9" * 5000 + b"}", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1]", "JSON object"),
        (b'{"op":1}', "string"),
        (b" " * (MAX_REQUEST_BYTES + 1), "too long"),
    ],
)
def test_bad_requests_are_one_line(line: bytes, error: str) -> None:
    with pytest.raises(PymosixError, match=error) as e:
        parse_request(line)
    assert "\n" not in str(e.value)


def test_root_socket_path() -> None:
    assert root_socket_path(Path("/run/pymosix/control.sock")) == Path(
        "/run/pymosix/control.root.sock"
    )


def _status(path: Path) -> dict[str, Any]:
    with ControlClient(path, 5.0) as c:
        return c.call("status")


def _ask(path: Path, line: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(line)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    reply: dict[str, Any] = json.loads(data)
    return reply


def test_server_answers_garbage_with_one_line_and_logs_no_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        srv = ControlServer(tmp_path / "control.sock", Limits(idle_timeout_s=0.3))

        async def echo(req: dict[str, Any], conn: ControlConnection) -> dict[str, Any]:
            return {"uid": conn.peer.uid}

        srv.register("echo", echo)
        await srv.start()
        try:
            assert (tmp_path / "control.sock").stat().st_mode & 0o777 == 0o666
            assert (tmp_path / "control.root.sock").stat().st_mode & 0o777 == 0o600
            loop = asyncio.get_running_loop()
            for line, want in [
                (b'{"op":"echo","v":Infinity}\n', "Infinity"),
                (b'{"op":"echo","v":' + b"[" * 5000 + b"]" * 5000 + b"}\n", "nested|JSON"),
                (b'{"op":"echo"}\n', None),
            ]:
                r = await loop.run_in_executor(None, _ask, tmp_path / "control.sock", line)
                if want is None:
                    assert r == {"ok": True, "uid": 0}
                else:
                    assert r["ok"] is False
            # Idle: no complete request in time closes the connection with a reason.
            r = await loop.run_in_executor(None, _ask, tmp_path / "control.sock", b'{"op"')
            assert "no complete request" in r["error"]
            # The client prefers root's own socket, and speaks the protocol.
            c = await loop.run_in_executor(None, ControlClient, tmp_path / "control.sock", 5.0)
            try:
                assert c.sock.getpeername() == str(tmp_path / "control.root.sock")
                assert (await loop.run_in_executor(None, c.call, "echo"))["uid"] == 0
            finally:
                c.close()
        finally:
            await srv.stop()
        assert not (tmp_path / "control.root.sock").exists()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(main())
    assert not [r for r in caplog.records if r.exc_info]


def test_over_budget_connections_are_refused_with_one_line(tmp_path: Path) -> None:
    async def main() -> None:
        srv = ControlServer(tmp_path / "control.sock", Limits(root_connections=3))
        await srv.start()
        held = []
        try:
            loop = asyncio.get_running_loop()
            for _ in range(3):
                s = socket.socket(socket.AF_UNIX)
                s.connect(str(tmp_path / "control.sock"))
                held.append(s)
            await asyncio.sleep(0.2)
            assert srv.budget.connections[0] == 3
            with pytest.raises(PymosixError, match="root holds 3 control connections"):
                await loop.run_in_executor(None, _status, tmp_path / "control.sock")
            assert srv.budget.refused >= 1
            for s in held:
                s.close()
            await asyncio.sleep(0.2)
            assert srv.budget.connections[0] == 0
        finally:
            for s in held:
                s.close()
            await srv.stop()

    asyncio.run(main())


def test_a_full_queue_is_one_line_for_the_client_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(0)  # an agent that accepts nothing: its queue fills at once
    fillers: list[socket.socket] = []
    try:
        while True:
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            fillers.append(s)
            try:
                s.connect(str(path))
            except BlockingIOError:
                break
        with pytest.raises(PymosixError, match="not taking connections") as e:
            ControlClient(path, timeout_s=0.3)
        assert "\n" not in str(e.value)
    finally:
        for s in fillers:
            s.close()
        listener.close()
