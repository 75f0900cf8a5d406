"""The target says yes before anything freezes: a node that lacks the job's file, user or CPU
feature refuses the offer with the reason, the job goes on where it was, never frozen; the
balancer leaves it in peace and mps says why. And CPU time adds up across moves."""

from __future__ import annotations

import json
import pwd
import time
from pathlib import Path

import pytest

from pymosix.migration.needs import isa_flags
from pymosix.testbed import TestBed
from tests.kernel.conftest import wait_until
from tests.kernel.jobs import HOLDS, Job, MakeBed

pytestmark = pytest.mark.kernel


def in_node(bed: TestBed, node: int, script: str) -> None:
    """Run a root shell script inside a node (its mount namespace: changes stay there)."""
    r = bed.exec(node, ["sh", "-c", script])
    assert r.returncode == 0, r.stderr


def row(job: Job) -> dict[str, object]:
    r = job.row()
    assert r is not None
    return r


def test_a_file_in_node1s_private_tmp_keeps_the_job_home_unfrozen_and_mps_says_why(
    make_bed: MakeBed, jobs: list[Job], user: str
) -> None:
    bed = make_bed(2)
    in_node(bed, 1, f"echo 1,2,3 > /tmp/data.csv && chown {user} /tmp/data.csv")
    job = Job(bed, 1, ["python3", "-c", HOLDS, "/tmp/data.csv"], user=user)
    jobs.append(job)
    job.counts(2)
    r = job.migrate("0x640c")
    assert r.returncode != 0
    assert "the job has /tmp/data.csv open; node 0x640c has no such file" in r.stderr
    assert "shared file system" in r.stderr
    # Now the balancer: a second, locked loop makes node1 busy and node2 idle, so it wants to
    # move this job; the refusal is remembered and nothing is frozen, then or later.
    jobs.append(Job(bed, 1, ["-L", "perl", "-e", "$i=1; while($i){$i++}"], user=user))
    time.sleep(6)  # several balancing rounds: what is asserted is what did NOT happen
    assert row(job)["node"] == 0x640B
    assert row(job)["freezes"] == 0, "a refusal before the freeze costs the job nothing"
    assert "no such file" in str(row(job)["why"])
    mps = bed.exec(1, ["mps"], user=user).stdout
    assert "/tmp/data.csv" in mps
    cm = bed.exec(1, ["mosctl", "cantmove", str(job.pid)], user=user)
    assert cm.returncode == 0
    assert "/tmp/data.csv" in cm.stdout
    before = job.drain_ints()
    after = job.counts(1)
    if before:
        assert after[0] == before[-1] + 1, "it went on where it was"


def test_another_uid_for_the_same_user_on_the_target_is_refused(
    make_bed: MakeBed, jobs: list[Job], user: str
) -> None:
    bed = make_bed(2)
    pw = pwd.getpwnam(user)
    other = pw.pw_uid + 1000
    # node2 has its own user database, as a separate machine would: the same name, another uid.
    in_node(
        bed,
        2,
        f"sed 's/^{user}:x:{pw.pw_uid}:/{user}:x:{other}:/' /etc/passwd > /tmp/passwd && "
        "mount --bind /tmp/passwd /etc/passwd",
    )
    job = Job(
        bed, 1, ["perl", "-e", '$|=1; while(1){$i++; print "$i\\n" if $i % 3e6 == 0}'], user=user
    )
    jobs.append(job)
    job.counts(1)
    r = job.migrate("0x640c")
    assert r.returncode != 0
    assert f"user {user} is uid {pw.pw_uid} here but uid {other} on node 0x640c" in r.stderr
    assert row(job)["freezes"] == 0
    assert row(job)["node"] == 0x640B


def test_a_cpu_lacking_a_feature_is_refused_before_the_dump(
    make_bed: MakeBed, jobs: list[Job], user: str
) -> None:
    bed = make_bed(2)
    flags = sorted(isa_flags(Path("/proc/cpuinfo").read_text()))
    assert flags, "this CPU reports instruction-set flags"
    drop = flags[-1]
    # node2's CPU, as its agent sees it, lacks one feature node1 has.
    in_node(
        bed,
        2,
        f"sed -E 's/ {drop}( |$)/ /g' /proc/cpuinfo > /tmp/cpuinfo && "
        "mount --bind /tmp/cpuinfo /proc/cpuinfo",
    )
    job = Job(
        bed, 1, ["perl", "-e", '$|=1; while(1){$i++; print "$i\\n" if $i % 3e6 == 0}'], user=user
    )
    jobs.append(job)
    job.counts(1)
    r = job.migrate("0x640c")
    assert r.returncode != 0
    assert f"node 0x640c's CPU lacks {drop}" in r.stderr
    assert row(job)["freezes"] == 0
    # Back on a like CPU, the same job moves.
    in_node(bed, 2, "umount /proc/cpuinfo")
    r = job.migrate("0x640c")
    assert r.returncode == 0, r.stderr
    # Home hears the count from the job's new node with its first figures.
    wait_until("home to count the one freeze", lambda: row(job)["freezes"] == 1, 10.0)


def test_cpu_time_adds_up_across_moves_and_ulimit_t_holds_for_the_total(
    make_bed: MakeBed, jobs: list[Job], user: str
) -> None:
    bed = make_bed(2)
    script = bed.shared_dir / "spin.pl"
    script.write_text('$|=1; $i=1; while($i){$i++; print "$i\\n" if $i % 20000000 == 0}\n')
    script.chmod(0o644)
    # bash stays the job's PID 1; its child perl gets the limit, and SIGXCPU when it is spent.
    job = Job(bed, 1, ["bash", "-c", f"ulimit -S -t 3; perl {script}; exit $?"], user=user)
    jobs.append(job)
    start = time.monotonic()
    moves = 0
    totals: list[float] = []
    target = "0x640c"
    # A move every 0.8 s: no node ever sees 3 s of its CPU time, only the total reaches it.
    while job.proc.poll() is None and time.monotonic() - start < 60:
        time.sleep(0.8)
        if job.migrate(target).returncode == 0:
            moves += 1
            target = "home" if target == "0x640c" else "0x640c"
        rows = json.loads(bed.exec(1, ["mps", "--json"], user=user).stdout)["jobs"]
        if rows:
            totals.append(float(rows[0]["cpu_s"]))
    wait_until("the job to end", lambda: job.proc.poll() is not None, 30.0)
    assert moves >= 2, "it moved while it used its CPU time"
    assert job.proc.returncode == 128 + 24, "perl was stopped by SIGXCPU: the limit held"
    assert totals == sorted(totals), f"mps's CPU time never goes back: {totals}"
    # Each stay used under a second of CPU (a move every 0.8 s): more than that in all is the
    # sum of several nodes' time.
    assert totals[-1] >= 1.2, totals


def test_images_at_rest_are_root_only_and_gone_after_the_move(
    make_bed: MakeBed, jobs: list[Job], user: str
) -> None:
    bed = make_bed(2)
    big = (
        "import time\nx = bytearray(b'\\x01') * (300 << 20)\ni = 0\n"
        "while True:\n    i += 1\n    print(i, flush=True)\n    time.sleep(0.05)\n"
    )
    job = Job(bed, 1, ["python3", "-c", big], user=user)
    jobs.append(job)
    job.counts(2)
    move = bed.popen(1, ["migrate", str(job.pid), "0x640c"], user=user)
    seen: list[str] = []
    try:
        pattern = "/dev/shm/pymosix-640c-*/in-*"
        script = f'for p in {pattern} {pattern}/*; do [ -e "$p" ] && stat -c "%a %U %n" "$p"; done'

        def images_seen() -> bool:
            seen[:] = bed.exec(2, ["sh", "-c", script]).stdout.split("\n")
            return any("pages-" in line for line in seen)

        wait_until("the image arriving on node2", images_seen, 30.0, poll_s=0.01)
    finally:
        assert move.wait(timeout=120) == 0
    for line in filter(None, seen):
        mode, owner, path = line.split(" ", 2)
        assert owner == "root", line
        # /dev/shm/pymosix-NODE-PID/in-JOB is the directory; the files are one level below.
        assert mode == ("700" if path.count("/") == 4 else "600"), line
    assert bed.glob(2, "/dev/shm/pymosix-640c-*/in-*") == [], "nothing is left once the job runs"
    assert bed.glob(1, "/dev/shm/pymosix-640b-*/out-*") == []


def test_a_move_asked_for_a_job_that_exits_meanwhile_ends_at_once(
    make_bed: MakeBed, jobs: list[Job], user: str
) -> None:
    """The target is slow to answer the offer; the job exits meanwhile: `migrate` says so and
    ends, it does not wait out its 300 s (CI: a job that hit its CPU limit mid-move)."""
    bed = make_bed(2)
    job = Job(
        bed, 1, ["python3", "-c", "import time; print(1, flush=True); time.sleep(2)"], user=user
    )
    jobs.append(job)
    job.counts(1)
    bed.set_faults(2, "delay READY 5\n")
    t0 = time.monotonic()
    r = job.migrate("0x640c")
    assert r.returncode != 0
    assert "the job exited meanwhile" in r.stderr
    assert time.monotonic() - t0 < 10
    assert job.proc.wait(timeout=10) == 0
