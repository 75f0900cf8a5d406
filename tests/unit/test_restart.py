"""Agent restarts (migration/restart.py, holder.py, orphans.py): which records a new agent keeps
for adoption, who may take a job back, and the holder's hello as the agent reads it."""

from __future__ import annotations

import array
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pymosix.migration import spool
from pymosix.migration.holder import Holder
from pymosix.migration.orphans import JobRecords, holder_answers
from pymosix.migration.restart import reattach_refusal


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()
    return p.pid


def test_a_job_whose_holder_answers_is_left_for_adoption_and_one_without_is_removed(
    tmp_path: Path,
) -> None:
    held = subprocess.Popen(["sleep", "60"])
    unheld = subprocess.Popen(["sleep", "60"])
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        dead = JobRecords(tmp_path, agent_pid=_dead_pid())
        live_holder, gone_holder = tmp_path / "hold-a.sock", tmp_path / "hold-b.sock"
        listening.bind(str(live_holder))
        listening.listen(1)
        gone_holder.touch()  # a holder that was killed left its socket file
        dead.record(held.pid, 0x640B, 11, {"holder": str(live_holder), "meta": {"uid": 5}})
        dead.record(unheld.pid, 0x640B, 12, {"holder": str(gone_holder)})
        # What a stopped agent kept of their output (spool.py): the adoptable job's stays.
        for pid in (held.pid, unheld.pid, 1):
            spool.write(dead.dir, pid, [(1, 0, b"out")])
        me = JobRecords(tmp_path)
        killed = me.sweep()
        assert [k["pid"] for k in killed] == [unheld.pid]
        assert unheld.wait(timeout=5) == -9
        assert held.poll() is None, "kept: its holder answers"
        (left,) = me.left
        assert (left["pid"], left["home_pid"], left["meta"]) == (held.pid, 11, {"uid": 5})
        assert Path(left["file"]).exists(), "the record stays until the job is adopted"
        assert not gone_holder.exists()
        assert sorted(dead.dir.glob("out-*.spool")) == [spool.path(dead.dir, held.pid)]
    finally:
        listening.close()
        for p in (held, unheld):
            p.kill()
            p.wait()


def test_holder_answers_only_where_something_listens(tmp_path: Path) -> None:
    assert not holder_answers(str(tmp_path / "none.sock"))
    assert not holder_answers(None)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(tmp_path / "h.sock"))
        s.listen(1)
        assert holder_answers(str(tmp_path / "h.sock"))


REC = {"meta": {"uid": 1000}, "home_start": 4242}


@pytest.mark.parametrize(
    ("rec", "uid", "started", "why"),
    [
        (REC, 1000, 4242, None),
        (None, 1000, 4242, "no job of this process"),
        (REC, 1001, 4242, "another user"),
        (REC, 0, 4242, "another user"),  # not even root takes over a user's mosrun
        (REC, 1000, 4243, "PID was reused"),
        (REC, 1000, None, "PID was reused"),
        ({"home_start": 4242}, 1000, 4242, "another user"),
    ],
)
def test_only_the_jobs_own_mosrun_takes_it_back(
    rec: dict[str, object] | None, uid: int, started: int | None, why: str | None
) -> None:
    got = reattach_refusal(rec, uid, started)
    assert (got is None) if why is None else (got is not None and why in got)


def _fake_holder(
    path: Path, hello: dict[str, object], fds: list[int], then: bytes
) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        line = (json.dumps(hello) + "\n").encode()
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        conn.sendmsg([line + then], anc)
        conn.recv(100)
        conn.close()
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_the_holders_hello_brings_the_pipes_and_a_status_that_came_early(tmp_path: Path) -> None:
    r, w = os.pipe()
    try:
        t = _fake_holder(
            tmp_path / "h.sock",
            {"t": "hello", "pid": 77, "fds": ["out_r", "in_w"], "status": None},
            [r, w],
            b'{"t": "exit", "status": 768}\n',
        )
        h = Holder.connect_sync(tmp_path / "h.sock")
        assert h.pid == 77
        assert set(h.fds) == {"out_r", "in_w"}
        os.write(h.fds["in_w"], b"x")
        assert os.read(h.fds["out_r"], 1) == b"x", "the same pipe, passed whole"
        assert os.get_inheritable(h.fds["out_r"]) is False
        assert h.status is None
        h._lines()  # what followed the hello: the exit status
        assert h.status == 768
        h.close_fds()
        h.release()
        t.join(5)
    finally:
        os.close(r)
        os.close(w)


def test_a_hello_whose_fds_do_not_match_its_names_is_refused(tmp_path: Path) -> None:
    r, w = os.pipe()
    try:
        _fake_holder(
            tmp_path / "h.sock",
            {"t": "hello", "pid": 77, "fds": ["out_r", "in_w", "err_r"], "status": None},
            [r, w],
            b"",
        )
        with pytest.raises(OSError, match="sent 2 fds"):
            Holder.connect_sync(tmp_path / "h.sock")
    finally:
        os.close(r)
        os.close(w)
