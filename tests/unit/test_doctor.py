"""The doctor's checks, fed fakes: each says OK or what is wrong and how to fix it."""

from __future__ import annotations

import os
from pathlib import Path

from pymosix.doctor import (
    CAP_SYS_ADMIN,
    CAP_SYS_PTRACE,
    Status,
    can_run_node,
    check_criu,
    check_kernel_options,
    check_key,
    check_multicast,
    check_python_dependencies,
    check_root,
    effective_caps,
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
    (tmp_path / "self" / "map_files").mkdir(parents=True)
    checks = check_kernel_options(None, proc=tmp_path)
    assert checks[0].status is Status.OK
    assert "inferred" in checks[0].detail
    assert checks[1].status is Status.FAIL


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
