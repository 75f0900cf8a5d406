"""The tools' side of the control socket: one JSON object per line each way.

A request is ``{"op": NAME, ...args}``; a reply is ``{"ok": true, ...}`` or
``{"ok": false, "error": "one line"}``. Streaming ops (mosrun's deputy) keep the connection.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from pymosix.config import control_socket_path
from pymosix.errors import NotRunningError, PymosixError

#: A reply line longer than this is a broken agent, not data (mps of thousands of jobs fits).
MAX_REPLY_BYTES = 16 * 1024 * 1024


class ControlClient:
    """A connection to one node agent's control socket."""

    def __init__(self, path: Path | None = None, timeout_s: float = 30.0) -> None:
        self.path = path or control_socket_path()
        self.timeout_s = timeout_s
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        try:
            self.sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError):
            self.sock.close()
            raise NotRunningError(
                f"no pymosix agent is running here (nothing answers on {self.path}); "
                "start one with 'pymosix node' or set PYMOSIX_SOCKET"
            ) from None
        except PermissionError:
            self.sock.close()
            raise NotRunningError(f"no permission to talk to the agent at {self.path}") from None
        self._buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, op: str, **args: Any) -> None:
        line = json.dumps({"op": op, **args}, separators=(",", ":")).encode() + b"\n"
        self.sock.sendall(line)

    def receive(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise PymosixError("the agent closed the connection without answering")
            self._buf += chunk
            if len(self._buf) > MAX_REPLY_BYTES:
                raise PymosixError("the agent sent an over-long reply")
        line, self._buf = self._buf.split(b"\n", 1)
        reply = json.loads(line)
        if not isinstance(reply, dict):
            raise PymosixError("the agent sent a reply that is not an object")
        return reply

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one request and return the reply; an error reply raises PymosixError."""
        self.send(op, **args)
        reply = self.receive()
        if not reply.get("ok"):
            raise PymosixError(str(reply.get("error", "the agent refused without a reason")))
        return reply


def call(op: str, path: Path | None = None, timeout_s: float = 30.0, **args: Any) -> dict[str, Any]:
    """One request on a fresh connection."""
    with ControlClient(path, timeout_s) as client:
        return client.call(op, **args)
