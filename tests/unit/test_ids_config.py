"""Node ids (the seed's numbering) and the typed config."""

from __future__ import annotations

from pathlib import Path

import pytest

from pymosix.config import NodeConfig, config_from_mapping, load_config
from pymosix.errors import ConfigError
from pymosix.ids import format_node_id, node_id_from_ip, parse_node_arg, parse_node_id


@pytest.mark.parametrize(
    ("address", "node_id"),
    [
        pytest.param("192.168.100.11", 25611, id="seed-node1"),
        pytest.param("192.168.100.55", 25655, id="seed-node2"),
        pytest.param("10.0.0.1", 1, id="low"),
    ],
)
def test_node_id_is_low_16_bits(address: str, node_id: int) -> None:
    assert node_id_from_ip(address) == node_id


def test_format_matches_showmap() -> None:
    assert format_node_id(25611) == "0x640b"
    assert format_node_id(1) == "0x0001"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("25611", 25611, id="decimal"),
        pytest.param("0x640b", 25611, id="hex"),
        pytest.param("192.168.100.12", 0x640C, id="ip"),
        pytest.param("home", "home", id="home"),
        pytest.param("HOME", "home", id="home-upper"),
    ],
)
def test_parse_node_arg(text: str, expected: object) -> None:
    assert parse_node_arg(text) == expected


@pytest.mark.parametrize("bad", ["", "0", "65536", "0xzz", "node2", "1.2.3.999"])
def test_parse_node_arg_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match=r"not|out of range"):
        parse_node_arg(bad)


def test_parse_node_id_rejects_negative() -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_node_id("-5")


def test_config_from_toml_and_overrides(tmp_path: Path) -> None:
    f = tmp_path / "node.toml"
    f.write_text('[node]\naddress = "192.168.100.11"\nhello_interval_ms = 250\ndiscovery = false\n')
    cfg = load_config(f, {"gossip-fanout": "5", "socket_path": str(tmp_path / "s")})
    assert cfg.address == "192.168.100.11"
    assert cfg.hello_interval_ms == 250
    assert cfg.discovery is False
    assert cfg.gossip_fanout == 5
    assert cfg.socket_path == tmp_path / "s"
    assert cfg.map_file is None
    assert NodeConfig().replace(speed=5).speed == 5


def test_config_rejects_unknown_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        config_from_mapping({"colour": "blue"})
    with pytest.raises(ConfigError, match="whole number"):
        config_from_mapping({"mcast_port": "seven"})
    with pytest.raises(ConfigError, match="true or false"):
        config_from_mapping({"discovery": "maybe"})
    bad = tmp_path / "bad.toml"
    bad.write_text("address = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
