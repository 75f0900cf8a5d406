"""The doctor's checks, fed fakes: each says OK or what is wrong and how to fix it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pymosix.doctor import (
    CAP_SYS_ADMIN,
    CAP_SYS_PTRACE,
    Check,
    Status,
    can_run_node,
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

FULL = (1 << CAP_SYS_ADMIN) | (1 << CAP_SYS_PTRACE)


def test_root_and_caps() -> None:
    assert check_root(0, FULL).status is Status.OK
    not_root = check_root(1000, FULL)
    assert not_root.status is Status.FAIL
    assert "sudo" in not_root.line()
    assert "CAP_SYS_PTRACE" in check_root(0, 1 << CAP_SYS_ADMIN).detail
    assert effective_caps("Name:\tx\nCapEff:\t000001fffeffffff\n") == 0x1FFFEFFFFFF


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
    ok = check_criu(str(fake), runner=lambda c: (True, "4.1.1", "Looks good."))
    assert ok.status is Status.OK
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
