"""Orphan removal (migration/orphans.py): what a dead agent left running goes, nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from pymosix.migration.orphans import JobRecords, start_time


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()
    return p.pid


def test_a_dead_agents_jobs_are_removed_and_a_live_agents_kept(tmp_path: Path) -> None:
    orphan = subprocess.Popen(["sleep", "60"])
    kept = subprocess.Popen(["sleep", "60"])
    try:
        dead = JobRecords(tmp_path, agent_pid=_dead_pid())
        dead.record(orphan.pid, 0x640C, 1234)
        live = JobRecords(tmp_path, agent_pid=kept.pid)  # an agent that still runs
        live.record(kept.pid, 0x640C, 99)
        me = JobRecords(tmp_path)
        killed = me.sweep()
        assert [k["pid"] for k in killed] == [orphan.pid]
        assert killed[0]["home_pid"] == 1234
        assert orphan.wait(timeout=5) == -9
        assert kept.poll() is None
        assert [f.name for f in (tmp_path / "jobs").iterdir()] == [f"{kept.pid}-{kept.pid}.json"]
    finally:
        for p in (orphan, kept):
            p.kill()
            p.wait()


def test_a_reused_pid_is_never_touched(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "60"])
    try:
        dead = JobRecords(tmp_path, agent_pid=_dead_pid())
        dead.record(other.pid, 0x640C, 1)
        rec_path = next((tmp_path / "jobs").iterdir())
        rec = json.loads(rec_path.read_text())
        started = start_time(other.pid)
        assert started is not None
        assert rec["start"] == started
        rec["start"] = started - 1  # the job that had this PID started earlier
        rec_path.write_text(json.dumps(rec))
        assert JobRecords(tmp_path).sweep() == []
        assert other.poll() is None
        assert not rec_path.exists()
    finally:
        other.kill()
        other.wait()


def test_forget_removes_the_record(tmp_path: Path) -> None:
    p = subprocess.Popen(["sleep", "60"])
    try:
        r = JobRecords(tmp_path)
        r.record(p.pid, 1, 2)
        r.forget(p.pid)
        assert not list((tmp_path / "jobs").iterdir())
    finally:
        p.kill()
        p.wait()


def test_a_zombie_agents_jobs_are_removed(tmp_path: Path) -> None:
    """An agent killed a moment ago may still be a zombie when the next one starts."""
    orphan = subprocess.Popen(["sleep", "60"])
    zombie = subprocess.Popen([sys.executable, "-c", ""])
    try:
        for _ in range(5000):  # it exits at once; not yet reaped, so a zombie
            if Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.001)
        JobRecords(tmp_path, agent_pid=zombie.pid).record(orphan.pid, 0x640C, 7)
        assert [k["pid"] for k in JobRecords(tmp_path).sweep()] == [orphan.pid]
        assert orphan.wait(timeout=5) == -9
    finally:
        for p in (orphan, zombie):
            p.kill()
            p.wait()
