"""The bulk path of a migration: frames read into their own buffers whatever the read sizes, raw
frames of data, and the page relay that carries CRIU's page-server stream both ways."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct

import pytest

from pymosix.errors import DecodeError, MigrationError
from pymosix.migration.channel import (
    RAW,
    Channel,
    frame_length,
    open_channel,
    serve_channels,
)
from pymosix.migration.framestream import FrameStream
from pymosix.migration.link import Frame
from pymosix.migration.pages import page_socketpair, relay_pages

KEY = bytes(range(32))


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.closed = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def deliver(stream: FrameStream, data: bytes, rng: random.Random) -> None:
    """Hand data to the protocol the way the event loop does, in reads of random sizes."""
    i = 0
    while i < len(data):
        buf = stream.get_buffer(-1)
        n = min(len(buf), rng.randint(1, 200_000), len(data) - i)
        buf[:n] = data[i : i + n]
        stream.buffer_updated(n)
        i += n


def framed(body: bytes) -> bytes:
    return struct.pack("!I", len(body)) + body


async def test_frames_arrive_whole_whatever_the_read_sizes() -> None:
    rng = random.Random(7)
    stream = FrameStream(frame_length)
    transport = FakeTransport()
    stream.connection_made(transport)
    bodies = [os.urandom(n) for n in (17, 70_000, 1_000_000, 16 + 1, 300_000)]
    # Handshake bytes first, then frames that may already be in the same read.
    deliver(stream, b"HELLO" + framed(bodies[0]), rng)
    assert await stream.read_exactly(5) == b"HELLO"
    stream.start_frames()
    deliver(stream, b"".join(framed(b) for b in bodies[1:]), rng)
    assert transport.paused, "reading pauses while frames wait for the reader"
    for body in bodies:
        head, got = await stream.read_frame()
        assert struct.unpack("!I", head)[0] == len(body)
        assert bytes(got) == body
        stream.release(got)
    assert not transport.paused
    stream.eof_received()
    with pytest.raises(EOFError):
        await stream.read_frame()


async def test_an_impossible_length_ends_the_stream() -> None:
    stream = FrameStream(frame_length)
    transport = FakeTransport()
    stream.connection_made(transport)
    stream.start_frames()
    deliver(stream, struct.pack("!I", 1 << 30) + b"x" * 10, random.Random(1))
    with pytest.raises(DecodeError):
        await stream.read_frame()
    assert transport.closed


async def channel_pair() -> tuple[Channel, Channel, asyncio.Server]:
    accepted: asyncio.Queue[Channel] = asyncio.Queue()
    done = asyncio.Event()

    async def handler(ch: Channel) -> None:
        await accepted.put(ch)
        await done.wait()

    server = await serve_channels("127.0.0.1", 0, KEY, 2, handler)
    port = server.sockets[0].getsockname()[1]
    client = await asyncio.wait_for(open_channel("127.0.0.1", port, KEY, 1), 5)
    return client, await asyncio.wait_for(accepted.get(), 5), server


async def test_raw_frames_big_and_small() -> None:
    a, b, server = await channel_pair()
    try:
        for size in (0, 10, 65_000, 1 << 20):
            data = os.urandom(size)
            await a.send_plaintext(bytes([Frame.PAGES | RAW]) + data)
            kind, p = await asyncio.wait_for(b.recv(), 5)
            assert kind == Frame.PAGES
            assert bytes(p["data"]) == data
        await a.send(Frame.DONE, {"stdin": b"abc"})
        assert await asyncio.wait_for(b.recv(), 5) == (Frame.DONE, {"stdin": b"abc"})
    finally:
        await a.aclose()
        await b.aclose()
        server.close()


def criu_side(sock: socket.socket, send: bytes, expect: int) -> bytes:
    """Plays one CRIU: writes its stream, ends it, and reads what the other CRIU said."""
    sock.setblocking(True)
    sock.sendall(send)
    sock.shutdown(socket.SHUT_WR)
    got = bytearray()
    while len(got) <= expect:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        got += chunk
    sock.close()
    return bytes(got)


async def test_relay_carries_both_directions_byte_for_byte() -> None:
    a, b, server = await channel_pair()
    dumper, dumper_ours = page_socketpair()
    pager, pager_ours = page_socketpair()
    pages = os.urandom(5 * 1024 * 1024 + 123)
    answers = os.urandom(4096)
    try:
        side_a = asyncio.to_thread(criu_side, dumper, pages, len(answers))
        side_b = asyncio.to_thread(criu_side, pager, answers, len(pages))
        got_a, got_b, in_a, in_b = await asyncio.wait_for(
            asyncio.gather(
                side_a,
                side_b,
                relay_pages(a, dumper_ours, limit=1 << 20),
                relay_pages(b, pager_ours, limit=1 << 30),
            ),
            30,
        )
        assert got_b == pages
        assert got_a == answers
        assert (in_a, in_b) == (len(answers), len(pages))
        # The channel goes on after the pages: the rest of the image follows on it.
        await a.send(Frame.DONE, {})
        assert (await asyncio.wait_for(b.recv(), 5))[0] == Frame.DONE
    finally:
        await a.aclose()
        await b.aclose()
        server.close()


async def test_relay_stops_at_a_failure_or_too_many_pages() -> None:
    a, b, server = await channel_pair()
    criu_ends = []
    try:
        criu_end, ours = page_socketpair()
        criu_ends.append(criu_end)
        await a.send(Frame.FAILED, {"error": "target said no"})
        with pytest.raises(MigrationError, match="target said no"):
            await asyncio.wait_for(relay_pages(b, ours, limit=1 << 20), 5)
        assert ours.fileno() == -1, "the relay closes its socket"

        criu_end, ours = page_socketpair()
        criu_ends.append(criu_end)
        await a.send_plaintext(bytes([Frame.PAGES | RAW]) + b"x" * 2000)
        with pytest.raises(MigrationError, match="more than"):
            await asyncio.wait_for(relay_pages(b, ours, limit=1000), 5)
    finally:
        for s in criu_ends:
            s.close()
        await a.aclose()
        await b.aclose()
        server.close()
