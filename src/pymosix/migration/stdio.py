"""mosrun <-> agent after the `run` request is answered: binary frames, both directions.

Each frame is a 6-byte head, then its payload::

    kind (1 byte) | fd (1 byte) | length (4 bytes, big-endian) | payload

  DATA  raw bytes, no encoding: fd 1 or 2 (the job's stdout, stderr) to mosrun, fd 0 (stdin)
        to the agent. An empty DATA frame is refused (stdin's end is a control message).
  CTRL  one JSON object with a string "t": to mosrun exit {code, signal}, error {message},
        moved {node}; to the agent eof, sig {n}, ack {o: [stdout, stderr]} (the bytes mosrun
        has received so far, every ACK_BYTES, when the agent's reply said "acks"). fd is 0.

Base64 in JSON lines cost 20 times a pipe's time (issue 13); these frames cost a header. A frame
longer than its kind allows, an unknown kind or fd, or a control payload that is not a small JSON
object is refused with one line (StdioError). The codec is pure; the I/O is mosrun's and home's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import stat
import struct
from typing import TYPE_CHECKING, Any

from pymosix.errors import PymosixError
from pymosix.jsondepth import MAX_DEPTH, json_depth

if TYPE_CHECKING:
    import asyncio

#: The `run` reply's "stdio": what mosrun checks before it speaks frames (a stale agent has none).
STDIO_FRAMES = 1
HEAD = struct.Struct("!BBI")
DATA = 1
CTRL = 2
#: Largest DATA payload (what one read of a job's pipe, or of mosrun's stdin, may give).
MAX_DATA = 1024 * 1024
#: Largest CTRL payload: exit, error, moved, eof and sig are a few dozen bytes.
MAX_CTRL = 16 * 1024
#: One read of a job's stdout/stderr pipe on its host, and of mosrun's stdin: a whole widened
#: pipe (smaller reads cost more wakeups and per-frame work on every hop than copies cost).
CHUNK = 1024 * 1024
#: The socket to mosrun: its kernel buffer, and what home queues on it before it waits.
SOCKET_BYTES = 4 * 1024 * 1024
SOCKET_QUEUE = 2 * 1024 * 1024
#: The job's stdout/stderr pipes hold this much (Linux's pipe-max-size default): fewer wakeups.
PIPE_BYTES = 1024 * 1024
#: mosrun confirms what it received each time this much more came (migration/outlog.py): a
#: job's host keeps at most about this much beyond what is in flight, per job. Each ack costs
#: the three processes a wakeup: at 256 KiB, output at home ran 10 % slower.
ACK_BYTES = 4 * 1024 * 1024
#: What mosrun may send (stdin), and what the agent may send (stdout, stderr).
TO_AGENT = frozenset({0})
TO_MOSRUN = frozenset({1, 2})

Buffer = bytes | bytearray | memoryview


class StdioError(PymosixError):
    """A stdio frame that breaks the rules above (one line)."""


def data_head(fd: int, size: int) -> bytes:
    """The head of a DATA frame of `size` bytes (the payload goes out as it is, uncopied)."""
    if not 0 < size <= MAX_DATA:
        raise ValueError(f"a DATA frame holds 1 to {MAX_DATA} bytes, not {size}")
    return HEAD.pack(DATA, fd, size)


def ctrl_frame(msg: dict[str, Any]) -> bytes:
    body = json.dumps(msg, separators=(",", ":")).encode()
    if len(body) > MAX_CTRL:
        raise ValueError(f"control message of {len(body)} bytes is over {MAX_CTRL}")
    return HEAD.pack(CTRL, 0, len(body)) + body


def parse_head(head: Buffer, fds: frozenset[int]) -> tuple[int, int, int]:
    """(kind, fd, length) of a frame head; StdioError if it breaks the rules."""
    kind, fd, size = HEAD.unpack(head)
    if kind == DATA:
        if fd not in fds:
            raise StdioError(f"stdio frame for fd {fd}, which is not allowed here")
        if not 0 < size <= MAX_DATA:
            raise StdioError(f"stdio data frame of {size} bytes (1 to {MAX_DATA} allowed)")
    elif kind == CTRL:
        if fd != 0:
            raise StdioError(f"stdio control frame with fd {fd} (must be 0)")
        if size > MAX_CTRL:
            raise StdioError(f"stdio control frame of {size} bytes (over {MAX_CTRL})")
    else:
        raise StdioError(f"unknown stdio frame kind {kind} (not a mosrun of this version?)")
    return kind, fd, size


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def parse_ctrl(payload: Buffer) -> dict[str, Any]:
    """A control payload as an object with a string "t"; StdioError (one line) if it is not."""
    try:
        msg = json.loads(bytes(payload), parse_constant=_reject_constant)
    except RecursionError:
        raise StdioError("stdio control message nested too deeply") from None
    except (UnicodeDecodeError, ValueError):
        raise StdioError("stdio control message is not valid JSON") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
        raise StdioError('stdio control message must be a JSON object with a string "t"')
    if json_depth(msg) > MAX_DEPTH:
        raise StdioError(f"stdio control message nested too deeply (over {MAX_DEPTH} levels)")
    return msg


class FrameReader:
    """Frames out of a byte stream read in any pieces, into one buffer that is never resized:
    fill `space()` (recv_into), call `filled(n)`, take `frames()`. A frame's payload is a view
    into the buffer, valid until the next `space()`."""

    def __init__(self, fds: frozenset[int]) -> None:
        self.fds = fds
        self._buf = bytearray(HEAD.size + MAX_DATA)
        self._start = 0  # first byte not yet handed out
        self._end = 0  # first free byte

    def space(self) -> memoryview:
        """Where the next bytes go (never empty): what is not yet a whole frame moves first."""
        if self._start:
            rest = self._end - self._start
            self._buf[:rest] = self._buf[self._start : self._end]
            self._start, self._end = 0, rest
        return memoryview(self._buf)[self._end :]

    def filled(self, n: int) -> None:
        self._end += n

    def feed(self, data: Buffer) -> list[tuple[int, int, bytes]]:
        """Every whole frame `data` completes, payloads copied (for tests and fuzzing)."""
        out: list[tuple[int, int, bytes]] = []
        view = memoryview(data)
        while view:
            space = self.space()
            n = min(len(space), len(view))
            space[:n] = view[:n]
            view = view[n:]
            self.filled(n)
            out += [(k, fd, bytes(p)) for k, fd, p in self.frames()]
        return out

    def frames(self) -> list[tuple[int, int, memoryview]]:
        """The whole frames buffered; StdioError at the first one that breaks the rules."""
        out = []
        mv = memoryview(self._buf)
        while self._end - self._start >= HEAD.size:
            kind, fd, size = parse_head(mv[self._start : self._start + HEAD.size], self.fds)
            begin = self._start + HEAD.size
            if self._end - begin < size:
                break
            out.append((kind, fd, mv[begin : begin + size]))
            self._start = begin + size
        return out

    @property
    def partial(self) -> bool:
        """Whether a frame was begun and not finished (the stream must not end here)."""
        return self._end > self._start


def widen_pipe(fd: int) -> None:
    """Let a job's output pipe hold PIPE_BYTES: each wakeup of its reader takes more."""
    # A lower pipe-max-size, or the user's pipe quota: the default size still works.
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)


#: Linux's SO_SNDBUFFORCE (root may pass net.core.wmem_max); Python names it on few builds.
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


def widen_socket(writer: asyncio.StreamWriter) -> None:
    """Room for a few frames in the socket to mosrun and in the agent's buffer before it waits:
    fewer wakeups of mosrun and of the agent per megabyte (the defaults are about 200 KiB and
    64 KiB)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        for opt in (_SO_SNDBUFFORCE, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BYTES)
                break
    writer.transport.set_write_buffer_limits(high=SOCKET_QUEUE)


def widen_output(fd: int) -> None:
    """mosrun's stdout or stderr, if a pipe, holds PIPE_BYTES too (it is written in big pieces)."""
    with contextlib.suppress(OSError):
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            widen_pipe(fd)


def stdio_pipes() -> tuple[int, int, int, int, int, int]:
    """(in_r, in_w, out_r, out_w, err_r, err_w) for a job, its output pipes widened."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    widen_pipe(out_r)
    widen_pipe(err_r)
    return in_r, in_w, out_r, out_w, err_r, err_w
