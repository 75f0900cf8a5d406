"""The node agent's one typed configuration: a TOML file, then command-line flags on top.

Every tunable lives here with its unit in its name; components receive this object and never
read files or the environment themselves.
"""

from __future__ import annotations

import dataclasses
import ipaddress
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
#: Where `make setup` or `pymosix setup` unpacks Debian's criu (provision-criu.sh, DESIGN.md §3).
PROVISIONED_CRIU = Path("/opt/pymosix/criu/bin/criu")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything one node agent needs to know; built once, passed in."""

    #: This node's IPv4 address; its node id is the low 16 bits. Empty: the first one of
    #: `interface`, else of the default route's interface (never a container bridge).
    address: str = ""
    #: Interface for discovery and gossip; empty: the one that holds `address`, else the
    #: default route's.
    interface: str = ""
    #: The cluster's shared secret (the same file on every node; made on first start if missing).
    key_file: Path = DEFAULT_KEY_FILE
    #: A static map in /etc/openmosix.map format; when set, discovery is off.
    map_file: Path | None = None
    #: Where the agent keeps migration images and settings saved with `mosctl ... --persist`.
    state_dir: Path = DEFAULT_STATE_DIR
    #: The control socket the tools talk to.
    socket_path: Path = DEFAULT_SOCKET
    #: Multicast discovery (omdiscd's job). Off: only the static map counts.
    discovery: bool = True
    #: Multicast group of discovery (the same on every node).
    mcast_group: str = "239.255.77.77"
    #: UDP port of discovery.
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
    #: A measured speed is measured again while this node's CPUs are idle, at most this often,
    #: keeping the best reading (load only lowers one; pymosix.load.speedwatch). 0: never.
    speed_recheck_s: int = 600
    #: Refuse guests from the start (mosctl block); `mosctl ... --persist` overrides these four.
    block: bool = False
    #: No automatic migration away from this node (mosctl stay).
    stay: bool = False
    #: Local jobs stay here; guests may leave (mosctl lstay).
    lstay: bool = False
    #: The criu binary; empty: PYMOSIX_CRIU, then the provisioned one, then PATH.
    criu: str = ""
    #: Prometheus text endpoint port on this node's address; 0 is off.
    metrics_port: int = 0
    #: The web monitor's port (docs/web.md); 0 is off.
    web_port: int = 0
    #: The address the web monitor listens on; empty: this node's address.
    web_address: str = ""
    #: Who besides root may log in to the web monitor (each with a token `pymosix web-token`
    #: prints them): user names separated by commas, "*" for every local user, empty for none.
    web_users: str = ""
    #: Largest job image this node takes from another, in MiB (pages and all: its memory).
    max_image_mib: int = 65536
    #: Jobs with at least this much resident memory (MiB) move by post-copy: they run on the
    #: target once their small images arrived, their memory follows on demand (both nodes need
    #: CRIU >= 4.2 and fs.pipe-max-size >= 4 MiB or CAP_SYS_RESOURCE). 0: never, the default:
    #: a post-copy job dies if its old node or the link fails before all its memory has come
    #: (docs/migration.md); 512 trades that risk for a 1 GB job frozen 0.3 s instead of 4 s.
    postcopy_min_mib: int = 0
    #: Automatic load balancing.
    balance: bool = True
    #: The agent's nice value (its CPU share against its jobs, which run at mosrun's): below 0, a
    #: node full of jobs still answers, gossips and moves them promptly.
    agent_nice: int = -5
    #: Seconds between checkpoints of this node's jobs while they run on other nodes, sent
    #: here; if such a node is lost, the job goes on here from its last one (mosrun -C sets it
    #: per job; docs/reliability.md). 0 is off; 1 to 86400 s.
    checkpoint_interval: int = 0
    #: DEBUG, INFO, WARNING or ERROR.
    log_level: str = "INFO"
    #: A datagram stamped further than this from this node's clock is refused (and warned about).
    max_clock_skew_ms: int = 30_000
    #: Control socket: connections one non-root user may hold (each running mosrun holds one).
    control_max_connections_per_uid: int = 256
    #: Control socket: connections all non-root users together may hold (root has its own).
    control_max_connections: int = 1024
    #: Control socket: requests one non-root user may have in flight (a running mosrun is one).
    control_max_requests_per_uid: int = 256
    #: Control socket: a connection that sends no complete request for this long is closed.
    control_idle_timeout_ms: int = 60_000
    #: For tests only: shifts the timestamps this agent stamps on its datagrams, to play a node
    #: with a wrong clock on a test bed (its namespaces share the host's clock). Leave at 0.
    test_clock_offset_ms: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> NodeConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


_PATH_FIELDS = {"key_file", "map_file", "state_dir", "socket_path"}

#: Whole-number settings: (lowest, highest, unit) — checked by `validate`.
RANGES: dict[str, tuple[int, int, str]] = {
    "mcast_port": (1, 65535, ""),
    "gossip_port": (1, 65535, ""),
    "migration_port": (1, 65535, ""),
    "metrics_port": (0, 65535, ""),
    "hello_interval_ms": (50, 60_000, "ms"),
    "dead_after_ms": (200, 600_000, "ms"),
    "load_interval_ms": (100, 60_000, "ms"),
    "gossip_fanout": (1, 64, ""),
    "load_max_age_ms": (100, 3_600_000, "ms"),
    "speed": (0, 10_000_000, ""),  # 0: measured at start
    "speed_recheck_s": (0, 86_400, "s"),  # 0: never
    "agent_nice": (-20, 19, ""),
    "max_clock_skew_ms": (1000, 3_600_000, "ms"),
    "control_max_connections_per_uid": (1, 65536, ""),
    "control_max_connections": (1, 65536, ""),
    "control_max_requests_per_uid": (1, 65536, ""),
    "control_idle_timeout_ms": (1000, 86_400_000, "ms"),
    "test_clock_offset_ms": (-86_400_000, 86_400_000, "ms"),
    "max_image_mib": (16, 16 * 1024 * 1024, "MiB"),
    "checkpoint_interval": (0, 86_400, "s"),  # 0: off
    "postcopy_min_mib": (0, 16 * 1024 * 1024, "MiB"),
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _coerce(name: str, value: Any, ftype: str) -> Any:
    if name in _PATH_FIELDS:
        if value in (None, "") and name == "map_file":
            return None
        if not isinstance(value, str) or not value or "\0" in value:
            raise ConfigError(f"{name}: expected a file path, got {value!r}")
        return Path(value)
    if ftype == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if ftype == "int":
        if isinstance(value, (bool, float)):
            raise ConfigError(f"{name}: expected a whole number, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a whole number, got {value!r}") from None
    if ftype == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    return value


def _check_address(name: str, value: str, multicast: bool) -> None:
    try:
        ip = ipaddress.IPv4Address(value)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not an IPv4 address (like 192.168.1.10)") from None
    if multicast and not ip.is_multicast:
        raise ConfigError(
            f"{name}: {value} is not a multicast group (use one in 224.0.0.0/4, like 239.255.77.77)"
        )
    # Loopback stays allowed: a lone node on 127.0.0.1 is a way to try the tools.
    if not multicast and (ip.is_multicast or ip.is_unspecified):
        raise ConfigError(f"{name}: {value} cannot be a node's address (use its LAN address)")


def validate(cfg: NodeConfig) -> NodeConfig:
    """The config if every value is in range, else ConfigError naming the setting and the fix."""
    for name, (low, high, unit) in RANGES.items():
        value = getattr(cfg, name)
        if not low <= value <= high:
            what = f"{low} to {high}" + (f" {unit}" if unit else "")
            raise ConfigError(f"{name} = {value}: must be from {what}")
    if cfg.dead_after_ms < 2 * cfg.hello_interval_ms:
        raise ConfigError(
            f"dead_after_ms = {cfg.dead_after_ms}: must be at least twice hello_interval_ms "
            f"({cfg.hello_interval_ms}), or live nodes drop out between hellos"
        )
    if cfg.address:
        _check_address("address", cfg.address, multicast=False)
    _check_address("mcast_group", cfg.mcast_group, multicast=True)
    if cfg.interface and (len(cfg.interface) > 15 or any(c in cfg.interface for c in "/ \t\n\0")):
        raise ConfigError(f"interface: {cfg.interface!r} is not an interface name (like eth0)")
    if cfg.log_level.upper() not in LOG_LEVELS:
        raise ConfigError(f"log_level: {cfg.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    return cfg


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
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config file: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text file (not UTF-8); a config is TOML") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        node = data.get("node", data)
        if not isinstance(node, dict):
            raise ConfigError(f"{path}: [node] must be a table of settings")
        values = dict(node)
    try:
        cfg = config_from_mapping(values)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    cfg = config_from_mapping(overrides or {}, cfg)
    try:
        return validate(cfg)
    except ConfigError as e:
        from_flags = {k.replace("-", "_") for k in overrides or {}}
        if path is None or str(e).split(" ", 1)[0].rstrip(":") in from_flags:
            raise
        raise ConfigError(f"{path}: {e}") from None


def control_socket_path() -> Path:
    """The control socket the tools talk to: PYMOSIX_SOCKET, else the fixed default."""
    env = os.environ.get("PYMOSIX_SOCKET")
    return Path(env) if env else DEFAULT_SOCKET


def root_socket_path(path: Path) -> Path:
    """Root's own control socket beside the public one: control.sock -> control.root.sock."""
    return path.with_name(f"{path.stem}.root{path.suffix or '.sock'}")


def find_criu(configured: str = "") -> str | None:
    """The criu to use: the config key, PYMOSIX_CRIU, the provisioned one, then PATH."""
    import shutil

    for candidate in (configured, os.environ.get("PYMOSIX_CRIU", "")):
        if candidate:
            return candidate
    if PROVISIONED_CRIU.exists():
        return str(PROVISIONED_CRIU)
    return shutil.which("criu")
