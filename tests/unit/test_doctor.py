"""The doctor's checks, fed fakes: each says OK or what is wrong and how to fix it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pymosix.doctor import (
    CAP_CHECKPOINT_RESTORE,
    CAP_SYS_ADMIN,
    CAP_SYS_PTRACE,
    CAP_SYS_RESOURCE,
    Check,
    Status,
    can_run_node,
    check_capabilities,
    check_cpuset,
    check_criu,
    check_kernel_options,
    check_key,
    check_multicast,
    check_python_dependencies,
    check_root,
    default_route_interface,
    effective_caps,
    guarded,
    run_all,
)

FULL = 0x1FFFFFFFFFF  # CapEff of full root on a kernel whose cap_last_cap is 40
HERE = 0x1FFFEFFFFFF  # this machine's: all but CAP_SYS_RESOURCE


def test_root_and_caps() -> None:
    assert check_root(0).status is Status.OK
    not_root = check_root(1000)
    assert not_root.status is Status.FAIL
    assert "sudo" in not_root.line()
    assert effective_caps("Name:\tx\nCapEff:\t000001fffeffffff\n") == HERE


def test_capabilities_say_what_fails_without_each() -> None:
    ok = check_capabilities(FULL)
    assert ok.status is Status.OK
    for name in ("CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_CHECKPOINT_RESTORE", "CAP_SYS_RESOURCE"):
        assert name in ok.detail
    here = check_capabilities(HERE)
    assert here.status is Status.WARN, "root's jobs still move; users' jobs with rlimits do not"
    assert "CAP_SYS_RESOURCE" in here.detail
    assert "dumps users' jobs with the owner's real uid" in here.detail
    assert "--cap-add SYS_RESOURCE" in here.fix
    no_ptrace = check_capabilities(FULL & ~(1 << CAP_SYS_PTRACE))
    assert no_ptrace.status is Status.FAIL
    assert "ptrace" in no_ptrace.detail
    assert check_capabilities(FULL & ~(1 << CAP_SYS_ADMIN)).status is Status.FAIL
    # The kernel takes CAP_SYS_ADMIN for CAP_CHECKPOINT_RESTORE; without both, both are named.
    assert check_capabilities(FULL & ~(1 << CAP_CHECKPOINT_RESTORE)).status is Status.OK
    neither = check_capabilities(FULL & ~(1 << CAP_CHECKPOINT_RESTORE) & ~(1 << CAP_SYS_ADMIN))
    assert "CAP_CHECKPOINT_RESTORE" in neither.detail
    assert "CAP_SYS_ADMIN" in neither.detail
    # Before Linux 5.9 there is no CAP_CHECKPOINT_RESTORE to have.
    old = check_capabilities((1 << 38) - 1, cap_last_cap=37)
    assert old.status is Status.OK
    assert "CAP_CHECKPOINT_RESTORE" not in old.detail
    assert CAP_SYS_RESOURCE == 24


def test_kernel_options_from_config() -> None:
    good = check_kernel_options("CONFIG_CHECKPOINT_RESTORE=y\nCONFIG_USERFAULTFD=y\n")
    assert [c.status for c in good] == [Status.OK, Status.OK]
    bad = check_kernel_options("# CONFIG_CHECKPOINT_RESTORE is not set\n")
    assert bad[0].status is Status.FAIL
    assert bad[1].status is Status.WARN
    assert not can_run_node(bad)


def test_kernel_options_inferred(tmp_path: Path) -> None:
    checks = check_kernel_options(None, proc=tmp_path)
    assert checks[0].status is Status.FAIL
    assert "inferred" in checks[0].detail
    assert checks[1].status is Status.WARN, "no userfaultfd only rules out post-copy"


def test_criu_check_results(tmp_path: Path) -> None:
    fake = tmp_path / "criu"
    fake.write_text("#!/bin/sh\n")
    new = check_criu(str(fake), runner=lambda c: (True, "4.2.1", "Looks good."), kernel="6.18.4")
    assert new.status is Status.OK
    assert new.detail.startswith("4.2.1: jobs with sockets can move")
    old = check_criu(str(fake), runner=lambda c: (True, "4.1.1", "Looks good."), kernel="6.18.4")
    assert old.status is Status.WARN
    assert "4.1.1: jobs holding inet sockets cannot move on Linux >= 6.16" in old.detail
    assert "CRIU 4.2" in old.fix
    ok = check_criu(str(fake), runner=lambda c: (True, "4.1.1", "Looks good."), kernel="6.12.0")
    assert ok.status is Status.OK, "4.1 moves sockets on kernels before 6.16"
    assert "4.1.1" in ok.detail
    bad = check_criu(str(fake), runner=lambda c: (False, "3.17", "Unexpected rt vDSO area bounds"))
    assert bad.status is Status.FAIL
    assert "vDSO" in bad.line()
    assert "PYMOSIX_CRIU" in bad.line()
    missing = check_criu(str(tmp_path / "nope"), runner=lambda c: (True, "", ""))
    assert missing.status is Status.FAIL


def _iface(root: Path, name: str, flags: int) -> None:
    (root / name).mkdir()
    (root / name / "flags").write_text(f"0x{flags:x}\n")


def test_multicast_reads_flags_only(tmp_path: Path) -> None:
    _iface(tmp_path, "lo", 0x9)
    _iface(tmp_path, "eth0", 0x1003)
    _iface(tmp_path, "tun0", 0x1)
    assert check_multicast("", tmp_path).status is Status.OK
    assert check_multicast("tun0", tmp_path).status is Status.WARN
    assert "map_file" in check_multicast("tun0", tmp_path).fix
    assert check_multicast("wlan9", tmp_path).status is Status.FAIL


def test_key_mode(tmp_path: Path) -> None:
    key = tmp_path / "cluster.key"
    assert check_key(key).status is Status.WARN
    key.write_text("00" * 32)
    os.chmod(key, 0o644)
    loose = check_key(key)
    assert loose.status is Status.FAIL
    assert "chmod 600" in loose.fix
    os.chmod(key, 0o600)
    assert check_key(key).status is Status.OK


def test_python_dependencies() -> None:
    def importer(name: str) -> object:
        if name == "textual":
            raise ImportError(name)
        return object()

    c = check_python_dependencies(("psutil", "textual"), importer)
    assert c.status is Status.FAIL
    assert "textual" in c.detail


def test_kernel_options_inferred_from_proc(tmp_path: Path) -> None:
    (tmp_path / "self" / "ns").mkdir(parents=True)
    (tmp_path / "self" / "ns" / "pid").touch()
    (tmp_path / "sys" / "kernel").mkdir(parents=True)
    (tmp_path / "sys" / "kernel" / "ns_last_pid").touch()
    (tmp_path / "sys" / "vm").mkdir(parents=True)
    (tmp_path / "sys" / "vm" / "unprivileged_userfaultfd").touch()
    checks = check_kernel_options(None, proc=tmp_path)
    assert [c.status for c in checks] == [Status.OK, Status.OK]
    assert all("inferred" in c.detail for c in checks)
    (tmp_path / "sys" / "kernel" / "ns_last_pid").unlink()
    assert check_kernel_options(None, proc=tmp_path)[0].status is Status.FAIL


def test_multicast_prefers_the_default_route_interface(tmp_path: Path) -> None:
    _iface(tmp_path, "br0", 0x1003)
    _iface(tmp_path, "eth0", 0x3)  # up, no MULTICAST, and it carries the default route
    route = (
        "Iface\tDestination\tGateway\tFlags\n"
        "eth0\t00000000\t0164A8C0\t0003\n"
        "eth0\t0064A8C0\t00000000\t0001\n"
    )
    assert default_route_interface(route) == "eth0"
    assert default_route_interface("Iface\tDestination\n") == ""
    c = check_multicast("", tmp_path, default="eth0")
    assert c.status is Status.WARN
    assert "eth0" in c.detail
    assert check_multicast("", tmp_path).status is Status.OK  # no default route: first up one


def test_a_crashing_check_is_a_fail_line_not_a_traceback() -> None:
    def boom() -> Check:
        raise PermissionError("denied")

    [c] = guarded("cpuset", boom)
    assert c.status is Status.FAIL
    assert "denied" in c.detail


def test_without_root_nothing_privileged_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_subprocess(*a: object, **kw: object) -> None:
        raise AssertionError("ran a command without root")

    monkeypatch.setattr("pymosix.doctor.os.geteuid", lambda: 1000)
    monkeypatch.setattr("pymosix.doctor.subprocess.run", no_subprocess)
    checks = {c.name: c for c in run_all(Path("/nonexistent/key"))}
    assert checks["root"].status is Status.FAIL
    assert checks["criu"].status is Status.FAIL
    assert "root" in checks["netns"].fix
    assert not can_run_node(list(checks.values()))


def test_cli_brief_json_and_exit_status(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import pymosix.cli.doctor as cli

    fake = [
        Check("root", Status.OK, "uid 0"),
        Check("cluster key", Status.WARN, "missing", "pymosix keygen"),
    ]
    monkeypatch.setattr(cli, "run_all", lambda *a: fake)
    assert cli.main(["--brief", "--config", "/dev/null"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("WARN  cluster key: missing (fix: pymosix keygen)")
    assert "can run a node" in out[-1]
    assert len(out) == 2
    fake.append(Check("criu", Status.FAIL, "no criu found", "make setup"))
    assert cli.main(["--json", "--config", "/dev/null"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False
    assert data["checks"][2] == {
        "name": "criu",
        "status": "FAIL",
        "detail": "no criu found",
        "fix": "make setup",
    }
    assert cli.main(["--config", "/nonexistent.toml"]) == 2
    assert "no such config file" in capsys.readouterr().out


def _cgroup_files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_cgroup_line_tells_each_setup_apart(tmp_path: Path) -> None:
    v1 = check_cpuset(_cgroup_files(tmp_path / "v1", {"cpuset/cpuset.cpus": "0-1\n"}))
    assert (v1.name, v1.status) == ("cgroup", Status.OK)
    assert v1.detail.startswith("v1 cpuset")
    v2 = {"cgroup.controllers": "cpuset cpu io memory pids\n", "cgroup.subtree_control": ""}
    available = check_cpuset(_cgroup_files(tmp_path / "v2", v2))
    assert available.status is Status.OK
    assert "cpuset available" in available.detail
    delegated = v2 | {"cgroup.subtree_control": "cpuset cpu\n"}
    assert "delegated" in check_cpuset(_cgroup_files(tmp_path / "v2d", delegated)).detail
    bare = check_cpuset(_cgroup_files(tmp_path / "v2n", {"cgroup.controllers": "cpu io pids\n"}))
    assert bare.status is Status.WARN
    assert "without cpuset: bed nodes will share CPUs (CPU affinity is used instead)" in bare.detail
    hybrid = {"unified/cgroup.controllers": "\n", "cpu/cpu.shares": "1024\n"}
    assert "unified without cpuset" in check_cpuset(_cgroup_files(tmp_path / "h", hybrid)).detail
    (tmp_path / "none").mkdir()
    assert check_cpuset(tmp_path / "none").status is Status.WARN


def test_fixes_name_the_setup_step_of_where_the_code_runs(tmp_path: Path) -> None:
    from pymosix.install import reinstall_fix, setup_fix, source_tree

    clone = tmp_path / "clone"
    (clone / "src" / "pymosix").mkdir(parents=True)
    (clone / "Makefile").write_text("setup:\n")
    (clone / "pyproject.toml").write_text("")
    assert source_tree(clone / "src" / "pymosix") == clone
    assert setup_fix(clone / "src" / "pymosix") == f"run 'make setup' in {clone}"
    wheel = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "pymosix"
    wheel.mkdir(parents=True)
    (wheel.parent / "Makefile").write_text("")  # a stray Makefile beside it is not a clone
    assert source_tree(wheel) is None
    assert setup_fix(wheel) == "run 'sudo pymosix setup'"
    assert "make" not in reinstall_fix(wheel)
    assert "pip" in reinstall_fix(wheel)
