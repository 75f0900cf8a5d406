"""mosrun's side of the output record (migration/outlog.py): it counts the bytes it wrote out,
in whole frames only, acks every ACK_BYTES when its agent asked for acks, and counts a gap home
told it of as had (and says so)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pymosix.cli.mosrun import Deputy
from pymosix.migration.stdio import ACK_BYTES, TO_AGENT, FrameReader, ctrl_frame, data_head
from pymosix.migration.stdio import parse_ctrl as parse


@dataclass
class FakeClient:
    """What Deputy takes of a ControlClient: the socket, and what was read past the reply."""

    sock: socket.socket
    _buf: bytes = b""
    path: str = ""


@pytest.fixture
def deputy(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Deputy, socket.socket]]:
    ours, agent = socket.socketpair()
    null = os.open(os.devnull, os.O_WRONLY)
    # The job's output goes to /dev/null, not to the test's own stdout.
    monkeypatch.setattr("pymosix.cli.mosrun._write_all", lambda fd, data: os.write(null, data))
    d = Deputy(FakeClient(ours), acks=True)  # type: ignore[arg-type]
    try:
        yield d, agent
    finally:
        for s in (ours, agent):
            s.close()
        os.close(null)


def _sent(agent: socket.socket) -> list[dict[str, object]]:
    agent.setblocking(False)
    reader = FrameReader(TO_AGENT)
    try:
        while True:
            data = agent.recv(65536)
            space = reader.space()
            space[: len(data)] = data
            reader.filled(len(data))
    except BlockingIOError:
        pass
    return [parse(p) for _, _, p in reader.frames()]


def test_an_ack_each_time_ack_bytes_more_came(deputy: tuple[Deputy, socket.socket]) -> None:
    d, agent = deputy
    chunk = b"x" * (ACK_BYTES // 4)
    for fd in (1, 2, 1):
        assert d._received(data_head(fd, len(chunk)) + chunk) is None
    assert _sent(agent) == []
    d._received(data_head(2, len(chunk)) + chunk)
    assert _sent(agent) == [{"t": "ack", "o": [2 * len(chunk), 2 * len(chunk)]}]


def test_a_frame_begun_and_not_finished_is_not_counted(
    deputy: tuple[Deputy, socket.socket],
) -> None:
    d, _ = deputy
    d._received(data_head(1, 10) + b"12345")
    assert d.got == {1: 0, 2: 0}
    d._received(b"67890")
    assert d.got == {1: 10, 2: 0}


def test_a_gap_home_tells_of_is_counted_and_said(
    deputy: tuple[Deputy, socket.socket], capsys: pytest.CaptureFixture[str]
) -> None:
    d, _ = deputy
    d._received(ctrl_frame({"t": "lost", "fd": 2, "n": 300}))
    assert d.got == {1: 0, 2: 300}
    assert capsys.readouterr().err == "mosrun: 300 bytes of the job's stderr were lost on the way\n"
    d._received(ctrl_frame({"t": "lost", "fd": 7, "n": 1}))  # not a stream it has: ignored
    assert d.got == {1: 0, 2: 300}
