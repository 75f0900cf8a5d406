"""The TCP connection under a migration channel: length-prefixed frames received straight into
buffers of their own size.

asyncio's StreamReader copies every byte three or four times (into its buffer, out of it, and a
memmove of the rest per read); with images of gigabytes that was most of a migration's time. Here
a frame's body is read by the kernel into the bytearray that is handed to the reader: no copy. The
handshake before the frames (fixed-size messages) goes through a small buffer.

FrameStream is also the writer: write() and drain() with the transport's flow control.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from pymosix.errors import DecodeError

HEAD_BYTES = 4
#: Frames read ahead of the reader before the socket is paused.
READ_AHEAD = 4
_SCRATCH = 64 * 1024
#: Bodies above this size are read into recycled buffers: a fresh megabyte costs page faults.
_POOLED = 64 * 1024
_POOL_MAX = READ_AHEAD + 2


class FrameStream(asyncio.BufferedProtocol):
    """One connection: raw reads for a handshake, then whole frames (head, body)."""

    def __init__(self, check_length: Callable[[bytes], int]) -> None:
        #: Turns a 4-byte head into the body's length; raises DecodeError when out of bounds.
        self._check_length = check_length
        self.transport: asyncio.Transport | None = None
        self._raw = bytearray()
        self._framing = False
        self._head = bytearray(HEAD_BYTES)
        self._body: bytearray | None = None
        self._body_len = 0
        self._pos = 0
        self._pool: list[bytearray] = []
        self._frames: deque[tuple[bytes, memoryview]] = deque()
        self._scratch = bytearray(_SCRATCH)
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._error: Exception | None = None
        self._read_paused = False
        self._write_paused = False
        self._drainers: list[asyncio.Future[None]] = []
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # --- protocol callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._framing and self._body is not None:
            return memoryview(self._body)[self._pos : self._body_len]
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        if self._framing and self._body is not None:
            self._pos += nbytes
            if self._pos == self._body_len:
                self._complete()
        else:
            self._feed(memoryview(self._scratch)[:nbytes])
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._wake()
        for d in self._drainers:
            if not d.done():
                d.set_exception(ConnectionResetError("connection lost"))
        self._drainers.clear()
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        for d in self._drainers:
            if not d.done():
                d.set_result(None)
        self._drainers.clear()

    # --- parsing -----------------------------------------------------------------------------

    def _feed(self, data: memoryview) -> None:
        i = 0
        while i < len(data) and self._error is None:
            if not self._framing:
                self._raw += data[i:]
                return
            if self._body is None:
                take = min(HEAD_BYTES - self._pos, len(data) - i)
                self._head[self._pos : self._pos + take] = data[i : i + take]
                self._pos += take
                i += take
                if self._pos == HEAD_BYTES:
                    try:
                        length = self._check_length(bytes(self._head))
                    except DecodeError as e:
                        self._error = e
                        if self.transport is not None:
                            self.transport.close()
                        return
                    self._body, self._body_len, self._pos = self._buffer(length), length, 0
            else:
                take = min(self._body_len - self._pos, len(data) - i)
                self._body[self._pos : self._pos + take] = data[i : i + take]
                self._pos += take
                i += take
                if self._pos == self._body_len:
                    self._complete()

    def _buffer(self, length: int) -> bytearray:
        if length > _POOLED:
            for i, buf in enumerate(self._pool):
                if len(buf) >= length:
                    return self._pool.pop(i)
        return bytearray(length)

    def release(self, body: memoryview) -> None:
        """The reader is done with a frame's body: its buffer can take another frame."""
        buf = body.obj
        body.release()
        if isinstance(buf, bytearray) and len(buf) > _POOLED and len(self._pool) < _POOL_MAX:
            self._pool.append(buf)

    def _complete(self) -> None:
        assert self._body is not None
        self._frames.append((bytes(self._head), memoryview(self._body)[: self._body_len]))
        self._body, self._pos = None, 0
        if len(self._frames) >= READ_AHEAD and self.transport is not None:
            self.transport.pause_reading()
            self._read_paused = True

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # --- for the channel ---------------------------------------------------------------------

    async def read_exactly(self, n: int) -> bytes:
        """n handshake bytes; EOFError if the connection ends first."""
        while len(self._raw) < n:
            if self._eof:
                raise EOFError("connection closed")
            await self._wait()
        out = bytes(self._raw[:n])
        del self._raw[:n]
        return out

    def start_frames(self) -> None:
        """The handshake is over: what follows are frames (bytes already read included)."""
        self._framing = True
        rest, self._raw = self._raw, bytearray()
        self._feed(memoryview(rest))

    async def read_frame(self) -> tuple[bytes, memoryview]:
        """(head, body) of the next frame; EOFError at the end of the connection, DecodeError
        if the peer sent an impossible length. Hand the body back with release() when done."""
        while not self._frames:
            if self._error is not None:
                raise self._error
            if self._eof:
                raise EOFError("channel closed")
            await self._wait()
        frame = self._frames.popleft()
        if self._read_paused and len(self._frames) < READ_AHEAD // 2 and self.transport:
            self._read_paused = False
            self.transport.resume_reading()
        return frame

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("connection closed")
        self.transport.write(data)

    async def drain(self) -> None:
        if self.transport is None or self.transport.is_closing():
            # Give a pending connection_lost a chance to run, then report the loss.
            await asyncio.sleep(0)
            raise ConnectionResetError("connection closed")
        if self._write_paused:
            d = asyncio.get_running_loop().create_future()
            self._drainers.append(d)
            await d

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)


async def connect(host: str, port: int, check_length: Callable[[bytes], int]) -> FrameStream:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: FrameStream(check_length), host, port)
    return proto


async def listen(
    host: str,
    port: int,
    check_length: Callable[[bytes], int],
    on_stream: Callable[[FrameStream], Coroutine[Any, Any, None]],
) -> asyncio.Server:
    """Serve; on_stream runs in a task of its own for each connection, which it owns: it may
    keep the stream open after it returns (a job's link home), or close it."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    class _Accepted(FrameStream):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            task = loop.create_task(on_stream(self))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    return await loop.create_server(lambda: _Accepted(check_length), host, port)
