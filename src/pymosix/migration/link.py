"""Frames between a job's home (its deputy) and the node it runs on, over a Link.

A Link is either two in-process queues (the job runs at home) or an encrypted Channel to the
peer agent; the code on either end is the same. The frame kinds and what they carry:

  host -> home: OUT {fd, data}, EXIT {status, signal}, STATS {cpu, rss}, PAUSED, FLUSHED,
                MOVED {ok, node, error} (answer to MOVE)
  home -> host: IN {data}, EOF, SIGNAL {sig}, KILL, PAUSE, RESUME, FLUSH_ACK, MOVE {target}
  both ways: BEAT (liveness; home-host links and a target restoring, to its source)
  host -> home: ASK {move} -> VERDICT {move, committed} (lifecycle.py: home arbitrates)
  on a new connection: ATTACH {home_pid, node, move} -> COMMITTED | KILL (the restored job's
                host asks home to commit the move; it resumes the job only on COMMITTED),
                MIGRATE {meta, keys, offer_load} -> READY | FAILED {error};
                then PAGES {data}... PAGES_END both ways (migration/pages.py), the other
                image files as FILE {name, data, first}..., DONE {stdin, stdin_eof}
                -> RESTORED {pid} | FAILED {error};
                QUERY {what} -> REPLY {...} (a read-only question for the pool views, pymosix/pool.py)
  host -> home, a guest's checkpoint (migration/checkpoint.py): CKPT_MARK {id, keys, ...} (sent
                while the job is still stopped after the dump, behind all it wrote before),
                CKPT_FILE {id, name, data, first}..., CKPT_DONE {id, ok}
"""

from __future__ import annotations

import asyncio
from enum import IntEnum
from typing import Any, Protocol

from pymosix.errors import PymosixError
from pymosix.migration.channel import Channel


class Frame(IntEnum):
    OUT = 1
    EXIT = 2
    STATS = 3
    PAUSED = 4
    FLUSHED = 5
    MOVED = 6
    IN = 10
    EOF = 11
    SIGNAL = 12
    KILL = 13
    PAUSE = 14
    RESUME = 15
    FLUSH_ACK = 16
    MOVE = 17
    #: home -> host: mosrun has the job's output up to {o: [stdout, stderr]} (outlog.py).
    OUT_ACK = 18
    ATTACH = 20
    MIGRATE = 21
    FILE = 22
    DONE = 23
    RESTORED = 24
    FAILED = 25
    CONTROL = 26
    REPLY = 27
    READY = 28
    PAGES = 29
    PAGES_END = 30
    QUERY = 40
    #: Liveness, both ways on a home-host link; target -> source while it restores.
    BEAT = 50
    #: source -> home: did move {move} commit? home -> source: VERDICT {move, committed}.
    ASK = 51
    VERDICT = 52
    #: home -> a restored job's host, answer to ATTACH: the move committed, resume the job.
    COMMITTED = 53
    #: host -> home: a checkpoint of a guest (migration/checkpoint.py).
    CKPT_MARK = 60
    CKPT_FILE = 61
    CKPT_DONE = 62


class Link(Protocol):
    async def send(self, kind: int, payload: dict[str, Any]) -> None: ...

    async def recv(self) -> tuple[int, dict[str, Any]]: ...

    def close(self) -> None: ...

    async def end(self) -> None:
        """Close once the peer has had everything sent (the last word of a job)."""


#: Bytes a home-host channel buffers before its sender waits (a few output frames).
LINK_BUFFER = 2 * 1024 * 1024
#: How long a job's last frames may take to reach home before its host closes the link anyway.
LINGER_S = 30.0
#: Bytes of data a LocalLink holds one way before its sender waits (the job runs at home: this
#: is where a slow mosrun holds the job's output back, as TCP does for a remote host).
LOCAL_HIGH = 2 * 1024 * 1024


def _data_size(item: tuple[int, dict[str, Any]]) -> int:
    data = item[1].get("data")
    return len(data) if isinstance(data, (bytes, bytearray, memoryview)) else 0


class _Lane:
    """One direction of a LocalLink: its frames, and how many bytes of data they carry."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[int, dict[str, Any]] | None] = asyncio.Queue()
        self.bytes = 0
        self.room = asyncio.Event()
        self.room.set()
        self.closed = False

    def shut(self) -> None:
        self.closed = True
        self.room.set()
        self.queue.put_nowait(None)


class LocalLink:
    """One end of an in-process link; `pair()` makes both ends."""

    def __init__(self, inbox: _Lane, outbox: _Lane) -> None:
        self._inbox = inbox
        self._outbox = outbox
        self._closed = False

    @staticmethod
    def pair() -> tuple[LocalLink, LocalLink]:
        a, b = _Lane(), _Lane()
        return LocalLink(a, b), LocalLink(b, a)

    async def send(self, kind: int, payload: dict[str, Any]) -> None:
        lane = self._outbox
        while lane.bytes >= LOCAL_HIGH and not lane.closed and not self._closed:
            lane.room.clear()
            await lane.room.wait()
        if self._closed:
            raise EOFError("link closed")
        lane.bytes += _data_size((kind, payload))
        await lane.queue.put((kind, payload))

    async def recv(self) -> tuple[int, dict[str, Any]]:
        lane = self._inbox
        item = await lane.queue.get()
        if item is None:
            lane.queue.put_nowait(None)
            raise EOFError("link closed")
        lane.bytes -= _data_size(item)
        if lane.bytes < LOCAL_HIGH:
            lane.room.set()
        return item

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._outbox.shut()
            self._inbox.shut()

    async def end(self) -> None:
        self.close()  # what is queued stays readable


class ChannelLink:
    """A link over an encrypted channel to a peer agent."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        # A job's output goes in frames of up to 1 MiB: room for a few before send() waits, so
        # that the host is not woken for every 48 KiB that TCP takes (asyncio's default).
        if channel.stream.transport is not None:
            channel.stream.transport.set_write_buffer_limits(high=LINK_BUFFER)

    async def send(self, kind: int, payload: dict[str, Any]) -> None:
        try:
            await self.channel.send(kind, payload)
        except (ConnectionError, RuntimeError) as e:
            raise EOFError(f"link to node {self.channel.peer_id} broke: {e}") from None

    async def recv(self) -> tuple[int, dict[str, Any]]:
        return await self.channel.recv()

    def close(self) -> None:
        self.channel.close()

    async def end(self, wait_s: float = LINGER_S) -> None:
        """Half-close, then read (and drop) until the peer closes too, for at most wait_s.
        Closing with unread bytes here (a beat from home) makes the kernel reset the connection,
        and then the peer loses what it had not read yet: the job's last output, its exit."""
        transport = self.channel.stream.transport
        try:
            if transport is not None and not transport.is_closing():
                transport.write_eof()
                async with asyncio.timeout(wait_s):
                    while True:
                        await self.channel.recv()
        except (EOFError, TimeoutError, OSError, PymosixError):
            pass
        finally:
            self.channel.close()
