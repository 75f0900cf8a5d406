"""The agent's side of the control socket: JSON lines, one handler per op.

Components register ops; a handler gets the request and the connection and returns the reply
(``ok`` is added). A streaming handler (mosrun's deputy) keeps using the connection and returns
None when it is done. Bad input gets one error line back; the agent goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymosix.errors import PymosixError

log = logging.getLogger(__name__)

#: A request line longer than this is refused (stdin data travels in chunks well below it).
MAX_REQUEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PeerCred:
    """Who is on the other end of the control socket (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int


class ControlConnection:
    """One client connection: read requests, write replies or stream frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        sock: socket.socket = writer.get_extra_info("socket")
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
        self.peer = PeerCred(pid, uid, gid)

    async def read_request(self) -> dict[str, Any] | None:
        """The next request, or None at end of stream. Raises PymosixError on garbage."""
        try:
            line = await self.reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as e:
            if e.partial.strip():
                raise PymosixError("request not terminated by a newline") from None
            return None
        except asyncio.LimitOverrunError:
            raise PymosixError("request too long") from None
        try:
            req = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise PymosixError("request is not valid JSON") from None
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            raise PymosixError('request must be a JSON object with a string "op"')
        return req

    async def send(self, obj: dict[str, Any]) -> None:
        self.writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
        await self.writer.drain()


Handler = Callable[[dict[str, Any], ControlConnection], Awaitable[dict[str, Any] | None]]


class ControlServer:
    """A unix-socket server dispatching ops to registered handlers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handlers: dict[str, Handler] = {}
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def register(self, op: str, handler: Handler) -> None:
        if op in self._handlers:
            raise ValueError(f"control op {op!r} registered twice")
        self._handlers[op] = handler

    @property
    def ops(self) -> list[str]:
        return sorted(self._handlers)

    def handler(self, op: str) -> Handler:
        """The handler of `op`, for callers in the agent that act for a user (the web monitor)."""
        try:
            return self._handlers[op]
        except KeyError:
            raise PymosixError(f"unknown op {op!r} (known: {', '.join(self.ops)})") from None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=MAX_REQUEST_BYTES
        )
        # Any local user may ask (mosrun runs as the user); handlers check credentials.
        os.chmod(self.path, 0o666)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = ControlConnection(reader, writer)
        try:
            while True:
                try:
                    req = await conn.read_request()
                except PymosixError as e:
                    await conn.send({"ok": False, "error": str(e)})
                    break
                if req is None:
                    break
                handler = self._handlers.get(req["op"])
                if handler is None:
                    known = ", ".join(self.ops)
                    error = f"unknown op {req['op']!r} (known: {known})"
                    await conn.send({"ok": False, "error": error})
                    continue
                try:
                    reply = await handler(req, conn)
                except PymosixError as e:
                    await conn.send({"ok": False, "error": str(e)})
                    continue
                except (KeyError, TypeError, ValueError) as e:
                    await conn.send({"ok": False, "error": f"bad {req['op']} request: {e}"})
                    continue
                if reply is None:
                    break  # a streaming handler finished with the connection
                await conn.send({"ok": True, **reply})
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("control connection failed")
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
