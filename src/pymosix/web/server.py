"""The web monitor component: an aiohttp server inside the agent's event loop (docs/web.md).

The page is static (package data); what it shows comes as JSON, pushed over a WebSocket every
load interval and right after each move. What a logged-in user does goes through the same
control-op handlers as the tools, called as that user's uid, so `migrate`'s and `mosctl`'s
permission checks are the ones that apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.resources
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from pymosix.control_server import ControlConnection, PeerCred
from pymosix.errors import ConfigError, PymosixError
from pymosix.ids import format_node_id
from pymosix.migration.cantmove import cantmove
from pymosix.migration.moves import MoveRecord
from pymosix.web.auth import SESSION_S, Session, Sessions, TokenStore, may_log_in, user_name
from pymosix.web.view import job_views, last_failures, move_views, node_command, node_views

if TYPE_CHECKING:
    from pymosix.agent import NodeAgent
    from pymosix.load.component import LoadComponent
    from pymosix.migration.engine import MigrationEngine

log = logging.getLogger(__name__)

COOKIE = "pymosix_session"
#: cantmove reads /proc (fds, sockets) of the whole process tree: once per job per few seconds.
CANTMOVE_TTL_S = 5.0
_STATIC = {
    "index.html": "text/html",
    "app.js": "application/javascript",
    "app.css": "text/css",
}

#: The jobs the page shows: this agent's rows (its own and its guests); the pool query of other
#: agents plugs in here, replacing it.
JobSource = Callable[[], Awaitable[list[dict[str, Any]]]]


class WebCaller(ControlConnection):
    """A control connection that is not one: a logged-in web user, for the op handlers."""

    def __init__(self, uid: int) -> None:  # no socket: the handlers only look at `peer`
        self.peer = PeerCred(0, uid, 0)

    async def send(self, obj: dict[str, Any]) -> None:
        raise PymosixError("this operation streams; it cannot be done from the web monitor")


class WebMonitor:
    """Serves the page, its state (pushed), logins and the actions of logged-in users."""

    def __init__(self, agent: NodeAgent, load: LoadComponent, engine: MigrationEngine) -> None:
        self.agent = agent
        self.load = load
        self.engine = engine
        self.config = agent.config
        self.tokens = TokenStore(agent.config.state_dir / "web-tokens.json")
        self.sessions = Sessions()
        self.jobs_source: JobSource = self.local_jobs
        self.seen: dict[int, str] = {agent.node_id: agent.address}
        self._cant: dict[int, tuple[float, str | None]] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None
        #: The port it listens on once started (web_port, or the one picked for 0 in tests).
        self.port = self.config.web_port
        agent.control.register("web_token", self._op_token)
        agent.control.register("web", self._op_web)
        engine.move_listeners.append(self._moved)

    @property
    def url(self) -> str:
        return f"http://{self.config.web_address or self.agent.address}:{self.port}/"

    # --- life --------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[self._guard])
        r = app.router
        r.add_get("/", self._static)
        r.add_get("/static/{name}", self._static)
        r.add_post("/api/login", self._login)
        r.add_post("/api/logout", self._logout)
        r.add_get("/api/session", self._session)
        r.add_get("/api/state", self._state)
        r.add_get("/api/ws", self._ws)
        r.add_post("/api/migrate", self._migrate)
        r.add_post("/api/node", self._node)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        address = self.config.web_address or self.agent.address
        try:
            await web.TCPSite(self._runner, address, self.config.web_port).start()
        except OSError as e:
            await self._runner.cleanup()
            raise ConfigError(
                f"web monitor: cannot listen on {address}:{self.config.web_port} ({e.strerror}); "
                "change web_address or web_port"
            ) from None
        self.port = int(self._runner.addresses[0][1])
        self._task = asyncio.create_task(self._push_loop())
        log.info("web monitor on %s (pymosix web-token prints a login token)", self.url)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- tokens and sessions -----------------------------------------------------------------

    async def _op_web(self, req: dict[str, Any], conn: ControlConnection) -> dict[str, Any]:
        return {
            "url": self.url,
            "users": self.config.web_users,
            "sessions": self.sessions.count(time.monotonic()),
        }

    async def _op_token(self, req: dict[str, Any], conn: ControlConnection) -> dict[str, Any]:
        uid = conn.peer.uid
        if not may_log_in(uid, self.config.web_users):
            raise PymosixError(
                f"user {user_name(uid)} may not use this node's web monitor "
                "(root lists its users in the web_users setting)"
            )
        new = bool(req.get("new"))
        token = self.tokens.token_for(uid, new=new)
        if new:
            self.sessions.end_user(uid)
        return {"token": token, "uid": uid, "user": user_name(uid), "url": self.url}

    def _who(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE), time.monotonic())

    def _need(self, request: web.Request) -> Session:
        s = self._who(request)
        if s is None:
            raise web.HTTPUnauthorized(
                text=json.dumps({"error": "log in first (pymosix web-token prints a token)"}),
                content_type="application/json",
            )
        return s

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Actions only from this page: a JSON body (a form on another site cannot send one)
        and, when the browser names it, the same origin; the cookie is SameSite=Strict too."""
        if request.method == "POST":
            origin = request.headers.get("Origin")
            if request.content_type != "application/json" or (
                origin is not None and origin.split("://", 1)[-1] != request.host
            ):
                return _error(403, "requests must come from the monitor's own page")
        return await handler(request)

    async def _login(self, request: web.Request) -> web.Response:
        body = await _json(request)
        uid = self.tokens.uid_of(str(body.get("token", "")).strip())
        if uid is None or not may_log_in(uid, self.config.web_users):
            return _error(403, "wrong token (pymosix web-token prints yours)")
        sid = self.sessions.open(uid, time.monotonic())
        resp = web.json_response(self._me(uid))
        resp.set_cookie(COOKIE, sid, httponly=True, samesite="Strict", max_age=SESSION_S)
        log.info("web monitor: %s logged in from %s", user_name(uid), request.remote)
        return resp

    async def _logout(self, request: web.Request) -> web.Response:
        self.sessions.close(request.cookies.get(COOKIE))
        resp = web.json_response({})
        resp.del_cookie(COOKIE)
        return resp

    def _me(self, uid: int) -> dict[str, Any]:
        return {
            "uid": uid,
            "user": user_name(uid),
            "root": uid == 0,
            "node": self.agent.node_id,
            "node_name": format_node_id(self.agent.node_id),
        }

    async def _session(self, request: web.Request) -> web.Response:
        return web.json_response(self._me(self._need(request).uid))

    # --- what the page shows -----------------------------------------------------------------

    async def local_jobs(self) -> list[dict[str, Any]]:
        """This node's jobs (home here, wherever they run) and its guests: the `jobs` op's rows."""
        reply = await self.agent.control.handler("jobs")({}, WebCaller(0))
        assert reply is not None
        rows: list[dict[str, Any]] = reply["jobs"]
        return rows

    def _cantmove(self, pid: int, now: float, criu_version: tuple[int, ...]) -> str | None:
        hit = self._cant.get(pid)
        if hit is None or now - hit[0] > CANTMOVE_TTL_S:
            hit = (now, cantmove(pid, criu_version=criu_version))
            self._cant[pid] = hit
        return hit[1]

    async def snapshot(self) -> dict[str, Any]:
        rows = self.load.rows()
        for r in rows:
            self.seen[r["node_id"]] = r["address"]
        jobs = await self.jobs_source()
        now = time.monotonic()
        me = self.agent.node_id
        here = {int(j["pid"]) for j in jobs if j.get("pid") is not None and j["node"] == me}
        version = await self.engine.criu.version()
        cant = {pid: self._cantmove(pid, now, version) for pid in here}
        self._cant = {p: v for p, v in self._cant.items() if p in here}
        return {
            "t": "state",
            "at": time.time(),
            "me": me,
            "interval_ms": self.config.load_interval_ms,
            "nodes": node_views(rows, self.seen, me),
            "jobs": job_views(jobs, cant, last_failures(self.engine.moves)),
            "moves": move_views(self.engine.moves),
            "jobs_scope": "this node's jobs and guests",
            "flags": dataclasses.asdict(self.agent.flags),
        }

    async def _state(self, request: web.Request) -> web.Response:
        self._need(request)
        return web.json_response(await self.snapshot())

    def _moved(self, record: MoveRecord) -> None:
        self._changed.set()

    async def _push_loop(self) -> None:
        """Every load interval, and as soon as a job moved, the state to every open page."""
        period = self.config.load_interval_ms / 1000
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), period)
            self._changed.clear()
            if not self._sockets:
                continue
            try:
                data = json.dumps(await self.snapshot())
            except Exception:
                log.exception("web monitor: could not build the state")
                continue
            for ws in list(self._sockets):
                if self._who_ws(ws) is None:
                    await ws.close(message=b"session ended")
                    continue
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_str(data)

    def _who_ws(self, ws: web.WebSocketResponse) -> Session | None:
        sid: str | None = getattr(ws, "pymosix_sid", None)
        return self.sessions.get(sid, time.monotonic())

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        self._need(request)
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        ws.pymosix_sid = request.cookies.get(COOKIE)  # type: ignore[attr-defined]
        self._sockets.add(ws)
        try:
            await ws.send_str(json.dumps(await self.snapshot()))
            async for msg in ws:  # the page only listens; this waits for it to go
                if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            self._sockets.discard(ws)
        return ws

    # --- what a logged-in user does ----------------------------------------------------------

    async def _as_user(self, session: Session, op: str, req: dict[str, Any]) -> web.Response:
        """Run a control op as the session's user: its checks, its errors, its reply."""
        try:
            reply = await self.agent.control.handler(op)(req, WebCaller(session.uid))
        except PymosixError as e:
            return _error(400, str(e))
        except (KeyError, TypeError, ValueError) as e:
            return _error(400, f"bad {op} request: {e}")
        self._changed.set()
        return web.json_response(reply or {})

    async def _migrate(self, request: web.Request) -> web.Response:
        """Drag and drop: move a job (by its home node and pid) to a node, as `migrate` would."""
        session = self._need(request)
        body = await _json(request)
        try:
            home_node, pid = int(body["home_node"]), int(body["home_pid"])
            target = body["target"] if body["target"] == "home" else int(body["target"])
        except (KeyError, TypeError, ValueError):
            return _error(400, "migrate needs home_node, home_pid and target")
        if home_node != self.agent.node_id:
            return _error(
                400,
                f"job {pid} has its home on node {format_node_id(home_node)}: "
                "migrate it from that node's monitor",
            )
        log.info("web monitor: %s moves job %d to %s", session.user, pid, target)
        return await self._as_user(session, "migrate", {"pid": pid, "target": target})

    async def _node(self, request: web.Request) -> web.Response:
        """mosctl's verbs for this node (the handlers allow root only)."""
        session = self._need(request)
        body = await _json(request)
        try:
            op, req = node_command(str(body.get("verb")), body.get("value"))
        except ValueError as e:
            return _error(400, str(e))
        return await self._as_user(session, op, req)

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info.get("name", "index.html")
        if name not in _STATIC:
            raise web.HTTPNotFound()
        data = importlib.resources.files("pymosix.web").joinpath("static", name).read_bytes()
        return web.Response(
            body=data, content_type=_STATIC[name], headers={"Cache-Control": "no-cache"}
        )


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "the body is not JSON"}), content_type="application/json"
        ) from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "the body is not a JSON object"}),
            content_type="application/json",
        )
    return body
