"""Pool views: the pure merge of every node's job rows, and the asking of peers over real
channels on loopback (one that answers, one that hangs, one that is gone)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from pymosix.control_server import ControlConnection
from pymosix.ids import NodeId
from pymosix.membership import MapChanged, NodeEntry
from pymosix.migration.channel import Channel, serve_channels
from pymosix.migration.link import Frame
from pymosix.pool import PoolViews, filter_user, merge_jobs

KEY = bytes(range(32))


def job(pid: int, home: int, node: int, user: str = "ann", migrations: int = 0) -> dict[str, Any]:
    return {
        "home_pid": pid,
        "home_node": home,
        "node": node,
        "user": user,
        "guest": home != node,
        "state": "running",
        "cpu": 50.0,
        "rss": 1 << 20,
        "migrations": migrations,
        "locked": False,
        "command": "perl -e loop",
    }


def test_a_job_at_home_is_one_row() -> None:
    rows = merge_jobs({1: [job(10, 1, 1)], 2: []}, [])
    assert len(rows) == 1
    assert rows[0]["node"] == 1
    assert rows[0]["reported_by"] == 1
    assert not rows[0]["guest"]
    assert not rows[0]["stale"]


def test_a_moved_job_is_one_row_from_the_node_that_runs_it() -> None:
    home = job(10, 1, 3, migrations=1)
    home["cpu"] = 1.0  # the home's last word
    guest = job(10, 1, 3, user="1001", migrations=1)
    guest["pid"] = 4242
    rows = merge_jobs({1: [home], 3: [guest]}, [])
    assert len(rows) == 1
    (r,) = rows
    assert r["reported_by"] == 3
    assert r["pid"] == 4242
    assert r["cpu"] == 50.0
    assert r["user"] == "ann"  # the home knows its user's name; the host may not
    assert r["guest"]


def test_a_job_whose_host_is_silent_keeps_the_homes_row_marked_stale() -> None:
    rows = merge_jobs({1: [job(10, 1, 3)]}, missing=[3])
    assert [r["reported_by"] for r in rows] == [1]
    assert rows[0]["stale"]
    assert not merge_jobs({1: [job(10, 1, 3)]}, missing=[])[0]["stale"]


def test_a_guest_whose_home_is_silent_still_shows() -> None:
    rows = merge_jobs({3: [job(10, 1, 3, user="1001")]}, missing=[1])
    assert len(rows) == 1
    assert rows[0]["user"] == "1001"
    assert not rows[0]["stale"]


def test_mid_move_the_node_the_home_names_wins() -> None:
    old = job(10, 1, 2, migrations=1)
    new = job(10, 1, 3, migrations=2)
    home = job(10, 1, 3, migrations=2)
    assert merge_jobs({1: [home], 2: [old], 3: [new]}, [])[0]["reported_by"] == 3
    home["node"] = 2
    assert merge_jobs({1: [home], 2: [old], 3: [new]}, [])[0]["reported_by"] == 2
    # No home to ask: the runner with more moves behind it.
    assert merge_jobs({2: [old], 3: [new]}, [1])[0]["reported_by"] == 3


def test_jobs_of_two_homes_with_one_pid_stay_apart() -> None:
    rows = merge_jobs({1: [job(10, 1, 1)], 2: [job(10, 2, 2, user="bob")]}, [])
    assert [(r["home_node"], r["home_pid"]) for r in rows] == [(1, 10), (2, 10)]
    assert [r["user"] for r in filter_user(rows, "bob")] == ["bob"]
    assert len(filter_user(rows, None)) == 2
    assert filter_user(rows, "carol") == []


# --- asking peers over real channels ---------------------------------------------------------


@dataclass
class FakeControl:
    ops: dict[str, Any] = field(default_factory=dict)

    def register(self, op: str, handler: Any) -> None:
        self.ops[op] = handler


@dataclass
class FakeConfig:
    migration_port: int = 1


class FakeCluster:
    def __init__(self, entries: list[NodeEntry]) -> None:
        self.entries = entries

    def nodes(self) -> tuple[NodeEntry, ...]:
        return tuple(self.entries)


class FakeAgent:
    def __init__(self, node_id: int, entries: list[NodeEntry]) -> None:
        self.node_id = node_id
        self.address = "127.0.0.1"
        self.keys = KEY
        self.config = FakeConfig()
        self.cluster = FakeCluster(entries)
        self.control = FakeControl()
        self.map_listeners: list[Any] = []
        self.clock = 100.0

    def now(self) -> float:
        return self.clock


class FakeEngine:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.answer_query: Any = None

    def job_rows(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.rows]


def views(node_id: int, rows: list[dict[str, Any]], entries: list[NodeEntry]) -> PoolViews:
    return PoolViews(cast(Any, FakeAgent(node_id, entries)), cast(Any, FakeEngine(rows)))


async def call(v: PoolViews, op: str, **req: Any) -> dict[str, Any]:
    """Run one of the views' control ops as a tool would."""
    reply: dict[str, Any] = await cast(FakeAgent, v.agent).control.ops[op](
        req, cast(ControlConnection, None)
    )
    return reply


def entry(node_id: int, port: int) -> NodeEntry:
    return NodeEntry(NodeId(node_id), "127.0.0.1", 0.0, 0.0, migration_port=port)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


async def test_peers_are_asked_at_once_and_the_silent_ones_named() -> None:
    broken = {"home_pid": "x", "node": 2}
    peer = views(2, [job(20, 2, 2, user="bob"), job(11, 1, 2, migrations=1), broken], [])
    answered: list[dict[str, Any]] = []

    async def answer(ch: Channel) -> None:
        kind, query = await ch.recv()
        assert kind == Frame.QUERY
        answered.append(query)
        assert peer.engine.answer_query is not None
        await ch.send(Frame.REPLY, peer.engine.answer_query(query))

    async def hang(ch: Channel) -> None:
        await ch.recv()
        with contextlib.suppress(EOFError):
            await ch.recv()  # never answers; returns when the asker gives up and hangs up

    good = await serve_channels("127.0.0.1", 0, KEY, 2, answer)
    stuck = await serve_channels("127.0.0.1", 0, KEY, 3, hang)
    gone = closed_port()
    try:
        entries = [
            entry(1, 0),
            entry(2, port_of(good)),
            entry(3, port_of(stuck)),
            entry(4, gone),
        ]
        me = views(1, [job(10, 1, 1), job(11, 1, 2, migrations=1)], entries)
        t0 = time.monotonic()
        reply = await call(me, "pool_jobs", deadline_s=0.5)
        took = time.monotonic() - t0
        only_bob = await call(me, "pool_jobs", deadline_s=0.2, user="bob")
    finally:
        for s in (good, stuck):
            s.close()
            await s.wait_closed()
    assert took < 2.0, took  # the hung peer costs the deadline, not more, and not one per peer
    assert [(j["home_node"], j["home_pid"], j["node"]) for j in reply["jobs"]] == [
        (1, 10, 1),
        (1, 11, 2),
        (2, 20, 2),
    ]
    assert reply["jobs"][1]["reported_by"] == 2
    assert sorted(reply["missing"]) == [3, 4]
    why = {n["node_id"]: n for n in reply["nodes"]}
    assert why[1]["answered"]
    assert why[2]["answered"]
    assert why[3]["error"] == "no answer within 0.5 s"
    assert "refused" in why[4]["error"]
    assert [(j["home_node"], j["home_pid"]) for j in only_bob["jobs"]] == [(2, 20)]
    assert answered == [{"what": "jobs"}] * 2


def test_a_peer_answers_jobs_and_nothing_else() -> None:
    v = views(2, [job(20, 2, 2)], [])
    assert v.answer({"what": "jobs"})["jobs"][0]["home_pid"] == 20
    assert "unknown query" in v.answer({"what": "kill"})["error"]


async def test_nodes_that_left_the_map_are_named_until_they_return() -> None:
    entries = [entry(1, 0), entry(5, 1)]
    v = views(1, [], entries)
    agent = cast(FakeAgent, v.agent)
    v._map_changed(MapChanged(nodes=(entries[0],), left=(NodeId(5),)))
    agent.clock += 12
    agent.cluster.entries = [entries[0]]
    gone = await call(v, "gone")
    assert gone["nodes"] == [{"node_id": 5, "address": "127.0.0.1", "left_s": 12.0}]
    reply = await call(v, "pool_jobs")
    assert reply["missing"] == [5]
    assert "left the map 12 s ago" in reply["nodes"][-1]["error"]
    # Still in the map when asked, gone by the answer: named once, for why it did not answer.
    agent.cluster.entries = [entries[0], entry(5, closed_port())]
    reply = await call(v, "pool_jobs")
    assert reply["missing"] == [5]
    assert "refused" in reply["nodes"][-1]["error"]
    agent.cluster.entries = [entries[0]]
    v._map_changed(MapChanged(nodes=tuple(entries), joined=(NodeId(5),)))
    assert v.recently_gone() == []
    v._map_changed(MapChanged(nodes=(entries[0],), left=(NodeId(5),)))
    agent.clock += 601
    assert v.recently_gone() == []


def test_mps_keeps_its_columns_in_line_with_guests(capsys: pytest.CaptureFixture[str]) -> None:
    from pymosix.cli.mps import print_local

    row = {"user": "alice", "state": "running", "cpu": 99.0, "cpu_s": 9.0, "rss": 4096,
           "migrations": 1, "why": None, "command": "/tmp/omtest.sh"}  # fmt: skip
    print_local(
        {
            "node_id": 25612,
            "jobs": [
                {**row, "home_pid": 10, "node": 25612, "home_node": 25612, "guest": False},
                {**row, "home_pid": 11, "node": 25612, "home_node": 25611, "guest": True},
            ],
        }
    )
    header, *lines = capsys.readouterr().out.splitlines()
    assert "guest(25611)" in lines[1]
    for line in lines:
        assert line.index("running") == header.index("STATE"), (header, line)
        assert line.index("/tmp/omtest.sh") == header.index("COMMAND"), (header, line)
