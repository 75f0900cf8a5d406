"""Pool-wide views (``mps --all``, ``mps -u``, ``mtop``): every agent's jobs, asked for at once.

A tool asks its own agent (control op ``pool_jobs``); the agent asks every other node of its map
over the authenticated agent-to-agent channel (one QUERY frame, one REPLY frame), all in
parallel and within one deadline, and merges the answers with its own rows. A job shows up at its
home (the deputy's row) and at the node that runs it (the guest's row); the merge keeps one row
per job, the runner's where it answered. Nodes that did not answer in time are named, never
silently left out. The merge is pure; `PoolViews` does the I/O.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pymosix.control_server import ControlConnection
from pymosix.errors import AuthError, DecodeError, PymosixError
from pymosix.migration.channel import open_channel
from pymosix.migration.link import Frame

if TYPE_CHECKING:
    from pymosix.agent import NodeAgent
    from pymosix.membership import MapChanged, NodeEntry
    from pymosix.migration.engine import MigrationEngine

#: How long a pool query waits for the slowest node unless the tool asks otherwise.
DEFAULT_TIMEOUT_S = 2.0
MAX_TIMEOUT_S = 30.0
#: How long a node that left the map is still named as not answering.
GONE_KEEP_S = 600.0

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class NodeAnswer:
    """How one node answered a pool query."""

    node_id: int
    address: str
    answered: bool
    seconds: float
    error: str = ""


# --- pure ---------------------------------------------------------------------------------------


def merge_jobs(
    answers: Mapping[int, Sequence[Mapping[str, Any]]], missing: Iterable[int]
) -> list[Row]:
    """One row per job (home node, home PID) from every node's ``jobs`` rows.

    `answers` maps the node that answered to its rows. The node that runs a job knows its state
    and usage first-hand: its row wins, with the home's user name (the home knows the user for
    sure). A job only its home reported keeps the home's row, marked ``stale`` when the node it
    runs on did not answer (its figures are the last the home heard). Mid-move, two runners may
    both report a job: the one the home names wins, else the one with more migrations.
    """
    missing = set(missing)
    home_rows: dict[tuple[int, int], Row] = {}
    runner_rows: dict[tuple[int, int], list[Row]] = {}
    for reporter, rows in answers.items():
        for r in rows:
            row = dict(r)
            key = (int(row["home_node"]), int(row["home_pid"]))
            row["reported_by"] = reporter
            if int(row["node"]) == reporter:
                runner_rows.setdefault(key, []).append(row)
            if int(row["home_node"]) == reporter:
                home_rows[key] = row
    out = []
    for key in sorted(home_rows.keys() | runner_rows.keys()):
        home = home_rows.get(key)
        runners = runner_rows.get(key, [])
        if runners:
            named = [r for r in runners if home is not None and int(r["node"]) == int(home["node"])]
            row = dict((named or sorted(runners, key=lambda r: int(r["migrations"])))[-1])
            if home is not None:
                row["user"] = home["user"]
        else:
            assert home is not None
            row = dict(home)
        row["guest"] = int(row["node"]) != int(row["home_node"])
        row["stale"] = not runners and int(row["node"]) in missing
        out.append(row)
    return out


#: What a row must carry, and of what type, to be merged and shown.
ROW_FIELDS = {"home_pid": int, "home_node": int, "node": int, "migrations": int, "user": str}


def well_formed(row: Any) -> bool:
    """A peer's row that merge_jobs and the tools can use (a newer or broken peer may differ)."""
    return isinstance(row, dict) and all(
        isinstance(row.get(k), t) and not isinstance(row.get(k), bool)
        for k, t in ROW_FIELDS.items()
    )


def filter_user(rows: Iterable[Row], user: str | None) -> list[Row]:
    """The rows of one user (by name, as the rows carry it); all rows without a user."""
    return [r for r in rows if user is None or r["user"] == user]


# --- I/O ----------------------------------------------------------------------------------------


class PoolViews:
    """The agent's side of the pool views: answers peers' QUERY frames and the ``pool_jobs`` op."""

    def __init__(self, agent: NodeAgent, engine: MigrationEngine) -> None:
        self.agent = agent
        self.engine = engine
        #: Nodes that left the map lately: node id -> (last address, when it left).
        self.gone: dict[int, tuple[str, float]] = {}
        self._addresses = {n.node_id: n.address for n in agent.cluster.nodes()}
        engine.answer_query = self.answer
        agent.control.register("pool_jobs", self._op_pool_jobs)
        agent.control.register("gone", self._op_gone)
        agent.map_listeners.append(self._map_changed)

    def _map_changed(self, change: MapChanged) -> None:
        now = self.agent.now()
        for node_id in change.left:
            self.gone[node_id] = (self._addresses.get(node_id, "?"), now)
        self._addresses = {n.node_id: n.address for n in change.nodes}
        self.gone = {
            n: (address, when)
            for n, (address, when) in self.gone.items()
            if n not in self._addresses and now - when <= GONE_KEEP_S
        }

    def recently_gone(self) -> list[tuple[int, str, float]]:
        """(node id, last address, seconds since it left) of the nodes that left the map lately."""
        now = self.agent.now()
        return [
            (n, address, now - when)
            for n, (address, when) in sorted(self.gone.items())
            if now - when <= GONE_KEEP_S
        ]

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def answer(self, query: dict[str, Any]) -> dict[str, Any]:
        """A peer's question, answered from this node's own state only (no I/O, no changes)."""
        what = query.get("what")
        if what == "jobs":
            return {"node_id": self.agent.node_id, "jobs": self.engine.job_rows()}
        return {"node_id": self.agent.node_id, "error": f"unknown query {what!r}"}

    async def ask(
        self, entry: NodeEntry, query: dict[str, Any], timeout_s: float
    ) -> dict[str, Any]:
        """One peer's reply to `query`; raises on no answer within `timeout_s`."""

        async def exchange() -> dict[str, Any]:
            port = entry.migration_port or self.agent.config.migration_port
            ch = await open_channel(
                entry.address, port, self.agent.keys, self.agent.node_id, timeout_s
            )
            try:
                await ch.send(Frame.QUERY, query)
                kind, reply = await ch.recv()
            finally:
                await ch.aclose()
            if kind != Frame.REPLY:
                raise DecodeError(f"answered frame {kind} instead of a reply")
            if reply.get("error"):
                raise DecodeError(str(reply["error"]))
            return reply

        return await asyncio.wait_for(exchange(), timeout_s)

    async def ask_all(
        self, query: dict[str, Any], timeout_s: float
    ) -> tuple[dict[int, dict[str, Any]], list[NodeAnswer]]:
        """Every peer's reply that came in time (by node id), and how each node answered."""
        peers = [n for n in self.agent.cluster.nodes() if n.node_id != self.agent.node_id]
        start = time.monotonic()

        async def timed(entry: NodeEntry) -> tuple[dict[str, Any] | None, NodeAnswer]:
            try:
                reply = await self.ask(entry, query, timeout_s)
            except (TimeoutError, OSError, EOFError, AuthError, DecodeError) as e:
                why = _why(e, timeout_s)
                return None, NodeAnswer(entry.node_id, entry.address, False, _since(start), why)
            return reply, NodeAnswer(entry.node_id, entry.address, True, _since(start))

        results = await asyncio.gather(*(timed(p) for p in peers))
        replies = {a.node_id: r for r, a in results if r is not None}
        return replies, [a for _, a in results]

    async def _op_gone(self, req: dict[str, Any], conn: ControlConnection) -> dict[str, Any]:
        """The nodes that left the map lately (mosmon's dead nodes)."""
        nodes = [
            {"node_id": n, "address": address, "left_s": round(ago, 1)}
            for n, address, ago in self.recently_gone()
        ]
        return {"node_id": self.agent.node_id, "nodes": nodes}

    async def _op_pool_jobs(self, req: dict[str, Any], conn: ControlConnection) -> dict[str, Any]:
        timeout_s = float(req.get("deadline_s") or DEFAULT_TIMEOUT_S)
        if not 0 < timeout_s <= MAX_TIMEOUT_S:
            raise PymosixError(f"the deadline must be over 0 and at most {MAX_TIMEOUT_S:.0f} s")
        me = self.agent.node_id
        replies, nodes = await self.ask_all({"what": "jobs"}, timeout_s)
        asked = {a.node_id for a in nodes}
        nodes += [
            NodeAnswer(n, address, False, 0.0, f"left the map {ago:.0f} s ago (not asked)")
            for n, address, ago in self.recently_gone()
            if n not in asked  # it left while we asked it: named once, for why it did not answer
        ]
        answers: dict[int, list[Row]] = {me: self.engine.job_rows()}
        for node_id, reply in replies.items():
            answers[node_id] = [dict(r) for r in reply.get("jobs") or [] if well_formed(r)]
        missing = [a.node_id for a in nodes if not a.answered]
        user = req.get("user")
        return {
            "node_id": me,
            "jobs": filter_user(merge_jobs(answers, missing), None if user is None else str(user)),
            "nodes": [asdict(NodeAnswer(me, self.agent.address, True, 0.0)), *map(asdict, nodes)],
            "missing": missing,
        }


def _since(start: float) -> float:
    return round(time.monotonic() - start, 3)


def _why(e: BaseException, timeout_s: float) -> str:
    if isinstance(e, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (is its agent running?)"
    if isinstance(e, EOFError):
        return "closed the channel without answering (an older pymosix?)"
    return str(e) or type(e).__name__
