"""What the page shows, assembled from the agent's rows: pure functions, time passed in."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pymosix.ids import format_node_id
from pymosix.migration.moves import MoveRecord


def node_views(
    rows: Iterable[Mapping[str, Any]], seen: Mapping[int, str], me: int
) -> list[dict[str, Any]]:
    """One entry per node ever seen: the map's rows with their load, then the gone ones (down)."""
    out: list[dict[str, Any]] = []
    present = set()
    for r in rows:
        present.add(r["node_id"])
        v = dict(r)
        v["name"] = format_node_id(r["node_id"])
        v["self"] = r["node_id"] == me
        v["in_map"] = True
        out.append(v)
    for node_id, address in sorted(seen.items()):
        if node_id not in present:
            out.append(
                {
                    "node_id": node_id,
                    "name": format_node_id(node_id),
                    "address": address,
                    "self": False,
                    "up": False,
                    "in_map": False,
                    "age_ms": None,
                }
            )
    out.sort(key=lambda v: (not v["self"], v["node_id"]))
    return out


def last_failures(moves: Iterable[MoveRecord]) -> dict[tuple[int, int], str]:
    """(home node, home pid) -> why its latest move failed, for jobs whose latest move did."""
    out: dict[tuple[int, int], str] = {}
    for m in moves:  # oldest first: a later success clears an earlier failure
        key = (m.home_node, m.home_pid)
        if m.result == "ok":
            out.pop(key, None)
        else:
            out[key] = m.error or m.result
    return out


def job_views(
    rows: Iterable[Mapping[str, Any]],
    cant: Mapping[int, str | None],
    failures: Mapping[tuple[int, int], str],
) -> list[dict[str, Any]]:
    """The jobs, each with its key (home node:home pid), names, and why it cannot move if known:
    `cant` has cantmove's answer by pid for the jobs that run here."""
    out = []
    for r in rows:
        v = dict(r)
        v["key"] = f"{r['home_node']}:{r['home_pid']}"
        v["node_name"] = format_node_id(r["node"])
        v["home_name"] = format_node_id(r["home_node"])
        v["cantmove"] = cant.get(r["pid"]) if r.get("pid") is not None else None
        v["last_failure"] = failures.get((r["home_node"], r["home_pid"]))
        out.append(v)
    out.sort(key=lambda v: (v["node"], v["home_node"], v["home_pid"]))
    return out


def move_views(moves: Iterable[MoveRecord], limit: int = 20) -> list[dict[str, Any]]:
    """The recent moves, newest first."""
    out = []
    for m in list(moves)[::-1][:limit]:
        v = m.to_row()
        v["source_name"] = format_node_id(m.source)
        v["target_name"] = format_node_id(m.target)
        v["home_name"] = format_node_id(m.home_node)
        out.append(v)
    return out


def node_command(verb: str, value: Any) -> tuple[str, dict[str, Any]]:
    """A mosctl verb from the page -> (control op, its request). ValueError if unknown."""
    flags = {"stay", "lstay", "block", "quiet"}
    if verb in flags or (verb.startswith("no") and verb[2:] in flags):
        name = verb.removeprefix("no") if verb.startswith("no") else verb
        return "set", {"name": name, "value": not verb.startswith("no")}
    if verb == "setspeed":
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError("setspeed needs a whole number")
        try:
            speed = int(value)
        except ValueError:
            raise ValueError("setspeed needs a whole number") from None
        return "set", {"name": "speed", "value": speed}
    if verb in ("expel", "bring"):
        return verb, {}
    raise ValueError(f"no node command {verb!r}")
