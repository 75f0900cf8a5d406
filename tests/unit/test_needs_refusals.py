"""The target's check of a job's needs, the memory of refusals, and CPU time across moves: pure
logic, with made-up nodes."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from pymosix.ids import NodeId
from pymosix.migration.cputime import account, lowered
from pymosix.migration.hosted import JobMeta
from pymosix.migration.needs import (
    FileNeed,
    Here,
    Needs,
    elf_build_id,
    isa_flags,
    parse_version,
    refusal,
)
from pymosix.policy import ClusterSnapshot, JobView, NodeView, PolicyConfig, decide
from pymosix.refusals import STALE_OFFER, Refusals

NODE = 0x640C
LIB = FileNeed("/usr/lib/libfoo.so", "mapped", 1000, 1, 0o100644, "abcd")
DATA = FileNeed("/srv/data.csv", "open", 10, 5, 0o100644)


def needs(**kw: object) -> Needs:
    base: dict[str, object] = {
        "files": (LIB, DATA),
        "user": "alice",
        "uid": 1001,
        "gid": 1001,
        "cpu_flags": frozenset({"sse2", "avx2"}),
        "machine": "x86_64",
        "criu_version": (4, 2, 1),
        "mounts": ("/", "/home"),
        "image_bytes": 100 << 20,
    }
    base.update(kw)
    return Needs(**base)  # type: ignore[arg-type]


def here(**kw: object) -> Here:
    base: dict[str, object] = {
        "node_id": NODE,
        "files": {LIB.path: LIB, DATA.path: DATA},
        "users_by_name": {"alice": (1001, 1001)},
        "names_by_uid": {1001: "alice"},
        "cpu_flags": frozenset({"sse2", "avx2", "avx512f"}),
        "machine": "x86_64",
        "criu_version": (4, 2, 1),
        "missing_mounts": (),
        "free_image_bytes": 1 << 30,
    }
    base.update(kw)
    return Here(**base)  # type: ignore[arg-type]


def test_a_node_that_has_everything_takes_the_job() -> None:
    assert refusal(needs(), here()) is None


@pytest.mark.parametrize(
    ("here_kw", "says"),
    [
        (
            {"files": {LIB.path: LIB, DATA.path: None}},
            "the job has /srv/data.csv open; node 0x640c has no such file (use a shared file system",
        ),
        (
            {"files": {LIB.path: LIB, DATA.path: FileNeed(DATA.path, "open", 11, 5, 0o100644)}},
            "(10 bytes here, 11 there",
        ),
        (
            {"files": {LIB.path: LIB, DATA.path: FileNeed(DATA.path, "open", 10, 6, 0o100644)}},
            "modified at another time",
        ),
        (
            {
                "files": {
                    LIB.path: FileNeed(LIB.path, "mapped", 1000, 9, 0o100644, "ffff"),
                    DATA.path: DATA,
                }
            },
            "different build of it (build-id abcd here, ffff there: install the same packages",
        ),
        (
            {
                "files": {
                    LIB.path: FileNeed(LIB.path, "mapped", 1000, 9, 0o100644, "abcd"),
                    DATA.path: DATA,
                }
            },
            None,
        ),
        ({"users_by_name": {"alice": None}}, "user alice (uid 1001) does not exist on node 0x640c"),
        (
            {"users_by_name": {"alice": (2001, 1001)}},
            "user alice is uid 1001 here but uid 2001 on node 0x640c",
        ),
        ({"users_by_name": {"alice": (1001, 7)}}, "has gid 1001 here but gid 7"),
        ({"names_by_uid": {1001: "bob"}}, "uid 1001 is alice here but bob on node 0x640c"),
        ({"cpu_flags": frozenset({"sse2"})}, "node 0x640c's CPU lacks avx2"),
        ({"criu_version": (4, 1, 1)}, "node 0x640c has CRIU 4.1.1, older than the 4.2.1"),
        ({"criu_version": (4, 3)}, None),
        ({"missing_mounts": ("/home",)}, "a mount at /home; node 0x640c has no such path"),
        (
            {"free_image_bytes": 80 << 20},
            "node 0x640c has 80 MB free in /dev/shm for a 100 MB image",
        ),
        ({"machine": "aarch64"}, "the job runs on x86_64; node 0x640c is aarch64"),
    ],
)
def test_each_lack_is_refused_with_its_reason(here_kw: dict[str, object], says: str | None) -> None:
    got = refusal(needs(), here(**here_kw))
    if says is None:
        assert got is None
    else:
        assert got is not None
        assert says in got


def test_a_file_open_for_writing_needs_only_to_exist() -> None:
    log = FileNeed("/srv/out.log", "open-rw", None, None, 0o100644)
    grown = FileNeed("/srv/out.log", "open-rw", None, None, 0o100644)
    assert refusal(needs(files=(log,)), here(files={log.path: grown})) is None


def test_needs_survive_the_wire() -> None:
    n = needs()
    assert Needs.from_wire(n.to_wire()) == n
    with pytest.raises((KeyError, TypeError, ValueError)):
        Needs.from_wire({"files": [["x"]]})


def test_isa_flags_and_versions() -> None:
    text = "processor\t: 0\nflags\t\t: fpu sse2 avx2 constant_tsc hypervisor avx512f sha_ni\n"
    assert isa_flags(text) == {"sse2", "avx2", "avx512f", "sha_ni"}
    assert parse_version("Version: 4.2.1") == (4, 2, 1)
    assert parse_version("Version: 4.2") == (4, 2)
    assert parse_version("nothing") == ()


def test_the_build_id_of_a_real_binary_and_of_a_non_elf(tmp_path: Path) -> None:
    bid = elf_build_id("/bin/sh")
    assert bid is None or len(bid) >= 16
    (tmp_path / "x").write_bytes(b"#!/bin/sh\n")
    assert elf_build_id(str(tmp_path / "x")) is None
    (tmp_path / "bad").write_bytes(b"\x7fELF" + b"\x02\x01" + b"\xff" * 100)
    assert elf_build_id(str(tmp_path / "bad")) is None


def test_refusals_back_off_doubling_per_job_and_target() -> None:
    r = Refusals(base_s=10, max_s=40)
    r.record(7, NODE, "no file", now=0)
    assert r.refused_targets(7, 5) == {NODE}
    assert not r.stuck(7, 5)
    assert r.refused_targets(7, 10) == frozenset()
    r.record(7, NODE, "no file", now=10)
    assert r.refused_targets(7, 29) == {NODE}
    assert r.refused_targets(7, 30) == frozenset()
    for t in (30, 31, 32, 33):
        r.record(7, NODE, "no file", now=t)
    assert r.refused_targets(7, 33 + 39) == {NODE}, "capped at max_s"
    assert r.refused_targets(7, 33 + 40) == frozenset()
    r.record(7, None, "traced", now=100)
    assert r.stuck(7, 105)
    assert r.why(7) == "traced"
    r.cleared(7)
    assert r.why(7) is None
    assert not r.stuck(7, 105)


def test_a_stale_load_refusal_backs_off_for_a_gossip_round_not_ten_seconds() -> None:
    r = Refusals()
    r.record(7, NODE, f"the target refused: {STALE_OFFER}", now=0)
    assert r.refused_targets(7, 1.9) == {NODE}
    assert r.refused_targets(7, 2.0) == frozenset()
    r.record(7, NODE, f"the target refused: {STALE_OFFER}", now=2)
    assert r.refused_targets(7, 5.9) == {NODE}, "doubling as any other"
    assert r.refused_targets(7, 6.0) == frozenset()


def _snap(job: JobView) -> ClusterSnapshot:
    me = NodeView(NodeId(0x640B), 2.0, 10000, 1, 1 << 30, 1 << 29, 2, 0)
    peer = NodeView(NodeId(NODE), 0.0, 10000, 1, 1 << 30, 1 << 29, 0, 0)
    return ClusterSnapshot(
        NodeId(0x640B), 100.0, (job,), {NodeId(NODE): peer}, me, PolicyConfig(), ()
    )


def test_the_policy_leaves_refused_and_stuck_jobs_where_they_are() -> None:
    job = JobView(1, NodeId(0x640B), NodeId(0x640B), 60.0, 1.0, 1 << 20)
    assert [d.target for d in decide(_snap(job))] == [NODE]
    refused = JobView(
        1,
        NodeId(0x640B),
        NodeId(0x640B),
        60.0,
        1.0,
        1 << 20,
        refused_targets=frozenset({NodeId(NODE)}),
    )
    assert decide(_snap(refused)) == []
    stuck = JobView(1, NodeId(0x640B), NodeId(0x640B), 60.0, 1.0, 1 << 20, stuck=True)
    assert decide(_snap(stuck)) == []


def test_cpu_time_accounting_keeps_fractions_across_short_stays() -> None:
    meta = JobMeta(1, 0x640B, 1001, ["x"], 0.0)
    spent = [account(meta, {2: 0.6}) for _ in range(5)]
    assert [s[2] for s in spent] == [0, 1, 0, 1, 1], "floor of 0.6, 1.2, 1.8, 2.4, 3.0"
    assert meta.cpu_s == pytest.approx(3.0)
    assert meta.cpu_by_pid[2] == pytest.approx(3.0)
    assert JobMeta.from_wire(meta.to_wire()).cpu_by_pid == meta.cpu_by_pid


def test_lowered_limits() -> None:
    inf = resource.RLIM_INFINITY
    assert lowered((inf, inf), 5) is None
    assert lowered((3, inf), 1.5) == (2, inf)
    assert lowered((3, 3), 2) == (1, 1)
    assert lowered((3, 10), 5) == (1, 5), "never below one second"
