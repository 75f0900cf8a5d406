"""The agent's side of the control socket: JSON lines, one handler per op (a job's stdio, once
`run` is answered, travels in binary frames: migration/stdio.py).

Components register ops; a handler gets the request and the connection and returns the reply
(``ok`` is added). A streaming handler (mosrun's deputy) keeps using the connection and returns
None when it is done. Bad input gets one error line back; the agent goes on.

Local users share it, none can starve it: each non-root uid may hold so many connections and
requests in flight, all of them together so many connections, a connection idle too long is
closed, a request is capped in size and nesting. Root has a socket of its own beside the public
one (``control.root.sock``, mode 0600), whose queue no other user can fill, and a budget of its
own. Connections are accepted here, not by asyncio's server, so that one over its budget is
refused with one line before it costs anything, and running out of descriptors is one warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import socket
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymosix.config import root_socket_path
from pymosix.errors import PymosixError
from pymosix.jsondepth import MAX_DEPTH, json_depth

log = logging.getLogger(__name__)

#: A request line longer than this is refused (a run request carries the caller's environment;
#: mosrun's stdio, once the job runs, is framed apart: migration/stdio.py).
MAX_REQUEST_BYTES = 256 * 1024
#: Connections waiting in the kernel to be accepted, per socket.
BACKLOG = 128
#: Connections accepted per wakeup, so that a flood cannot hold the event loop.
ACCEPT_BATCH = 64
#: How often one kind of refusal is logged, at most.
WARN_EVERY_S = 60.0
#: A stopping agent waits this long for each connection's unsent bytes to go (a mosrun that
#: does not read them holds them), then drops them: the jobs' output among them is kept for
#: the next agent by position (migration/spool.py) and sent again.
CLOSE_S = 1.0


@dataclass(frozen=True, slots=True)
class Limits:
    """What local users may hold on the control socket (NodeConfig's control_* settings)."""

    connections_per_uid: int = 256
    connections: int = 1024
    requests_per_uid: int = 256
    idle_timeout_s: float = 60.0
    #: Root's own budget, apart from everyone else's.
    root_connections: int = 1024


class Budget:
    """Connections and requests in flight per uid, against Limits (pure)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.connections: Counter[int] = Counter()
        self.requests: Counter[int] = Counter()
        self.refused = 0

    def open(self, uid: int) -> str | None:
        """Take a connection for `uid`, or the reason it is refused."""
        lim = self.limits
        if uid == 0:
            if self.connections[0] >= lim.root_connections:
                return self._refuse(f"root holds {lim.root_connections} control connections")
        elif self.connections[uid] >= lim.connections_per_uid:
            return self._refuse(
                f"uid {uid} holds {lim.connections_per_uid} control connections (the limit "
                "per user, control_max_connections_per_uid); close some and try again"
            )
        elif sum(n for u, n in self.connections.items() if u != 0) >= lim.connections:
            return self._refuse(
                f"local users hold {lim.connections} control connections (the limit, "
                "control_max_connections); try again later"
            )
        self.connections[uid] += 1
        return None

    def close(self, uid: int) -> None:
        _drop(self.connections, uid)

    def start_request(self, uid: int) -> str | None:
        if uid != 0 and self.requests[uid] >= self.limits.requests_per_uid:
            return self._refuse(
                f"uid {uid} has {self.limits.requests_per_uid} requests in flight (the limit "
                "per user, control_max_requests_per_uid); wait for some to finish"
            )
        self.requests[uid] += 1
        return None

    def end_request(self, uid: int) -> None:
        _drop(self.requests, uid)

    def _refuse(self, reason: str) -> str:
        self.refused += 1
        return reason


def _drop(counter: Counter[int], uid: int) -> None:
    counter[uid] -= 1
    if counter[uid] <= 0:
        del counter[uid]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def parse_request(line: bytes) -> dict[str, Any]:
    """One request line as an object with a string "op"; PymosixError (one line) if it is not."""
    if len(line) > MAX_REQUEST_BYTES:
        raise PymosixError(f"request too long (over {MAX_REQUEST_BYTES} bytes)")
    try:
        req = json.loads(line, parse_constant=_reject_constant)
    except RecursionError:
        raise PymosixError(f"request nested too deeply (over {MAX_DEPTH} levels)") from None
    except (UnicodeDecodeError, ValueError) as e:
        # ValueError covers bad JSON, Infinity/NaN and integers of thousands of digits.
        if "is not allowed" in str(e):
            raise PymosixError("request holds Infinity or NaN, which JSON does not have") from None
        raise PymosixError("request is not valid JSON") from None
    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
        raise PymosixError('request must be a JSON object with a string "op"')
    if json_depth(req) > MAX_DEPTH:
        raise PymosixError(f"request nested too deeply (over {MAX_DEPTH} levels)")
    return req


def peer_cred(sock: socket.socket) -> PeerCred:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCred(pid, uid, gid)


@dataclass(frozen=True, slots=True)
class PeerCred:
    """Who is on the other end of the control socket (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int


class ControlConnection:
    """One client connection: read requests, write replies or stream frames."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: PeerCred | None = None,
        idle_timeout_s: float | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.peer = peer or peer_cred(writer.get_extra_info("socket"))
        self.idle_timeout_s = idle_timeout_s

    async def read_request(self) -> dict[str, Any] | None:
        """The next request, or None at end of stream. Raises PymosixError on garbage."""
        try:
            line = await asyncio.wait_for(self.reader.readuntil(b"\n"), self.idle_timeout_s)
        except asyncio.IncompleteReadError as e:
            if e.partial.strip():
                raise PymosixError("request not terminated by a newline") from None
            return None
        except (asyncio.LimitOverrunError, ValueError):
            raise PymosixError(f"request too long (over {MAX_REQUEST_BYTES} bytes)") from None
        except TimeoutError:
            raise PymosixError(
                f"no complete request for {self.idle_timeout_s:g} s: closing this connection"
            ) from None
        return parse_request(line)

    async def send(self, obj: dict[str, Any]) -> None:
        self.writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
        await self.writer.drain()


Handler = Callable[[dict[str, Any], ControlConnection], Awaitable[dict[str, Any] | None]]


class ControlServer:
    """A unix-socket server dispatching ops to registered handlers, within a Budget."""

    def __init__(self, path: Path, limits: Limits | None = None) -> None:
        self.path = path
        self.root_path = root_socket_path(path)
        self.budget = Budget(limits or Limits())
        self._handlers: dict[str, Handler] = {}
        self._listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._warned: dict[str, float] = {}
        #: Refusals not logged because one of their kind was logged within WARN_EVERY_S.
        self.unlogged = 0

    def register(self, op: str, handler: Handler) -> None:
        if op in self._handlers:
            raise ValueError(f"control op {op!r} registered twice")
        self._handlers[op] = handler

    @property
    def ops(self) -> list[str]:
        return sorted(self._handlers)

    def stats(self) -> dict[str, Any]:
        """For `mosctl status`: who holds what, and how much was refused."""
        return {
            "connections": dict(self.budget.connections),
            "requests": dict(self.budget.requests),
            "refused": self.budget.refused,
        }

    def handler(self, op: str) -> Handler:
        """The handler of `op`, for callers in the agent that act for a user (the web monitor)."""
        try:
            return self._handlers[op]
        except KeyError:
            raise PymosixError(f"unknown op {op!r} (known: {', '.join(self.ops)})") from None

    async def start(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Any local user may ask (mosrun runs as the user); handlers check credentials.
            for path, mode in ((self.path, 0o666), (self.root_path, 0o600)):
                self._listeners.append(self._listen(path, mode))
        except OSError as e:
            for sock in self._listeners:
                sock.close()
            self._listeners = []
            raise PymosixError(
                f"cannot make the control socket {self.path}: {e.strerror} "
                "(run the agent as root, or set socket_path)"
            ) from None
        self._raise_fd_limit()
        loop = asyncio.get_running_loop()
        for sock in self._listeners:
            loop.add_reader(sock.fileno(), self._accept, sock)

    def _raise_fd_limit(self) -> None:
        """Room for every connection the budgets allow, and for the rest of the agent, so that
        the budgets, not EMFILE, say no (a service's soft limit is often 1024)."""
        lim = self.budget.limits
        want = lim.connections + lim.root_connections + 1024
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY and soft < want:
            log.warning(
                "control socket: only %d open files allowed (RLIMIT_NOFILE) but the budgets "
                "allow %d connections; raise LimitNOFILE or lower control_max_connections",
                soft,
                want - 1024,
            )

    @staticmethod
    def _listen(path: Path, mode: int) -> socket.socket:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, mode)  # before listen(): nobody connects while it is still open
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._listeners:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners = []
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for path in (self.path, self.root_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _warn(self, kind: str, message: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(kind, -WARN_EVERY_S) < WARN_EVERY_S:
            self.unlogged += 1
            return
        self._warned[kind] = now
        log.warning("control socket: %s", message)

    def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # Out of descriptors or memory: one warning a minute, and a pause, not a storm.
                self._warn("accept", f"cannot accept connections: {e.strerror}")
                loop.remove_reader(listener.fileno())
                loop.call_later(0.1, self._resume, listener)
                return
            try:
                peer = peer_cred(sock)
            except OSError:
                sock.close()
                continue
            reason = self.budget.open(peer.uid)
            if reason is not None:
                self._warn(f"uid {peer.uid}", f"refusing connections: {reason}")
                with contextlib.suppress(OSError):
                    sock.setblocking(False)
                    sock.send(_error_line(reason))
                sock.close()
                continue
            task = loop.create_task(self._serve(sock, peer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _resume(self, listener: socket.socket) -> None:
        if listener in self._listeners:
            asyncio.get_running_loop().add_reader(listener.fileno(), self._accept, listener)

    async def _serve(self, sock: socket.socket, peer: PeerCred) -> None:
        try:
            try:
                reader, writer = await asyncio.open_unix_connection(
                    sock=sock, limit=MAX_REQUEST_BYTES
                )
            except OSError:
                sock.close()
                return
            conn = ControlConnection(reader, writer, peer, self.budget.limits.idle_timeout_s)
            try:
                await self._requests(conn)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            except Exception:
                log.exception("control connection failed")
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    if self._stopping:
                        try:
                            await asyncio.wait_for(writer.wait_closed(), CLOSE_S)
                        except TimeoutError:
                            writer.transport.abort()
                    else:
                        await writer.wait_closed()
        finally:
            self.budget.close(peer.uid)

    async def _requests(self, conn: ControlConnection) -> None:
        uid = conn.peer.uid
        while True:
            try:
                req = await conn.read_request()
            except PymosixError as e:
                await conn.send({"ok": False, "error": str(e)})
                return
            if req is None:
                return
            handler = self._handlers.get(req["op"])
            if handler is None:
                known = ", ".join(self.ops)
                await conn.send(
                    {"ok": False, "error": f"unknown op {req['op']!r} (known: {known})"}
                )
                continue
            refused = self.budget.start_request(uid)
            if refused is not None:
                self._warn(f"requests of uid {uid}", f"refusing requests: {refused}")
                await conn.send({"ok": False, "error": refused})
                continue
            try:
                reply = await handler(req, conn)
            except PymosixError as e:
                await conn.send({"ok": False, "error": str(e)})
                continue
            except (KeyError, TypeError, ValueError) as e:
                await conn.send({"ok": False, "error": f"bad {req['op']} request: {e}"})
                continue
            finally:
                self.budget.end_request(uid)
            if reply is None:
                return  # a streaming handler finished with the connection
            await conn.send({"ok": True, **reply})


def _error_line(message: str) -> bytes:
    return json.dumps({"ok": False, "error": message}, separators=(",", ":")).encode() + b"\n"
