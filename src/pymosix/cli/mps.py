"""``mps``: the managed jobs, with openMosix's NODE column, the CPU TIME in all (across moves) and
WHY a job cannot move (the reasons follow the table). Alone: the jobs this node knows (home
jobs and guests). ``--all``: every job of the cluster, asked of the agents that run them.
``-u USER``: USER's jobs, cluster-wide. Nodes that did not answer in time are named on stderr;
a ``?`` after a job's state: the node it runs on did not answer, so its figures are the home's."""

from __future__ import annotations

import argparse
import pwd
import sys
from typing import Any

from pymosix.cli._common import print_json, run_tool
from pymosix.control_client import call
from pymosix.pool import DEFAULT_TIMEOUT_S, MAX_TIMEOUT_S

HEADER = f"{'PID':>7} {'USER':<8} {'HOME':>6} {'NODE':>6} {'STATE':<8} {'%CPU':>5} {'TIME':>7} {'RSS':>8} {'MIG':>3} {'WHY':<3} COMMAND"
LOCAL_HEADER = f"{'PID':>7} {'USER':<8} {'NODE':>6} {'STATE':<8} {'%CPU':>5} {'TIME':>7} {'RSS':>8} {'MIG':>3} {'WHY':<3} COMMAND"


def _where(node: int, here: int) -> str:
    return "here" if node == here else str(node)


def _rss(rss: int) -> str:
    return f"{rss // 1024}K" if rss else "-"


def _time(j: dict[str, Any]) -> str:
    return cpu_time(float(j.get("cpu_s") or 0.0))


def _why(j: dict[str, Any]) -> str:
    return "yes" if j.get("why") else "-"


def why_lines(jobs: list[dict[str, Any]]) -> list[str]:
    """After the table: the reason of each job that cannot move (openMosix's cantmove)."""
    return [f"{j['home_pid']:>7}: {j['why']}" for j in jobs if j.get("why")]


def job_line(j: dict[str, Any], here: int, width: int = 0) -> str:
    """One pool row: home PID, user, home node, node it runs on, ...; cut to `width` if given."""
    state = j["state"] + ("?" if j.get("stale") else "")
    line = (
        f"{j['home_pid']:>7} {j['user'][:8]:<8} {_where(j['home_node'], here):>6} "
        f"{_where(j['node'], here):>6} {state[:8]:<8} {j['cpu']:>5.1f} {_time(j):>7} "
        f"{_rss(j['rss']):>8} {j['migrations']:>3} {_why(j):<3} {j['command']}"
    )
    return line[:width] if width else line


def missing_lines(reply: dict[str, Any]) -> list[str]:
    """One line per node that did not answer, saying why."""
    return [
        f"no answer from node {n['node_id']} ({n['address']}): {n['error']}; its jobs may be missing"
        for n in reply["nodes"]
        if not n["answered"]
    ]


def pool_jobs(user: str | None, timeout_s: float) -> dict[str, Any]:
    """The cluster's jobs (of `user` if given) from this node's agent."""
    args: dict[str, Any] = {"deadline_s": timeout_s}
    if user is not None:
        args["user"] = user
    return call("pool_jobs", timeout_s=timeout_s + 10, **args)


def user_name(user: str) -> str:
    """A user given by name or uid, as the job rows name it."""
    if user.isdigit():
        try:
            return pwd.getpwuid(int(user)).pw_name
        except KeyError:
            return user
    return user


def print_local(r: dict[str, Any]) -> None:
    jobs = sorted(r["jobs"], key=lambda j: (j["guest"], j["home_pid"]))
    nodes = [
        f"guest({j['home_node']})" if j["guest"] else _where(j["node"], r["node_id"]) for j in jobs
    ]
    # A guest's "guest(25611)" widens the column rather than push the others out of line.
    w = max([6, *map(len, nodes)])
    print(LOCAL_HEADER.replace(f"{'NODE':>6}", f"{'NODE':>{w}}", 1))
    for j, node in zip(jobs, nodes, strict=True):
        print(
            f"{j['home_pid']:>7} {j['user'][:8]:<8} {node:>{w}} {j['state']:<8} {j['cpu']:>5.1f} {_time(j):>7} {_rss(j['rss']):>8} {j['migrations']:>3} {_why(j):<3} {j['command'][:60]}"
        )
    _print_whys(r["jobs"])


def print_pool(r: dict[str, Any]) -> None:
    print(HEADER)
    for j in r["jobs"]:
        print(job_line(j, r["node_id"], 140))
    _print_whys(r["jobs"])


def _print_whys(jobs: list[dict[str, Any]]) -> None:
    lines = why_lines(jobs)
    if lines:
        print()
        print("\n".join(lines))


def cpu_time(seconds: float) -> str:
    """CPU time as ps prints it: M:SS, or H:MM:SS past an hour."""
    s = int(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mps", description=__doc__)
    p.add_argument("--all", "-a", action="store_true", help="every job of the cluster")
    p.add_argument("-u", "--user", help="USER's jobs (name or uid), cluster-wide")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for the other nodes (default {DEFAULT_TIMEOUT_S:g}, at most {MAX_TIMEOUT_S:g})",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        if not args.all and args.user is None:
            r = call("jobs")
            if args.json:
                print_json({"node_id": r["node_id"], "jobs": r["jobs"]})
            else:
                print_local(r)
            return 0
        user = None if args.user is None else user_name(args.user)
        r = pool_jobs(user, args.timeout)
        if args.json:
            print_json({k: r[k] for k in ("node_id", "jobs", "nodes", "missing")})
        else:
            print_pool(r)
        for line in missing_lines(r):
            print(f"mps: {line}", file=sys.stderr)
        return 0

    return run_tool("mps", body)
