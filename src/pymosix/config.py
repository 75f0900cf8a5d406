"""The node agent's one typed configuration: a TOML file, then command-line flags on top.

Every tunable lives here with its unit in its name; components receive this object and never
read files or the environment themselves.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymosix.errors import ConfigError

#: Where the tools look for the agent when PYMOSIX_SOCKET is not set (DESIGN.md §4).
DEFAULT_SOCKET = Path("/run/pymosix/control.sock")
DEFAULT_CONFIG_FILE = Path("/etc/pymosix/node.toml")
DEFAULT_KEY_FILE = Path("/etc/pymosix/cluster.key")
DEFAULT_STATE_DIR = Path("/var/lib/pymosix")
#: Where `make setup` unpacks Debian 13's criu when the system's does not work (DESIGN.md §3).
PROVISIONED_CRIU = Path("/opt/pymosix/criu/bin/criu")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything one node agent needs to know; built once, passed in."""

    #: This node's IPv4 address; its node id is the low 16 bits. Empty: the interface's first one.
    address: str = ""
    #: Interface for discovery and gossip; empty: the one that holds `address`.
    interface: str = ""
    key_file: Path = DEFAULT_KEY_FILE
    #: A static map in /etc/openmosix.map format; when set, discovery is off.
    map_file: Path | None = None
    state_dir: Path = DEFAULT_STATE_DIR
    socket_path: Path = DEFAULT_SOCKET
    #: Multicast discovery (omdiscd's job). Off: only the static map counts.
    discovery: bool = True
    mcast_group: str = "239.255.77.77"
    mcast_port: int = 7077
    #: Unicast UDP port for load gossip.
    gossip_port: int = 7078
    #: TCP port for the migration channel.
    migration_port: int = 7079
    #: How often a node announces itself; 4 announcements fit in the 2 s join bound.
    hello_interval_ms: int = 500
    #: A node not heard from for this long is dropped from the map (issue bound: 5 s).
    dead_after_ms: int = 3000
    #: Load sampling and dissemination period (openMosix sent load once a second).
    load_interval_ms: int = 1000
    #: Peers each node sends its load to per interval (openMosix: a few random ones, not all).
    gossip_fanout: int = 3
    #: A peer's load entry older than this is shown stale and ignored by the balancer.
    load_max_age_ms: int = 5000
    #: Relative CPU speed, openMosix units: 10000 is the reference machine. 0: measured at start
    #: (pymosix.load.speed, about 0.3 s of one CPU).
    speed: int = 0
    #: The criu binary; empty: PYMOSIX_CRIU, then the provisioned one, then PATH.
    criu: str = ""
    #: Prometheus text endpoint port on this node's address; 0 is off.
    metrics_port: int = 0
    #: Automatic load balancing.
    balance: bool = True
    log_level: str = "INFO"
    extra: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> NodeConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


_PATH_FIELDS = {"key_file", "map_file", "state_dir", "socket_path"}


def _coerce(name: str, value: Any, ftype: str) -> Any:
    if name in _PATH_FIELDS:
        return None if value in (None, "") and name == "map_file" else Path(str(value))
    if ftype == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if ftype == "int":
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a whole number, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a whole number, got {value!r}") from None
    if ftype == "str":
        return str(value)
    return value


def config_from_mapping(values: dict[str, Any], base: NodeConfig | None = None) -> NodeConfig:
    """Build a config from plain values (TOML table or flags), rejecting unknown keys."""
    base = base or NodeConfig()
    fields = {f.name: str(f.type) for f in dataclasses.fields(NodeConfig)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in fields or name == "extra":
            known = ", ".join(sorted(k for k in fields if k != "extra"))
            raise ConfigError(f"unknown setting {key!r}; known settings: {known}")
        changes[name] = _coerce(name, value, fields[name])
    return base.replace(**changes)


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> NodeConfig:
    """Read a TOML config file (top level or a ``[node]`` table), then apply overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        values = dict(data.get("node", data))
    try:
        cfg = config_from_mapping(values)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return config_from_mapping(overrides or {}, cfg)


def control_socket_path() -> Path:
    """The control socket the tools talk to: PYMOSIX_SOCKET, else the fixed default."""
    env = os.environ.get("PYMOSIX_SOCKET")
    return Path(env) if env else DEFAULT_SOCKET


def find_criu(configured: str = "") -> str | None:
    """The criu to use: the config key, PYMOSIX_CRIU, the provisioned one, then PATH."""
    import shutil

    for candidate in (configured, os.environ.get("PYMOSIX_CRIU", "")):
        if candidate:
            return candidate
    if PROVISIONED_CRIU.exists():
        return str(PROVISIONED_CRIU)
    return shutil.which("criu")
