"""Pool-wide views on a real 3-node bed: mps --all, mps -u and mtop ask every agent over the
channel, within a deadline, and name the nodes that did not answer."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import site
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pymosix
from pymosix.testbed import TestBed
from pymosix.testbed.bed import ROOT
from tests.kernel.conftest import wait_until

pytestmark = pytest.mark.kernel

MakeBed = Callable[..., TestBed]
LOOP = ["perl", "-e", "while (1) {}"]


def user_python() -> str:
    """An interpreter an unprivileged user may run (a venv's may live under root's home)."""
    v = sys.version_info
    for cand in (Path(sys.executable).resolve(), Path(f"/usr/bin/python{v.major}.{v.minor}")):
        if cand.exists() and all(p.stat().st_mode & 0o001 for p in [cand, *cand.parents]):
            return str(cand)
    pytest.skip(f"no Python {v.major}.{v.minor} that an unprivileged user may run")


def as_user(user: str, tool: str, *args: str) -> list[str]:
    """argv that runs a pymosix tool as `user`, with this checkout's code and packages."""
    path = ":".join([str(Path(pymosix.__file__).parents[1]), *site.getsitepackages()])
    code = f"import sys; from pymosix.cli.{tool} import main; sys.exit(main())"
    return [
        "env",
        f"PYTHONPATH={path}",
        "runuser",
        "-u",
        user,
        "--",
        user_python(),
        "-c",
        code,
        *args,
    ]


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=20)


def home_rows(bed: TestBed, node: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(bed.exec(node, ["mps", "--json"]).stdout)["jobs"]
    return rows


def start(
    bed: TestBed, node: int, procs: list[subprocess.Popen[bytes]], user: str | None = None
) -> int:
    """A locked (never moved by the balancer) loop started with mosrun at `node`; its home PID."""
    home = bed.node(node).node_id

    def ours() -> set[int]:
        return {r["home_pid"] for r in home_rows(bed, node) if r["home_node"] == home}

    before = ours()
    argv = ["mosrun", "-L", *LOOP] if user is None else as_user(user, "mosrun", "-L", *LOOP)
    p = bed.popen(node, argv, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    procs.append(p)
    wait_until("the job to start", lambda: bool(ours() - before), 15.0)
    return (ours() - before).pop()


def pool(bed: TestBed, node: int, *args: str) -> tuple[dict[str, Any], str, float]:
    """mps ARGS --json at `node`: the reply, what it said on stderr, and how long it took."""
    t0 = time.monotonic()
    r = bed.exec(node, ["mps", *args, "--json"], timeout_s=30)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    reply: dict[str, Any] = json.loads(r.stdout)
    return reply, r.stderr, took


def by_job(reply: dict[str, Any]) -> dict[tuple[int, int], dict[str, Any]]:
    return {(j["home_node"], j["home_pid"]): j for j in reply["jobs"]}


@contextlib.contextmanager
def hung(bed: TestBed, node: int) -> Iterator[None]:
    """The node's agent stopped (SIGSTOP): it holds its connections but answers nothing."""
    pid = bed.node(node).agent_pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def open_sockets_to_user(bed: TestBed) -> None:
    """Let an unprivileged user reach the bed's control sockets (they are 0666, the dirs 0700)."""
    os.chmod(ROOT / bed.name, 0o711)
    for n in bed.nodes:
        os.chmod(n.dir, 0o711)


def test_pool_views_name_every_job_and_every_silent_node(
    user: str, make_bed: MakeBed, started: list[subprocess.Popen[bytes]]
) -> None:
    # A silent node stays in the map for 10 s: time to see it time out before the map drops it.
    bed = make_bed(3, extra_args=["--set", "dead_after_ms=10000"])
    open_sockets_to_user(bed)
    n1, n2, n3 = (n.node_id for n in bed.nodes)
    a = start(bed, 1, started)
    b = start(bed, 2, started)
    c = start(bed, 1, started, user=user)
    r = bed.exec(1, ["migrate", str(a), hex(n3)])
    assert r.returncode == 0, r.stderr

    # From node3, every job with the node it runs on; the moved one is a guest there.
    reply, err, _ = pool(bed, 3, "--all")
    jobs = by_job(reply)
    assert set(jobs) == {(n1, a), (n2, b), (n1, c)}, reply
    assert jobs[(n1, a)]["node"] == n3
    assert jobs[(n1, a)]["guest"]
    assert jobs[(n2, b)]["node"] == n2
    assert not jobs[(n2, b)]["guest"]
    assert jobs[(n1, c)]["node"] == n1
    assert jobs[(n1, c)]["user"] == user
    assert reply["missing"] == []
    assert err == ""
    assert {n["node_id"] for n in reply["nodes"]} == {n1, n2, n3}
    text = bed.exec(3, ["mps", "--all"]).stdout.splitlines()
    assert text[0].split()[:4] == ["PID", "USER", "HOME", "NODE"]
    moved = next(ln for ln in text if ln.split()[0] == str(a))
    assert moved.split()[2:4] == [str(n1), "here"], text

    # -u: one user's jobs, cluster-wide, by name or uid; an unprivileged user may ask.
    mine, _, _ = pool(bed, 2, "-u", user)
    assert set(by_job(mine)) == {(n1, c)}
    uid = str(int(subprocess.run(["id", "-u", user], capture_output=True, text=True).stdout))
    assert set(by_job(pool(bed, 3, "-u", uid)[0])) == {(n1, c)}
    assert set(by_job(pool(bed, 3, "-u", "root")[0])) == {(n1, a), (n2, b)}
    theirs = bed.exec(3, as_user(user, "mps", "--all", "--json"), cwd="/")
    assert theirs.returncode == 0, theirs.stderr
    assert set(by_job(json.loads(theirs.stdout))) == {(n1, a), (n2, b), (n1, c)}

    # mtop, once, as JSON: the same jobs and every node's load.
    top = bed.exec(3, ["mtop", "--once", "--json"])
    assert top.returncode == 0, top.stderr
    t = json.loads(top.stdout)
    assert set(by_job(t)) == {(n1, a), (n2, b), (n1, c)}
    assert {n["node_id"] for n in t["loads"]} == {n1, n2, n3}
    screen = bed.exec(3, ["mtop", "--once", "--width", "100"]).stdout.splitlines()
    assert any("NODE" in ln for ln in screen)
    assert all(len(ln) <= 100 for ln in screen)

    # An agent that hangs: the answer comes within the deadline and names it.
    with hung(bed, 2):
        reply, err, took = pool(bed, 3, "--all", "--timeout", "1")
    assert took < 6, took
    assert reply["missing"] == [n2]
    assert f"no answer from node {n2}" in err
    assert "within 1 s" in err
    assert set(by_job(reply)) == {(n1, a), (n1, c)}
    wait_until("node2 to answer again", lambda: pool(bed, 3, "--all")[0]["missing"] == [], 15.0)

    # The node a moved job runs on hangs: the home's row stands in for it, marked stale.
    with hung(bed, 3):
        reply, err, _ = pool(bed, 1, "--all", "--timeout", "1")
    assert reply["missing"] == [n3]
    moved_row = by_job(reply)[(n1, a)]
    assert moved_row["stale"]
    assert moved_row["node"] == n3
    assert moved_row["reported_by"] == n1
    assert not by_job(reply)[(n2, b)]["stale"]
    wait_until("node3 to answer again", lambda: pool(bed, 1, "--all")[0]["missing"] == [], 15.0)

    # An agent that is gone: named as well, and the job it was home to still shows where it runs.
    bed.kill_agent(1)
    reply, err, took = pool(bed, 3, "--all", "--timeout", "2")
    assert took < 7, took
    assert reply["missing"] == [n1], reply
    assert f"no answer from node {n1}" in err
    silent = next(n for n in reply["nodes"] if n["node_id"] == n1)
    assert not silent["answered"]
    assert silent["error"]
    # Once the map drops it, it is still named: it left, so it was not asked.
    wait_until("node1 to leave node3's map", lambda: n1 not in map_of(bed, 3), 30.0)
    reply, _, _ = pool(bed, 3, "--all")
    assert reply["missing"] == [n1]
    assert "left the map" in next(n for n in reply["nodes"] if n["node_id"] == n1)["error"]
    # mosmon hides it, says so, and shows it dead on d.
    hidden = bed.exec(3, ["mosmon", "--once", "-V"]).stdout.splitlines()
    assert "1 dead or down hidden (d shows)" in hidden[0]
    shown = bed.exec(3, ["mosmon", "--once", "-V", "-d"]).stdout.splitlines()
    assert any(ln.split()[:1] == [str(n1)] and ln.endswith("| dead") for ln in shown), shown


def map_of(bed: TestBed, node: int) -> set[int]:
    return {int(n["node_id"]) for n in bed.call(node, "map")["nodes"]}
