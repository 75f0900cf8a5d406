"""Cluster key files: validation with one line naming the fix, rotation, retirement, reloading."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pymosix.doctor import Status, check_key
from pymosix.errors import AuthError, ConfigError
from pymosix.keys import (
    ClusterKey,
    KeyRing,
    format_keys,
    load_keys,
    parse_keys,
    read_key,
    read_keys,
    retire,
    rotate,
    write_key,
)
from pymosix.wire.envelope import Envelope, seal, unseal

A, B, C = bytes(range(32)), bytes(range(1, 33)), bytes(range(2, 34))


def key_file(tmp_path: Path, text: str | bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "cluster.key"
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    os.chmod(path, mode)
    return path


def test_first_format_is_one_key_valid_forever(tmp_path: Path) -> None:
    ring = read_keys(key_file(tmp_path, A.hex() + "\n"))
    assert ring.current == A
    assert ring.all == (A,)
    assert ring.find(ClusterKey(A).key_id) == A


def test_format_round_trips() -> None:
    keys = [ClusterKey(A, 0), ClusterKey(B, 1_800_000_000)]
    assert parse_keys(format_keys(keys)) == keys


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        ("00" * 16 + "\n", 0o600, "is 16 bytes; a pymosix key is 32"),
        ("00" * 20 + "\n", 0o600, "is 20 bytes; a pymosix key is 32"),
        ("00" * 32 + "\n", 0o644, "chmod 600"),
        ("00" * 32 + "\n", 0o640, "chmod 600"),
        ("00" * 32 + "\n", 0o602, "chmod 600"),
        (os.urandom(200) + b"\xff", 0o600, "binary data"),
        (b"\0" * 64, 0o600, "binary data"),
        ("hello world\n", 0o600, "hex digits"),
        ("", 0o600, "no key in the file"),
        ("# nothing\n\n", 0o600, "no key in the file"),
        (A.hex() + " yesterday\n", 0o600, "start time"),
        (A.hex() + " 2026-01-01T00:00:00Z extra\n", 0o600, "fields"),
        (A.hex() + "\n" + A.hex() + "\n", 0o600, "listed twice"),
        ("".join(os.urandom(32).hex() + "\n" for _ in range(9)), 0o600, "--retire"),
        ("0" * 70_000, 0o600, "not a pymosix key file"),
    ],
)
def test_bad_key_files_are_refused_naming_the_fix(
    tmp_path: Path, content: str | bytes, mode: int, message: str
) -> None:
    path = key_file(tmp_path, content, mode)
    with pytest.raises(ConfigError, match=message) as e:
        read_keys(path)
    assert "\n" not in str(e.value)
    assert str(path) in str(e.value)


def test_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="regular file"):
        load_keys(tmp_path)
    link = tmp_path / "link"
    target = key_file(tmp_path, A.hex())
    link.symlink_to(target)
    assert load_keys(link)[0].secret == A, "a link is fine: the file it names is checked"
    os.chmod(target, 0o644)
    with pytest.raises(ConfigError, match="chmod"):
        load_keys(link)


def test_rotation_then_retirement(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    old = write_key(path, now=999_000)
    new = rotate(path, now=1_000_000, grace_s=600)
    assert new.start == 1_000_600
    before, after = read_keys(path, now=1_000_599), read_keys(path, now=1_000_600)
    assert before.current == old, "the new key signs only after the grace"
    assert after.current == new.secret
    assert set(before.all) == set(after.all) == {old, new.secret}, "both accepted throughout"
    with pytest.raises(ConfigError, match="signs only from"):
        retire(path, now=1_000_599)
    assert len(load_keys(path)) == 2, "an early retirement changes nothing"
    kept, dropped = retire(path, now=1_000_600)
    assert kept == new
    assert [k.secret for k in dropped] == [old]
    assert read_key(path) == new.secret
    assert retire(path, now=1_000_601)[1] == [], "nothing left to retire"
    assert (path.stat().st_mode & 0o777) == 0o600


def test_forced_early_retirement_signs_with_the_new_key_at_once(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    write_key(path, now=999_000)
    new = rotate(path, now=1_000_000, grace_s=600)
    retire(path, now=1_000_000, force=True)
    assert read_keys(path, now=1_000_000).current == new.secret


def test_refresh_follows_the_file_and_the_clock(tmp_path: Path) -> None:
    path = key_file(tmp_path, format_keys([ClusterKey(A, 0)]))
    ring = read_keys(path, now=100)
    assert ring.refresh(100) == []
    path.write_text(format_keys([ClusterKey(A, 0), ClusterKey(B, 200)]))
    os.utime(path, ns=(1, 1))  # a copy in the same clock tick still counts as a change
    assert "reloaded" in ring.refresh(150)[0]
    assert ring.all == (A, B)
    assert ring.current == A
    assert "now signing" in ring.refresh(200)[0]
    assert ring.current == B
    # A bad copy: said once, and the keys in use stay.
    path.write_text("00" * 16)
    (line,) = ring.refresh(201)
    assert "keeping the 2 key(s)" in line
    assert ring.refresh(202) == []
    assert ring.current == B


def test_datagrams_accept_any_key_of_the_ring() -> None:
    env = Envelope(1, 2, 3, 4, 5, {"a": "x"})
    ring = KeyRing([ClusterKey(A, 0), ClusterKey(B, 10)], now=20)
    assert unseal(ring.all, seal(A, env)) == env
    assert unseal(ring.all, seal(ring.current, env)) == env
    with pytest.raises(AuthError):
        unseal(ring.all, seal(C, env))


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        ("00" * 16 + "\n", 0o600, "key is 16 bytes"),
        ("00" * 20 + "\n", 0o600, "key is 20 bytes"),
        ("00" * 32 + "\n", 0o644, "fix: chmod 600"),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), 0o600, "binary data"),
    ],
)
def test_node_refuses_a_bad_key_with_one_line(
    tmp_path: Path, content: str | bytes, mode: int, message: str
) -> None:
    """The real CLI, before any socket is opened: one line on stderr, no traceback."""
    path = key_file(tmp_path, content, mode)
    (tmp_path / "map").write_text("1 127.0.0.1 1\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pymosix",
            "node",
            "--key-file",
            str(path),
            "--map-file",
            str(tmp_path / "map"),
            "--no-discovery",
            "--address",
            "127.0.0.1",
            "--state-dir",
            str(tmp_path / "state"),
            "--socket",
            str(tmp_path / "ctl.sock"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pymosix node: ")
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


def test_doctor_checks_the_key_as_the_agent_does(tmp_path: Path) -> None:
    path = key_file(tmp_path, "00" * 16 + "\n")
    check = check_key(path)
    assert check.status is Status.FAIL
    assert "16 bytes" in check.line()
    path.write_text(format_keys([ClusterKey(A, 0), ClusterKey(B, 0)]))
    assert check_key(path).status is Status.OK
    assert "2 key(s)" in check_key(path).line()
