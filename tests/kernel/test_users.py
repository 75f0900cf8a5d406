"""Jobs of unprivileged users, as people run them: started by a user made for the test, moved
by hand and by the balancer, seeing themselves in /proc, steered by nobody else."""

from __future__ import annotations

import grp
import json
import pwd
import subprocess
from collections.abc import Callable, Iterator

import pytest

from pymosix.testbed import TestBed
from tests.kernel.conftest import wait_until
from tests.kernel.jobs import Job, MakeBed

pytestmark = pytest.mark.kernel

LOOP = ["perl", "-e", "$i=1; while($i) { $i++; }"]  # the seed's omtest.sh

#: Prints, every 50 ms: a count, its uid, gids, cwd, and what /proc says of itself.
SELF_REPORT = """
import os, time
i = 0
while True:
    i += 1
    status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
    print(i, os.getuid(), ",".join(map(str, sorted(os.getgroups()))), os.getcwd(),
          status["Pid"].strip(), os.readlink("/proc/self"), flush=True)
    time.sleep(0.05)
"""


@pytest.fixture
def extra_group(user: str) -> Iterator[int]:
    """A supplementary group the user is in."""
    name = f"{user}x"
    subprocess.run(["groupadd", name], check=True, capture_output=True, timeout=30)
    try:
        subprocess.run(["usermod", "-aG", name, user], check=True, capture_output=True, timeout=30)
        yield grp.getgrnam(name).gr_gid
    finally:
        subprocess.run(["groupdel", name], capture_output=True, timeout=30, check=False)


def rows(bed: TestBed, node: int, user: str | None = None) -> list[dict[str, object]]:
    out: list[dict[str, object]] = json.loads(bed.exec(node, ["mps", "--json"], user=user).stdout)[
        "jobs"
    ]
    return out


def host_uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        line = next(ln for ln in f if ln.startswith("Uid:"))
    return int(line.split()[1])


def test_a_users_job_moves_three_hops_as_that_user_and_sees_itself(
    make_bed: MakeBed, jobs: list[Job], user: str, extra_group: int
) -> None:
    bed = make_bed(3)
    pw = pwd.getpwnam(user)
    job = Job(bed, 1, ["python3", "-c", SELF_REPORT], user=user, cwd=str(bed.shared_dir))
    jobs.append(job)
    last = 0
    for target, node in (("0x640c", 1), ("0x640d", 2), ("home", 3), (None, 1)):
        for line in [job.lines.get(timeout=20) for _ in range(3)]:
            count, uid, groups, cwd, status_pid, proc_self = line.decode().split()
            assert int(count) == last + 1, "it went on counting: the same process, not a restart"
            last = int(count)
            assert int(uid) == pw.pw_uid
            assert str(extra_group) in groups.split(",")
            assert cwd == str(bed.shared_dir)
            # Its own /proc: PID 1 of its PID namespace, before and after every move.
            assert (status_pid, proc_self) == ("1", "1")
        hosted = [r for r in rows(bed, node) if r["home_pid"] == job.pid]
        assert hosted, f"node{node} lists the job"
        assert host_uid(int(str(hosted[0]["pid"]))) == pw.pw_uid
        if target is None:
            break
        r = job.migrate(target)
        assert r.returncode == 0, r.stderr
        for stale in job.drain_lines():
            last = int(stale.split()[0])


def test_the_seed_loops_of_a_user_spread_two_and_two(
    make_bed: MakeBed, user: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    bed = make_bed(2)
    for _ in range(4):
        procs.append(bed.popen(1, ["mosrun", *LOOP], user=user, stdout=subprocess.DEVNULL))
    # Polled from here, not with mps inside node1: a tool started there every poll would spend
    # node1's CPU, the very load the balancer watches.
    wait_until("4 jobs of the user", lambda: len(bed.call(1, "jobs")["jobs"]) == 4, 10.0)

    def spread() -> dict[int, int]:
        where: dict[int, int] = {}
        for j in bed.call(1, "jobs")["jobs"]:
            where[int(str(j["node"]))] = where.get(int(str(j["node"])), 0) + 1
        return where

    wait_until("two of the four run on node2", lambda: spread() == {0x640B: 2, 0x640C: 2}, 15.0)
    assert {r["user"] for r in rows(bed, 1, user)} == {user}
    for r in rows(bed, 2):
        assert host_uid(int(str(r["pid"]))) == pwd.getpwnam(user).pw_uid


def test_another_user_can_neither_move_nor_signal_nor_ask_about_a_job(
    make_bed: MakeBed, jobs: list[Job], make_user: Callable[..., str]
) -> None:
    owner, other = make_user(), make_user()
    bed = make_bed(2)
    # Locked (-L): only the people asked about may move it, not the balancer.
    job = Job(bed, 1, ["-L", *LOOP], user=owner)
    jobs.append(job)
    r = bed.exec(1, ["migrate", str(job.pid), "0x640c"], user=other)
    assert r.returncode != 0
    assert "another user" in r.stderr
    r = bed.exec(1, ["kill", "-TERM", str(job.pid)], user=other)
    assert r.returncode != 0
    r = bed.exec(1, ["mosctl", "cantmove", str(job.pid)], user=other)
    assert r.returncode != 0
    assert "another user" in r.stderr
    r = bed.exec(1, ["mosctl", "cantmove", str(job.pid)], user=owner)
    assert r.returncode == 0, r.stderr
    assert "nothing keeps it from moving" in r.stdout
    assert job.proc.poll() is None
    assert job.node() == 0x640B
    # Its owner and root may.
    assert job.migrate("0x640c").returncode == 0
    r = bed.exec(1, ["migrate", str(job.pid), "home"])
    assert r.returncode == 0, r.stderr
    assert job.node() == 0x640B


def test_a_users_job_has_the_users_umask(make_bed: MakeBed, user: str) -> None:
    bed = make_bed(1)
    r = bed.exec(1, ["sh", "-c", "umask 027 && mosrun sh -c umask"], user=user)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0027", "the job creates files as its user would, not as root"
