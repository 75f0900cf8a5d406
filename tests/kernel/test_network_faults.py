"""No job lost, none doubled, when the network itself fails (issue 16): packets dropped for real
with iptables inside the bed nodes' namespaces, not by the agents' fault hook, and a target whose
image directory is full."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time

import pytest

from pymosix.testbed import TestBed
from tests.kernel.conftest import wait_until
from tests.kernel.jobs import Job, MakeBed
from tests.kernel.test_reliability import (
    COUNT,
    _copies,
    _counts_on,
    _guest_pids,
    _moved_to_node2,
)

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(
        shutil.which("iptables") is None, reason="no iptables (make setup installs it)"
    ),
]


def iptables(bed: TestBed, node: int, *rule: str) -> None:
    """Add a rule in the node's own network namespace (gone with the namespace)."""
    bed.exec(node, ["iptables", "-w", *rule], check=True)


def test_a_restored_answer_lost_on_the_wire_leaves_one_copy(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    # Home node1, the job on node2, moved to node3; once node3 restores it, every packet from
    # node3 to node2 is dropped: its RESTORED, its beats, its FINs. Home, which node3 still
    # reaches, commits the move; node2 hears nothing and drops its frozen original.
    bed = make_bed(3)
    job, token = _moved_to_node2(bed, jobs)
    # Held back a moment (the hook) so that the rule is in place before it goes, then dropped
    # by the network.
    bed.set_faults(3, "delay RESTORED 2\n")
    move = bed.popen(
        1, ["migrate", str(job.pid), "0x640d"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_until(
            "the restore on node 3",
            lambda: bool(bed.glob(3, "/dev/shm/pymosix-640d-*/in-*/restore.log")),
            30.0,
            poll_s=0.005,
        )
        iptables(bed, 3, "-A", "OUTPUT", "-d", bed.node(2).address, "-j", "DROP")
        out, err = move.communicate(timeout=60)
    finally:
        if move.poll() is None:
            move.kill()
        move.wait()
    assert move.returncode == 0, err
    assert b"0x640d" in out
    assert job.node() == 0x640D
    # Node 2 lets its frozen original go (home, having committed, no longer hears it: the
    # doubt ends in dropping that copy, never in resuming it).
    wait_until("node 2 to let the job go", lambda: not _guest_pids(bed, 2, job.pid), 30)
    wait_until("one copy", lambda: _copies(token) == _guest_pids(bed, 3, job.pid), 10)
    _counts_on(job, 3)
    time.sleep(6)  # past every deadline of the move: still that one copy
    assert _copies(token) == _guest_pids(bed, 3, job.pid)
    _counts_on(job, 3)


def test_moves_under_packet_loss_leave_one_copy_and_the_output_whole(
    make_bed: MakeBed, jobs: list[Job], user: str
) -> None:
    # 5 % of the packets every node receives are dropped (the soak's packet loss). TCP carries
    # the moves through it; whatever fails must fail into one copy and an unbroken count.
    bed = make_bed(2)
    for i in (1, 2):
        iptables(
            bed, i, "-A", "INPUT", "-m", "statistic", "--mode", "random", "--probability", "0.05",
            "-j", "DROP",
        )  # fmt: skip
    token = f"pmx-loss-{secrets.token_hex(4)}"
    job = Job(bed, 1, ["python3", "-c", COUNT, token], user=user)  # moved by its user, too
    jobs.append(job)
    job.counts(2)
    moved = 0
    for target in ("0x640c", "home", "0x640c", "home"):
        r = job.migrate(target)
        moved += r.returncode == 0
        # (A frozen original lives on for a moment after the commit, until its node hears.)
        wait_until(f"one copy after {target}: {r.stderr}", lambda: len(_copies(token)) == 1, 20)
        _counts_on(job, 3)
    assert moved >= 2, "5 % loss should slow moves, not stop them"
    assert job.row() is not None


def test_a_full_image_directory_refuses_the_offer_before_anything_freezes(
    make_bed: MakeBed, jobs: list[Job]
) -> None:
    # node2's /dev/shm (where images arrive) holds 64 MiB; a 200 MiB job is refused by the
    # offer, named with both sizes, and never frozen.
    bed = make_bed(2)
    bed.exec(2, ["mount", "-o", "remount,size=64m", "/dev/shm"], check=True)
    big = "x = bytearray(b'\\x01') * (200 << 20)\n" + COUNT
    job = Job(bed, 1, ["python3", "-c", big, f"pmx-full-{secrets.token_hex(4)}"])
    jobs.append(job)
    job.counts(2)
    r = job.migrate("0x640c")
    assert r.returncode != 0
    assert "free" in r.stderr, r.stderr
    assert "0x640c" in r.stderr, r.stderr
    row = job.row()
    assert row is not None
    assert row["freezes"] == 0, "a refusal before the freeze costs the job nothing"
    assert job.node() == 0x640B
    _counts_on(job, 3)
