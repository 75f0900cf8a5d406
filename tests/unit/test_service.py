"""The service an admin installs: the unit (systemd-analyze verify), the generated node.toml,
install-service's flags (nothing starts unless --start), sd_notify, kept settings."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pymosix import flagstate, sdnotify
from pymosix.cli import install_service
from pymosix.config import NodeConfig, config_from_mapping, load_config
from pymosix.configdoc import field_docs, render, settings, unit_of
from pymosix.errors import ConfigError


def test_the_template_lists_every_setting_with_comment_unit_and_default() -> None:
    text = render()
    docs = field_docs()
    for f in settings():
        assert f"# {f.name} = " in text, f.name
        assert f.name in docs, f"NodeConfig.{f.name} has no #: comment in config.py"
        assert f"({unit_of(f)}; default " in text
    names = {f.name for f in dataclasses.fields(NodeConfig)} - {"extra"}
    assert {f.name for f in settings()} == names
    # All commented out: the file as written means the defaults.
    assert tomllib.loads(text) == {"node": {}}


def test_the_effective_config_round_trips(tmp_path: Path) -> None:
    cfg = NodeConfig(address="10.0.0.7", speed=15000, block=True, map_file=Path("/etc/x.map"))
    f = tmp_path / "node.toml"
    f.write_text(render(cfg, template=False))
    assert load_config(f) == cfg
    f.write_text(render(NodeConfig(), template=False))
    assert load_config(f) == NodeConfig()


def receiver(address: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + address[1:] if address.startswith("@") else address)
    s.settimeout(5)
    return s


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_sd_notify_reaches_the_socket(tmp_path: Path, kind: str) -> None:
    address = str(tmp_path / "notify") if kind == "path" else f"@pmx-notify-{os.getpid()}"
    with receiver(address) as s:
        assert sdnotify.notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": address})
        assert s.recv(4096) == b"READY=1\nSTATUS=up"
    assert not sdnotify.notify("READY=1", {})
    # A socket that went away is logged, not raised.
    assert not sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")})


def test_watchdog_period_is_half_and_only_for_us() -> None:
    assert sdnotify.watchdog_period_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert sdnotify.watchdog_period_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 8) is None
    assert sdnotify.watchdog_period_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 7) == 15.0
    assert sdnotify.watchdog_period_s({}) is None
    assert sdnotify.watchdog_period_s({"WATCHDOG_USEC": "0"}) is None


def test_kept_settings(tmp_path: Path) -> None:
    assert flagstate.read(tmp_path) == {}
    flagstate.keep(tmp_path, "block", True)
    flagstate.keep(tmp_path, "speed", 15000)
    assert flagstate.read(tmp_path) == {"block": True, "speed": 15000}
    with pytest.raises(ValueError, match="quiet cannot be kept"):
        flagstate.keep(tmp_path, "quiet", True)
    flagstate.path_in(tmp_path).write_text("{not json")
    with pytest.raises(ConfigError, match=r"settings\.json: unreadable"):
        flagstate.read(tmp_path)


def test_block_stay_lstay_are_settings() -> None:
    cfg = config_from_mapping({"block": "true", "stay": True, "lstay": "on"})
    assert (cfg.block, cfg.stay, cfg.lstay) == (True, True, True)


def run_install(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """install-service with a fake systemctl first in PATH that logs each call."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    fake = bindir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/systemctl.log\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    argv = ["--unit-dir", str(tmp_path / "units"), "--config-dir", str(tmp_path / "etc"), *extra]
    return subprocess.run(
        [sys.executable, "-m", "pymosix", "install-service", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_print_shows_the_unit_with_the_config_dir_and_writes_nothing(tmp_path: Path) -> None:
    r = run_install(tmp_path, "--print")
    assert r.returncode == 0, r.stderr
    assert (
        f"ExecStart={install_service.agent_executable()} node --config {tmp_path}/etc/node.toml"
        in r.stdout
    )
    assert "Type=notify" in r.stdout
    assert "WatchdogSec=" in r.stdout
    assert "KillMode=process" in r.stdout
    assert not (tmp_path / "units").exists()
    assert not (tmp_path / "etc").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="install-service writes as root")
def test_install_writes_unit_and_config_and_starts_nothing(tmp_path: Path) -> None:
    r = run_install(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "nothing started" in r.stdout
    assert not (tmp_path / "systemctl.log").exists()
    unit = (tmp_path / "units" / "pymosix.service").read_text()
    assert f"--config {tmp_path}/etc/node.toml" in unit
    assert f"ReadWritePaths=-{tmp_path}/etc" in unit
    assert (tmp_path / "etc" / "node.toml").read_text() == render()
    # An edited config is kept on a second run; --start starts it.
    (tmp_path / "etc" / "node.toml").write_text('[node]\naddress = "10.0.0.7"\n')
    r = run_install(tmp_path, "--start")
    assert r.returncode == 0, r.stderr
    assert "kept" in r.stdout
    assert (tmp_path / "etc" / "node.toml").read_text() == '[node]\naddress = "10.0.0.7"\n'
    calls = (tmp_path / "systemctl.log").read_text().splitlines()
    assert calls == ["daemon-reload", "enable --now pymosix"]


@pytest.mark.skipif(
    not shutil.which("systemd-analyze"), reason="no systemd-analyze (apt-get install systemd)"
)
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = tmp_path / "pymosix.service"
    unit.write_text(install_service.render_unit(install_service.agent_executable(), tmp_path))
    r = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    # Unknown or misspelt options are only warnings: there must be none.
    assert str(unit) not in r.stderr, r.stderr


def test_node_print_config_shows_file_and_flags(tmp_path: Path) -> None:
    f = tmp_path / "node.toml"
    f.write_text("[node]\nspeed = 12000\nblock = true\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pymosix",
            "node",
            "--config",
            str(f),
            "--address",
            "10.0.0.7",
            "--print-config",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    out = tmp_path / "effective.toml"
    out.write_text(r.stdout)
    assert load_config(out) == NodeConfig(address="10.0.0.7", speed=12000, block=True)
