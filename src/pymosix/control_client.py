"""The tools' side of the control socket: one JSON object per line each way.

A request is ``{"op": NAME, ...args}``; a reply is ``{"ok": true, ...}`` or
``{"ok": false, "error": "one line"}``. Streaming ops (mosrun's deputy) keep the connection.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from pymosix.config import control_socket_path, root_socket_path
from pymosix.errors import NotRunningError, PymosixError

#: A reply line longer than this is a broken agent, not data (mps of thousands of jobs fits).
MAX_REPLY_BYTES = 16 * 1024 * 1024
#: How long a connect waits for room in a full queue before it gives up.
CONNECT_WAIT_S = 10.0


class ControlClient:
    """A connection to one node agent's control socket."""

    def __init__(self, path: Path | None = None, timeout_s: float = 30.0) -> None:
        self.path = path or control_socket_path()
        self.timeout_s = timeout_s
        # Root uses its own socket when there is one: no other user can fill its queue.
        root = root_socket_path(self.path)
        if os.geteuid() == 0 and root.exists():
            try:
                self.sock = self._connect(root)
                self._buf = b""
                return
            except OSError:
                pass  # an agent of an older version, or going away: try the public socket
        try:
            self.sock = self._connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunningError(
                f"no pymosix agent is running here (nothing answers on {self.path}); "
                "start one with 'pymosix node' or set PYMOSIX_SOCKET"
            ) from None
        except PermissionError:
            raise NotRunningError(f"no permission to talk to the agent at {self.path}") from None
        except BlockingIOError:
            raise PymosixError(
                f"the agent at {self.path} is not taking connections (its queue stayed full "
                f"for {min(timeout_s, CONNECT_WAIT_S):g} s: too many clients); try again later"
            ) from None
        except OSError as e:
            raise PymosixError(f"cannot talk to the agent at {self.path}: {e.strerror}") from None
        self._buf = b""

    def _connect(self, path: Path) -> socket.socket:
        """Connect, waiting a little while the agent's queue is full (EAGAIN on unix sockets)."""
        deadline = time.monotonic() + min(self.timeout_s, CONNECT_WAIT_S)
        pause = 0.005
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout_s)
            try:
                sock.connect(str(path))
                return sock
            except BlockingIOError:
                sock.close()
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.2)
            except BaseException:
                sock.close()
                raise

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, op: str, **args: Any) -> None:
        line = json.dumps({"op": op, **args}, separators=(",", ":")).encode() + b"\n"
        try:
            self.sock.sendall(line)
        except TimeoutError:
            raise PymosixError(f"the agent at {self.path} is not reading requests") from None
        except BrokenPipeError:
            pass  # it closed already: what it said before closing (a refusal) is read next

    def receive(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise PymosixError(
                    f"the agent at {self.path} did not answer within {self.timeout_s:g} s"
                ) from None
            except ConnectionError as e:
                raise PymosixError(f"the agent closed the connection: {e.strerror}") from None
            if not chunk:
                raise PymosixError("the agent closed the connection without answering")
            self._buf += chunk
            if len(self._buf) > MAX_REPLY_BYTES:
                raise PymosixError("the agent sent an over-long reply")
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            reply = json.loads(line)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise PymosixError("the agent sent a reply that is not JSON") from None
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
