"""Static map files, showmap's exact layout, and cluster keys."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pymosix.errors import ConfigError
from pymosix.keys import read_key, write_key
from pymosix.mapfile import load_map, parse_map
from pymosix.showmap import render_map


def test_map_file_with_counts_and_comments() -> None:
    text = "# the seed's two nodes\n1 192.168.100.11 1\n\n2 192.168.100.55 3  # three in a row\n"
    assert parse_map(text) == [
        (0x640B, "192.168.100.11"),
        (0x6437, "192.168.100.55"),
        (0x6438, "192.168.100.56"),
        (0x6439, "192.168.100.57"),
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("1 192.168.100.11\n", "expected 'NUMBER ADDRESS COUNT'", id="two-fields"),
        pytest.param("x 192.168.100.11 1\n", "node number 'x'", id="bad-number"),
        pytest.param("1 192.168.100.300 1\n", "not an IPv4 address", id="bad-ip"),
        pytest.param("1 10.0.0.1 0\n", "count '0'", id="zero-count"),
        pytest.param("1 10.0.0.1 1\n2 10.1.0.1 1\n", "already used", id="duplicate-id"),
        pytest.param("1 255.255.255.255 2\n", "runs past", id="past-end"),
    ],
)
def test_malformed_map_line_names_file_and_line(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_map("# header\n" + text, "/etc/openmosix.map")
    assert str(e.value).startswith("/etc/openmosix.map:")
    assert reason in str(e.value)


def test_missing_map_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_map(tmp_path / "none.map")


def test_showmap_layout_byte_for_byte() -> None:
    nodes = [
        {"node_id": 0x640B, "address": "192.168.100.11", "count": 1},
        {"node_id": 0x640C, "address": "192.168.100.12"},
    ]
    assert render_map(0x640B, nodes) == (
        "My Node-Id: 0x640b\n\nBase Node-Id Address          Count\n------------ ---------------- -----\n"
        "0x640b       192.168.100.11   1\n0x640c       192.168.100.12   1\n"
    )


def test_keys(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "cluster.key"
    key = write_key(path)
    assert read_key(path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="--force"):
        write_key(path)
    assert write_key(path, force=True) != key
    path.write_text("zz\n")
    with pytest.raises(ConfigError, match="hex digits"):
        read_key(path)
    with pytest.raises(ConfigError, match="keygen"):
        read_key(tmp_path / "missing")
