"""The node agent: one asyncio process per host that owns the map, the sockets and the components.

It wires the pieces and does the I/O the pure parts cannot: the multicast discovery socket, the
unicast gossip socket, the control socket, the clock. Components (load gossip, migration, the
balancer) plug in with `add_component`, register control ops on `agent.control` and datagram
kinds with `on_datagram`, and send with `send_datagram`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import psutil

from pymosix import __version__, flagstate, sdnotify
from pymosix.config import NodeConfig
from pymosix.control_server import ControlConnection, ControlServer, Limits
from pymosix.discovery import dead_after, hello_interval
from pymosix.errors import AuthError, ConfigError, DecodeError, PymosixError
from pymosix.ids import NodeId, format_node_id, node_id_from_ip
from pymosix.keys import KeyRing, read_keys, write_key
from pymosix.load.speed import measure_speed
from pymosix.mapfile import load_map
from pymosix.membership import ClusterMap, MapChanged, change_message, new_epoch
from pymosix.netif import auto_interface
from pymosix.offenders import AUTH, CLOCK, OffenderLog
from pymosix.wire.envelope import (
    Envelope,
    Kind,
    ReplayError,
    ReplayGuard,
    SkewError,
    seal,
    unseal,
)
from pymosix.wire.messages import Hello

log = logging.getLogger("pymosix")

#: How often the map is checked for nodes that went silent.
TICK_S = 0.25


class Component(Protocol):
    """A part of the agent with a life cycle; started in order, stopped in reverse."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


DatagramHandler = Callable[[Envelope, str], None]


@dataclass
class NodeFlags:
    """mosctl's switches for this node (openMosix's stay, lstay, block, quiet) and its speed."""

    speed: int
    #: No automatic migration away from this node.
    stay: bool = False
    #: Local jobs stay; guests may leave.
    lstay: bool = False
    #: Refuse guests.
    block: bool = False
    #: Stop sending load information.
    quiet: bool = False


#: Settings `mosctl` may change at run time, and their types.
SETTABLE = {"speed": int, "stay": bool, "lstay": bool, "block": bool, "quiet": bool}


@dataclass
class Counters:
    """Datagram counts, shown by `mosctl status` and the metrics endpoint."""

    sent: int = 0
    received: int = 0
    rejected_malformed: int = 0
    rejected_auth: int = 0
    rejected_replay: int = 0
    #: Authentic and new, but of an epoch that is over or not the sender's current one.
    rejected_stale: int = 0
    #: Authentic, but stamped further from this node's clock than max_clock_skew_ms.
    rejected_clock: int = 0
    rejected_unknown: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    #: Load reports only (the gossip, apart from discovery), for its cost in bench/gossip_cost.py.
    load_sent: int = 0
    load_bytes_sent: int = 0
    load_received: int = 0

    @property
    def rejected(self) -> int:
        return (
            self.rejected_malformed
            + self.rejected_auth
            + self.rejected_replay
            + self.rejected_stale
            + self.rejected_clock
            + self.rejected_unknown
        )


def resolve_address(config: NodeConfig) -> tuple[str, str]:
    """(address, interface) of this node, from the config or the host's interfaces."""
    addrs = {
        name: [a.address for a in entries if a.family == socket.AF_INET]
        for name, entries in psutil.net_if_addrs().items()
    }
    if config.address:
        iface = config.interface or next(
            (n for n, ips in addrs.items() if config.address in ips), ""
        )
        if not iface:
            raise ConfigError(f"address {config.address} is not on any interface here")
        return config.address, iface
    if config.interface:
        ips = addrs.get(config.interface)
        if not ips:
            raise ConfigError(f"interface {config.interface} has no IPv4 address")
        return ips[0], config.interface
    choice = auto_interface()  # the same rule as doctor's: the default route's interface
    log.info("no address configured: using %s on %s (%s)", choice.address, choice.name, choice.why)
    return choice.address, choice.name


def _measured_speed() -> int:
    speed = measure_speed()
    log.info("measured this node's speed: %d (set 'speed' to skip the measurement)", speed)
    return speed


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.agent.datagram_received(data, str(addr[0]))

    def error_received(self, exc: Exception) -> None:
        log.debug("datagram socket error: %s", exc)


class NodeAgent:
    """One node: call `run()`; `stop()` (or SIGTERM) ends it cleanly, announcing the leave."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.address, self.interface = resolve_address(config)
        self.node_id: NodeId = node_id_from_ip(self.address)
        #: The cluster keys: datagrams and channels accept any, and sign with keys.current.
        self.keys = self._load_keys()
        # Later starts get larger epochs: a node comes back only with a fresh one (membership.py).
        self.epoch = new_epoch(self.wall_ms(), secrets.randbits(32))
        self._seq = 0
        self.started_at = time.monotonic()
        self.cluster = ClusterMap(
            self.node_id,
            self.address,
            config.dead_after_ms / 1000,
            now=time.monotonic(),
            gossip_port=config.gossip_port,
            migration_port=config.migration_port,
            # As long as a capture can pass the timestamp check: the sender's clock may be off
            # by max_clock_skew_ms one way and ours the other.
            replay_horizon_s=2 * config.max_clock_skew_ms / 1000 + 1,
        )
        self.counters = Counters()
        self.flags = NodeFlags(
            speed=config.speed or _measured_speed(),
            stay=config.stay,
            lstay=config.lstay,
            block=config.block,
        )
        kept = flagstate.read(config.state_dir)
        for name, value in kept.items():  # mosctl ... --persist
            setattr(self.flags, name, value)
        #: The speed is this agent's own reading (pymosix.load.speedwatch may improve it).
        self.speed_measured = not config.speed and "speed" not in kept
        self.replay = ReplayGuard(max_skew_ms=config.max_clock_skew_ms)
        self.offenders = OffenderLog(max_skew_ms=config.max_clock_skew_ms)
        self.control = ControlServer(
            config.socket_path,
            Limits(
                connections_per_uid=config.control_max_connections_per_uid,
                connections=config.control_max_connections,
                requests_per_uid=config.control_max_requests_per_uid,
                idle_timeout_s=config.control_idle_timeout_ms / 1000,
            ),
        )
        self.components: list[Component] = []
        self.map_listeners: list[Callable[[MapChanged], None]] = []
        self._handlers: dict[int, DatagramHandler] = {}
        self._conflicts_logged: set[tuple[int, str]] = set()
        self._mcast: asyncio.DatagramTransport | None = None
        self._unicast: asyncio.DatagramTransport | None = None
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.control.register("map", self._op_map)
        self.control.register("status", self._op_status)
        self.control.register("set", self._op_set)

    # --- public API for components ---------------------------------------------------------

    def add_component(self, component: Component) -> None:
        self.components.append(component)

    def on_datagram(self, kind: int, handler: DatagramHandler) -> None:
        """Call `handler(envelope, source_ip)` for every authenticated datagram of `kind`."""
        if kind in self._handlers or kind in (Kind.HELLO, Kind.BYE):
            raise ValueError(f"datagram kind {kind} already handled")
        self._handlers[kind] = handler

    def send_datagram(
        self, kind: int, payload: dict[str, Any], address: str, port: int | None = None
    ) -> None:
        """Seal and send one datagram to a peer's gossip port."""
        if self._unicast is None:
            return
        data = self._seal(kind, payload)
        self._unicast.sendto(data, (address, port or self.config.gossip_port))
        self.counters.sent += 1
        self.counters.bytes_sent += len(data)
        if kind == Kind.LOAD:
            self.counters.load_sent += 1
            self.counters.load_bytes_sent += len(data)

    def now(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        """Wall-clock milliseconds as this node stamps and checks them (the offset: tests only)."""
        return int(time.time() * 1000) + self.config.test_clock_offset_ms

    # --- life cycle ------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        await self._open_sockets()
        if self.config.map_file is not None:
            numbered = load_map(self.config.map_file)
            static = [(node_id, ip) for _, node_id, ip in numbered]
            numbers = {node_id: number for number, node_id, _ in numbered}
            self._apply(self.cluster.add_static(static, self.now(), numbers))
        started: list[Component] = []
        try:
            for comp in self.components:
                await comp.start()
                started.append(comp)
            self._tasks.append(asyncio.create_task(self._tick_loop()))
            if self._mcast is not None:
                self._tasks.append(asyncio.create_task(self._hello_loop()))
            await self.control.start()
            log.info(
                "pymosix %s: node %s (#%d) at %s on %s, control socket %s",
                __version__,
                format_node_id(self.node_id),
                self.node_id,
                self.address,
                self.interface,
                self.config.socket_path,
            )
            self._log_map(self.cluster.nodes())
            sdnotify.notify(
                f"READY=1\nSTATUS=node {format_node_id(self.node_id)} at {self.address}"
            )
            if (period := sdnotify.watchdog_period_s()) is not None:
                self._tasks.append(asyncio.create_task(sdnotify.watchdog(period)))
            await self._stopping.wait()
        finally:
            sdnotify.notify("STOPPING=1")
            await self.control.stop()
            self._send_bye()
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for comp in reversed(started):
                try:
                    await comp.stop()
                except Exception:
                    log.exception("stopping %s failed", type(comp).__name__)
            for transport in (self._mcast, self._unicast):
                if transport is not None:
                    transport.close()
            log.info("pymosix node %s stopped", format_node_id(self.node_id))

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """SIGTERM came (a stop, or systemd's restart): jobs with a holder wait for the next."""
        return self._stopping.is_set()

    # --- sockets ---------------------------------------------------------------------------

    async def _open_sockets(self) -> None:
        try:
            await self._open_datagram_sockets()
        except OSError as e:
            raise ConfigError(
                f"cannot open the datagram sockets at {self.address} (ports "
                f"{self.config.gossip_port}, {self.config.mcast_port}): {e.strerror}; "
                "is another agent running here? (else change gossip_port / mcast_port)"
            ) from None

    async def _open_datagram_sockets(self) -> None:
        loop = asyncio.get_running_loop()
        uni = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        uni.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        uni.bind((self.address, self.config.gossip_port))
        self._unicast, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self), sock=uni)
        if not self.config.discovery or self.config.map_file is not None:
            return
        m = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        m.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        m.bind((self.config.mcast_group, self.config.mcast_port))
        group = socket.inet_aton(self.config.mcast_group)
        local = socket.inet_aton(self.address)
        m.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack("4s4s", group, local))
        m.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, local)
        # TTL 1: discovery never leaves the LAN segment (omdiscd did the same).
        m.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        m.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        self._mcast, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self), sock=m)

    def _seal(self, kind: int, payload: dict[str, Any]) -> bytes:
        self._seq += 1
        env = Envelope(kind, self.node_id, self.epoch, self._seq, self.wall_ms(), payload)
        return seal(self.keys.current, env)

    def _multicast(self, kind: int, payload: dict[str, Any]) -> None:
        if self._mcast is None:
            return
        data = self._seal(kind, payload)
        self._mcast.sendto(data, (self.config.mcast_group, self.config.mcast_port))
        self.counters.sent += 1
        self.counters.bytes_sent += len(data)

    def _hello(self, interval_s: float | None = None) -> Hello:
        return Hello(
            self.address,
            self.config.gossip_port,
            self.config.migration_port,
            round(interval_s * 1000) if interval_s else self.config.hello_interval_ms,
        )

    def _send_bye(self) -> None:
        self._multicast(Kind.BYE, {"a": self.address})

    async def _hello_loop(self) -> None:
        rng = secrets.SystemRandom()
        base = self.config.hello_interval_ms / 1000
        while True:
            # Rarer as the map grows: each node's hello receive rate stays bounded (discovery.py).
            n = len(self.cluster)
            interval = hello_interval(n, base)
            self.cluster.dead_after_s = dead_after(n, base, self.config.dead_after_ms / 1000)
            self._multicast(Kind.HELLO, self._hello(interval).to_payload())
            # Jitter keeps many nodes that booted together from sending in lock-step.
            await asyncio.sleep(interval * rng.uniform(0.8, 1.2))

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self._apply(self.cluster.tick(self.now()))
            for line in self.keys.refresh(time.time()):
                log.warning("%s", line)

    # --- receiving -------------------------------------------------------------------------

    def datagram_received(self, data: bytes, source: str) -> None:
        """Every datagram: size, tag, replay, epoch, then dispatch. Nothing unauthenticated is
        acted on; what fails authentication or the clock check is warned about (offenders.py)."""
        self.counters.received += 1
        self.counters.bytes_received += len(data)
        try:
            env = unseal(self.keys.all, data)
            self.replay.check(env, self.wall_ms())
        except DecodeError as e:
            self.counters.rejected_malformed += 1
            log.debug("rejected a datagram from %s: %s", source, e)
            return
        except ReplayError as e:
            self.counters.rejected_replay += 1
            log.debug("rejected a datagram from %s: %s", source, e)
            return
        except SkewError as e:
            self.counters.rejected_clock += 1
            self._offence(source, CLOCK, e.offset_ms, e.sender)
            return
        except AuthError as e:
            self.counters.rejected_auth += 1
            log.debug("rejected a datagram from %s: %s", source, e)
            self._offence(source, AUTH)
            return
        if env.sender == self.node_id and env.epoch == self.epoch:
            return  # our own multicast, looped back
        try:
            self._dispatch(env, source)
        except DecodeError as e:
            self.counters.rejected_malformed += 1
            log.debug("rejected a datagram from %s: %s", source, e)
        self.counters.rejected_stale = self.cluster.stale

    def _offence(
        self, source: str, cause: str, offset_ms: int = 0, node_id: int | None = None
    ) -> None:
        warning = self.offenders.record(source, cause, self.now(), offset_ms, node_id)
        if warning is not None:
            log.warning("refusing datagrams from %s", warning)

    def _dispatch(self, env: Envelope, source: str) -> None:
        sender = NodeId(env.sender)
        if env.kind == Kind.HELLO:
            hello = Hello.from_payload(env.payload)
            if node_id_from_ip(hello.address) != env.sender:
                raise DecodeError(f"hello from {hello.address} claims node id {env.sender}")
            if env.sender == self.node_id:
                self._conflict_with_self(hello.address)
                return
            self._apply(
                self.cluster.heard(
                    sender,
                    hello.address,
                    env.epoch,
                    self.now(),
                    hello.gossip_port,
                    hello.migration_port,
                )
            )
            if (env.sender, hello.address) in self.cluster.conflicts:
                self._report_conflict(sender)
        elif env.kind == Kind.BYE:
            address = env.payload.get("a")
            if not isinstance(address, str):
                raise DecodeError("bye without an address")
            # Ends only the epoch it names; the replay window stays (a reset one reopens).
            self._apply(self.cluster.left(sender, address, env.epoch, self.now()))
        elif (handler := self._handlers.get(env.kind)) is not None:
            if not self.cluster.admits(sender, env.epoch, self.now()):
                return  # not a current member, or an old epoch of one: counted as stale
            if env.kind == Kind.LOAD:
                self.counters.load_received += 1
            handler(env, source)
        else:
            self.counters.rejected_unknown += 1

    def _conflict_with_self(self, address: str) -> None:
        self.cluster.record_conflict(self.node_id, address, self.now())
        self._report_conflict(self.node_id)

    def _report_conflict(self, node_id: NodeId) -> None:
        for key, c in self.cluster.conflicts.items():
            if key[0] == node_id and key not in self._conflicts_logged:
                self._conflicts_logged.add(key)
                log.error(
                    "node id conflict: %s (#%d) is %s, but %s claims it too; give one of them another address",
                    format_node_id(node_id),
                    node_id,
                    c.address,
                    c.claimed_by,
                )

    def _apply(self, changes: list[MapChanged]) -> None:
        for change in changes:
            self._log_map(change.nodes)
            for listener in self.map_listeners:
                listener(change)

    def _log_map(self, nodes: tuple[Any, ...]) -> None:
        for line in change_message(self.node_id, nodes):
            log.info("%s", line)

    # --- control ops -----------------------------------------------------------------------

    async def _op_map(self, req: dict[str, Any], conn: ControlConnection) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "address": self.address,
            "nodes": [
                {
                    "node_id": n.node_id,
                    "address": n.address,
                    "count": 1,
                    "self": n.node_id == self.node_id,
                    "static": n.static,
                    "number": n.number or None,
                }
                for n in self.cluster.nodes()
            ],
            "conflicts": [asdict(c) for c in self.cluster.conflicts.values()],
            "offenders": self.offenders.to_json(self.now()),
        }

    async def _op_status(self, req: dict[str, Any], conn: ControlConnection) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "address": self.address,
            "interface": self.interface,
            "epoch": self.epoch,
            "pid": os.getpid(),
            "version": __version__,
            "uptime_s": round(self.now() - self.started_at, 3),
            "nodes": len(self.cluster),
            "counters": asdict(self.counters) | {"rejected": self.counters.rejected},
            "discovery": self._mcast is not None,
            "map_file": str(self.config.map_file) if self.config.map_file else None,
            "key_file": str(self.config.key_file),
            "keys": [k.name for k in self.keys.keys],
            "signing_key": self.keys.signing.name,
            "conflicts": len(self.cluster.conflicts),
            "offenders": self.offenders.to_json(self.now()),
            "max_clock_skew_ms": self.config.max_clock_skew_ms,
            "control": self.control.stats(),
            "flags": asdict(self.flags),
        }

    async def _op_set(self, req: dict[str, Any], conn: ControlConnection) -> dict[str, Any]:
        name, value = req["name"], req["value"]
        if name not in SETTABLE:
            raise ValueError(f"no setting {name!r} (settable: {', '.join(SETTABLE)})")
        if conn.peer.uid != 0:
            raise PymosixError(f"only root may change {name}")
        kind = SETTABLE[name]
        if kind is int and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 10_000_000
        ):
            raise ValueError(f"{name} must be a whole number from 1 to 10000000")
        if kind is bool and not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        if req.get("persist"):
            kept = flagstate.keep(self.config.state_dir, name, value)
            log.info("mosctl: %s kept across restarts in %s", name, kept)
        setattr(self.flags, name, value)
        log.info("mosctl: %s set to %s", name, value)
        return {"flags": asdict(self.flags)}

    # --- helpers ---------------------------------------------------------------------------

    def _load_keys(self) -> KeyRing:
        path = self.config.key_file
        if not path.exists():
            write_key(path)
            log.warning(
                "no cluster key: made a new one at %s; every other node needs a copy of this file",
                path,
            )
        return read_keys(path)
