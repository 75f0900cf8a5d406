"""mtop's screen as pure text: the pool's jobs and the nodes' loads in, styled lines out.

Like top: a summary, one line per node (load, utilisation, memory, jobs), the nodes that did not
answer, then the jobs, busiest first, with the node each runs on (openMosix's NODE column).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pymosix.cli.mps import HEADER, job_line
from pymosix.mosmon.render import Line, compact, load_style, nbytes

SORTS = {"P": "sort by %CPU", "M": "sort by memory (RSS)", "N": "sort by home node and PID"}
TOP_KEYS = [*SORTS.items(), ("h ?", "this help (again to leave)"), ("q", "quit")]
_SORT_KEYS = {
    "P": lambda j: (-float(j["cpu"]), j["home_node"], j["home_pid"]),
    "M": lambda j: (-int(j["rss"]), j["home_node"], j["home_pid"]),
    "N": lambda j: (j["home_node"], j["home_pid"]),
}
NODE_HEADER = f"{'NODE':>7} {'LOAD':>5} {'JOBS':>4} {'UTIL':>4} {'CPUS':>4} {'USED':>5} {'FREE':>5}"


def _node_line(r: dict[str, Any], jobs: int) -> Line:
    mark = "*" if r.get("self") else ""
    if not r.get("up"):
        return [(f"{mark + str(r['node_id']):>7} {'down':>5}", "bold red")]
    used = max(0, int(r["mem_total"]) - int(r["mem_free"]))
    load = float(r["load"])
    return [
        (f"{mark + str(r['node_id']):>7} ", "bold" if mark == "*" else ""),
        (f"{compact(load):>5}", load_style(load)),
        (
            f" {jobs:>4} {float(r['util']):>4.0%} {r['ncpus']:>4} {nbytes(used):>5} "
            f"{nbytes(int(r['mem_free'])):>5}",
            "",
        ),
    ]


def render_top(
    view: dict[str, Any],
    width: int = 80,
    height: int = 25,
    sort: str = "P",
    now: float | None = None,
    extra: Sequence[str] = (),
) -> list[Line]:
    """The whole screen from mtop's view ({jobs, nodes, missing, loads, node_id})."""
    jobs = sorted(view["jobs"], key=_SORT_KEYS[sort])
    loads = view["loads"]
    running = sum(1 for j in jobs if j["state"] == "running")
    up = sum(1 for r in loads if r.get("up"))
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    silent = [n for n in view["nodes"] if not n["answered"]]
    title = f"mtop {clock}  {up}/{len(loads)} nodes up  {len(jobs)} jobs, {running} running"
    lines: list[Line] = [[(title[:width], "bold")]]
    lines += [[(e[:width], "yellow")] for e in extra]
    for n in silent:
        lines.append([(f"no answer from node {n['node_id']}: {n['error']}"[:width], "bold red")])
    per_node = Counter(int(j["node"]) for j in jobs)
    # Nodes take at most a third of the screen; the jobs are what top is for.
    room = max(1, (height - len(lines)) // 3 - 1)
    lines.append([(NODE_HEADER[:width], "reverse")])
    for r in loads[:room]:
        line = _node_line(r, per_node.get(int(r["node_id"]), 0))
        lines.append(_cut(line, width))
    if len(loads) > room:
        lines.append([(f" ... {len(loads) - room} more node(s)"[:width], "dim")])
    lines.append([(HEADER[:width].ljust(width), "reverse")])
    here = int(view["node_id"])
    for j in jobs[: max(0, height - len(lines))]:
        style = "dim" if j.get("stale") else "bold" if float(j["cpu"]) >= 50 else ""
        lines.append([(job_line(j, here, width), style)])
    return lines[:height]


def _cut(line: Line, width: int) -> Line:
    out: Line = []
    room = width
    for text, style in line:
        out.append((text[:room], style))
        room -= len(out[-1][0])
    return out
