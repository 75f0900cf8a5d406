"""The web monitor's pure parts (tokens, sessions, what the page shows) and its server on
loopback, with a fake agent whose control ops record who called them."""

from __future__ import annotations

import asyncio
import socket
import stat
from collections import deque
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pymosix.agent import NodeFlags
from pymosix.config import NodeConfig
from pymosix.control_server import ControlConnection, ControlServer
from pymosix.errors import ConfigError, PymosixError
from pymosix.migration.moves import MoveRecord
from pymosix.web.auth import SESSION_S, Sessions, TokenStore, may_log_in
from pymosix.web.server import WebCaller, WebMonitor
from pymosix.web.view import job_views, last_failures, move_views, node_command, node_views

ME, PEER, GONE = 0x640B, 0x640C, 0x640D
UID = 4242  # no such user: may_log_in matches it by number


def move(pid: int, result: str, at: float, error: str = "") -> MoveRecord:
    return MoveRecord(
        at, "out", ME, pid, UID, ME, PEER, "request", result, 0.5, 0.1, 1 << 20, error
    )


# --- tokens and sessions -------------------------------------------------------------------


def test_tokens_are_per_user_root_only_and_replaceable(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "web-tokens.json")
    root, user = store.token_for(0), store.token_for(UID)
    assert root != user
    assert store.token_for(0) == root  # stable until replaced
    assert stat.S_IMODE((tmp_path / "web-tokens.json").stat().st_mode) == 0o600
    assert store.uid_of(root) == 0
    assert store.uid_of(user) == UID
    assert store.uid_of("guess") is None
    new = store.token_for(UID, new=True)
    assert new != user
    assert store.uid_of(user) is None
    assert store.uid_of(new) == UID


def test_who_may_log_in() -> None:
    assert may_log_in(0, "")
    assert not may_log_in(UID, "")
    assert may_log_in(UID, "*")
    assert may_log_in(UID, f"alice, {UID}")
    assert not may_log_in(UID, "alice,bob")


def test_sessions_expire_and_end_with_a_new_token() -> None:
    s = Sessions()
    a, b = s.open(UID, now=0.0), s.open(0, now=0.0)
    session = s.get(a, now=1.0)
    assert session is not None
    assert session.uid == UID
    assert s.get(a, now=SESSION_S + 1) is None
    a = s.open(UID, now=0.0)
    s.end_user(UID)
    assert s.get(a, now=1.0) is None
    assert s.get(b, now=1.0) is not None
    assert s.get(None, now=1.0) is None


# --- what the page shows -------------------------------------------------------------------


def test_nodes_seen_and_gone_stay_on_the_map_as_down() -> None:
    rows = [
        {"node_id": PEER, "address": "10.0.0.12", "up": True, "load": 1.0},
        {"node_id": ME, "address": "10.0.0.11", "up": True, "load": 0.0},
    ]
    seen = {ME: "10.0.0.11", PEER: "10.0.0.12", GONE: "10.0.0.13"}
    views = node_views(rows, seen, ME)
    assert [v["name"] for v in views] == ["0x640b", "0x640c", "0x640d"]  # this node first
    assert views[0]["self"]
    assert views[2]["up"] is False
    assert views[2]["in_map"] is False


def test_jobs_carry_why_they_cannot_move() -> None:
    moves = [
        move(7, "cantmove", 1.0, "job 7 cannot move: a TCP connection"),
        move(8, "failed", 1.0),
    ]
    moves += [move(8, "ok", 2.0)]  # a later success clears the failure
    failures = last_failures(moves)
    assert failures == {(ME, 7): "job 7 cannot move: a TCP connection"}
    rows = [
        {"home_pid": 8, "home_node": ME, "node": PEER, "user": "u"},
        {"home_pid": 7, "home_node": ME, "node": ME, "user": "u", "pid": 99},
    ]
    views = job_views(rows, {99: "process 99 holds a TCP connection"}, failures)
    assert [v["key"] for v in views] == [f"{ME}:7", f"{ME}:8"]
    assert views[0]["cantmove"] == "process 99 holds a TCP connection"
    assert views[0]["last_failure"].startswith("job 7 cannot move")
    assert views[1]["cantmove"] is None
    assert views[1]["node_name"] == "0x640c"


def test_recent_moves_newest_first_and_bounded() -> None:
    views = move_views([move(p, "ok", float(p)) for p in range(30)], limit=5)
    assert [v["home_pid"] for v in views] == [29, 28, 27, 26, 25]
    assert views[0]["target_name"] == "0x640c"


def test_node_commands_are_mosctls() -> None:
    assert node_command("block", None) == ("set", {"name": "block", "value": True})
    assert node_command("nolstay", None) == ("set", {"name": "lstay", "value": False})
    assert node_command("setspeed", "12000") == ("set", {"name": "speed", "value": 12000})
    assert node_command("expel", None) == ("expel", {})
    with pytest.raises(ValueError, match="whole number"):
        node_command("setspeed", "fast")
    with pytest.raises(ValueError, match="no node command"):
        node_command("reboot", None)


# --- the server ----------------------------------------------------------------------------


class FakeLoad:
    def rows(self) -> list[dict[str, Any]]:
        return [{"node_id": ME, "address": "127.0.0.1", "up": True, "load": 0.5, "age_ms": 0}]


class FakeCriu:
    async def version(self) -> tuple[int, ...]:
        return (4, 2, 1)


class FakeEngine:
    def __init__(self) -> None:
        self.moves: deque[MoveRecord] = deque()
        self.move_listeners: list[Any] = []
        self.criu = FakeCriu()


class FakeAgent:
    """What the web monitor uses of the agent; its ops record the caller's uid."""

    def __init__(self, state_dir: Path, web_users: str, web_port: int = 0) -> None:
        self.config = NodeConfig(
            state_dir=state_dir,
            web_address="127.0.0.1",
            web_port=web_port,
            web_users=web_users,
            load_interval_ms=100,
        )
        self.node_id = ME
        self.address = "127.0.0.1"
        self.flags = NodeFlags(speed=10000)
        self.control = ControlServer(state_dir / "unused.sock")
        self.calls: list[tuple[str, int, dict[str, Any]]] = []
        self.control.register("jobs", self._jobs)
        self.control.register("migrate", self._migrate)

    async def _jobs(self, req: dict[str, Any], conn: ControlConnection) -> dict[str, Any]:
        row = {"home_pid": 7, "home_node": ME, "node": ME, "user": "u", "cpu": 99.0, "rss": 1}
        return {"node_id": ME, "jobs": [row]}

    async def _migrate(self, req: dict[str, Any], conn: ControlConnection) -> dict[str, Any]:
        self.calls.append(("migrate", conn.peer.uid, req))
        if conn.peer.uid != 0:
            raise PymosixError("job 7 belongs to another user")
        return {"home_pid": req["pid"], "node": req["target"], "seconds": 0.1}


async def test_login_state_push_and_actions_as_the_user(tmp_path: Path) -> None:
    agent = FakeAgent(tmp_path, web_users=str(UID))
    engine = FakeEngine()
    monitor = WebMonitor(agent, FakeLoad(), engine)  # type: ignore[arg-type]
    with pytest.raises(PymosixError, match="may not use"):
        await WebMonitor(
            FakeAgent(tmp_path / "b", web_users=""),  # type: ignore[arg-type]
            FakeLoad(),  # type: ignore[arg-type]
            FakeEngine(),  # type: ignore[arg-type]
        )._op_token({}, WebCaller(UID))
    user_token = (await monitor._op_token({}, WebCaller(UID)))["token"]
    root_token = (await monitor._op_token({}, WebCaller(0)))["token"]
    await monitor.start()
    base = f"http://127.0.0.1:{monitor.port}"
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP address host
    try:
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            async with http.get(f"{base}/api/state") as r:
                assert r.status == 401
            async with http.get(f"{base}/") as r:
                assert r.status == 200
                assert "pymosix web-token" in await r.text()
            async with http.post(f"{base}/api/login", json={"token": "guess"}) as r:
                assert r.status == 403
            # A form from another site: not JSON, or not this origin.
            async with http.post(f"{base}/api/login", data=f"token={user_token}") as r:
                assert r.status == 403
            hdr = {"Origin": "http://evil.example"}
            async with http.post(f"{base}/api/login", json={"token": user_token}, headers=hdr) as r:
                assert r.status == 403
            async with http.post(f"{base}/api/login", json={"token": user_token}) as r:
                assert r.status == 200
                assert (await r.json())["uid"] == UID
            async with http.get(f"{base}/api/state") as r:
                state = await r.json()
            assert state["jobs"][0]["key"] == f"{ME}:7"
            assert state["nodes"][0]["self"]
            # Actions go through the op handlers as the logged-in uid, with their errors.
            body = {"home_node": ME, "home_pid": 7, "target": PEER}
            async with http.post(f"{base}/api/migrate", json=body) as r:
                assert r.status == 400
                assert "another user" in (await r.json())["error"]
            assert agent.calls == [("migrate", UID, {"pid": 7, "target": PEER})]
            async with http.post(f"{base}/api/migrate", json=body | {"home_node": PEER}) as r:
                assert "that node's monitor" in (await r.json())["error"]
            # Pushed: the state on connect, then again as soon as a job moved.
            async with http.ws_connect(f"{base}/api/ws") as ws:
                first = await asyncio.wait_for(ws.receive_json(), 5)
                assert first["moves"] == []
                engine.moves.append(move(7, "ok", 1.0))
                for listener in engine.move_listeners:
                    listener(engine.moves[-1])
                pushed = await asyncio.wait_for(ws.receive_json(), 5)
                assert pushed["moves"][0]["home_pid"] == 7
            # A new token ends the sessions of the old one.
            await monitor._op_token({"new": True}, WebCaller(UID))
            async with http.get(f"{base}/api/state") as r:
                assert r.status == 401
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.post(f"{base}/api/login", json={"token": root_token}) as r:
                assert (await r.json())["root"]
            async with http.post(f"{base}/api/migrate", json=body) as r:
                assert r.status == 200
                assert (await r.json())["node"] == PEER
            assert agent.calls[-1][1] == 0
    finally:
        await monitor.stop()


async def test_a_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        agent = FakeAgent(tmp_path, web_users="", web_port=taken.getsockname()[1])
        monitor = WebMonitor(agent, FakeLoad(), FakeEngine())  # type: ignore[arg-type]
        with pytest.raises(
            ConfigError, match=r"cannot listen on 127\.0\.0\.1:\d+ .*change web_address"
        ):
            await monitor.start()
