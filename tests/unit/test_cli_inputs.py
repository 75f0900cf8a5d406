"""Every bad input to the real tools gives one line on stderr naming the fix, and no traceback.

Each `pymosix node` run is given an address that is on no interface (192.0.2.1, TEST-NET) and no
discovery, so that an input wrongly taken ends in a one-line refusal too, never in an agent.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

NODE = [sys.executable, "-m", "pymosix", "node", "--no-discovery", "--address", "192.0.2.1"]


def run(argv: list[str], tmp: Path, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(
        [*argv, "--socket", str(tmp / "c.sock"), "--state-dir", str(tmp / "state")]
        if argv[:4] == NODE[:4]
        else argv,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=tmp,
    )
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


FLAGS = [
    (["--set", "hello_interval_ms=0"], "hello_interval_ms = 0: must be from 50 to 60000 ms"),
    (["--set", "load_interval_ms=0"], "load_interval_ms = 0: must be from 100"),
    (["--set", "gossip_fanout=-1"], "gossip_fanout = -1: must be from 1 to 64"),
    (["--mcast-port", "70000"], "mcast_port = 70000: must be from 1 to 65535"),
    (["--set", "gossip_port=70000"], "gossip_port = 70000"),
    (["--set", "migration_port=0"], "migration_port = 0"),
    (["--set", "speed=-5"], "speed = -5: must be from 0"),
    (["--mcast-group", "10.0.0.1"], "not a multicast group"),
    (["--mcast-group", "nonsense"], "not an IPv4 address"),
    (["--address", "1.2.3"], "address: '1.2.3' is not an IPv4 address"),
    (["--address", "239.1.1.1"], "cannot be a node's address"),
    (["--address", "0.0.0.0"], "cannot be a node's address"),
    (["--address", "10.99.98.97"], "is not on any interface here"),
    (["--log-level", "LOUD"], "log_level: 'LOUD' is not one of DEBUG"),
    (["--set", "gossip_port=abc"], "expected a whole number"),
    (["--set", "hello_interval_ms=1.5"], "expected a whole number"),
    (["--set", "dead_after_ms=600"], "at least twice hello_interval_ms"),
    (["--set", "max_clock_skew_ms=0"], "max_clock_skew_ms = 0"),
    (["--set", "control_max_connections_per_uid=0"], "control_max_connections_per_uid = 0"),
    (["--set", "nosuch=1"], "unknown setting 'nosuch'"),
    (["--interface", "eth0/x"], "not an interface name"),
    (["--log-file", "/nonexistent/dir/x.log"], "cannot write it"),
]


@pytest.mark.parametrize(("flags", "message"), FLAGS, ids=[" ".join(f) for f, _ in FLAGS])
def test_node_flags(flags: list[str], message: str, tmp_path: Path) -> None:
    line = run([*NODE, *flags], tmp_path)
    assert line.startswith("pymosix node: ")
    assert message in line


FILES: list[tuple[str, bytes, str]] = [
    ("config", bytes(range(256)), "not a text file (not UTF-8); a config is TOML"),
    ("config", b"speed = = 3\n", "not valid TOML"),
    ("config", b"node = 5\n", "[node] must be a table"),
    ("config", b"speed = 1.5\n", "speed: expected a whole number, got 1.5"),
    ("config", b"key_file = 5\n", "key_file: expected a file path"),
    ("config", b"address = [1]\n", "address: expected a string"),
    ("config", b"[node]\ngossip_fanout = -1\n", "gossip_fanout = -1"),
    ("map-file", bytes(range(256)), "not a text file (not UTF-8); a map has lines"),
    ("map-file", b"1 10.0.0.1 1\n2 10.0.0.300 1\n", ":2: '10.0.0.300' is not an IPv4 address"),
    ("map-file", b"1 10.0.0.1\n", "expected 'NUMBER ADDRESS COUNT'"),
    ("map-file", b"1 255.255.255.255 2\n", "runs past the last IPv4 address"),
]


@pytest.mark.parametrize(("flag", "content", "message"), FILES)
def test_node_files(flag: str, content: bytes, message: str, tmp_path: Path) -> None:
    path = tmp_path / "input"
    path.write_bytes(content)
    line = run([*NODE, f"--{flag}", str(path)], tmp_path)
    assert str(path) in line
    assert message in line


def test_node_config_missing_or_a_directory(tmp_path: Path) -> None:
    assert "no such config file" in run([*NODE, "--config", str(tmp_path / "x")], tmp_path)
    assert "Is a directory" in run([*NODE, "--config", str(tmp_path)], tmp_path)
    assert "cannot read the map file" in run([*NODE, "--map-file", str(tmp_path)], tmp_path)


def test_config_file_error_names_the_file_but_flag_errors_do_not(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text("hello_interval_ms = 0\n")
    assert f"{cfg}: hello_interval_ms = 0" in run([*NODE, "--config", str(cfg)], tmp_path)
    cfg.write_text("speed = 100\n")
    line = run([*NODE, "--config", str(cfg), "--set", "speed=-1"], tmp_path)
    assert line == "pymosix node: speed = -1: must be from 0 to 10000000"


@pytest.mark.parametrize(
    ("tool", "message"),
    [
        (["mosctl", "status"], "no pymosix agent is running here"),
        (["mosctl", "setspeed", "-5"], "setspeed takes a whole number"),
        (["showmap"], "no pymosix agent is running here"),
        (["mosctl", "getload"], "no pymosix agent is running here"),
    ],
)
def test_tools_without_an_agent(tool: list[str], message: str, tmp_path: Path) -> None:
    env = {"PYMOSIX_SOCKET": str(tmp_path / "none.sock"), "PATH": str(Path(sys.executable).parent)}
    line = run([str(Path(sys.executable).parent / tool[0]), *tool[1:]], tmp_path, env)
    assert message in line
