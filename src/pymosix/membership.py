"""The cluster map as a pure state machine: who is in the cluster, by node id and address.

Fed what discovery heard (hello, bye) and the time; answers with the changes, which the agent logs
in the seed's words. A node not heard from for `dead_after_s` is dropped; static entries (from a
map file) never are. Two nodes claiming one node id from different addresses is a conflict that
is recorded and reported, never resolved by letting one silently shadow the other.

Epochs make it replay-proof. Every agent start picks a fresh epoch that is larger than the last
one (its start time in the high bits, see `new_epoch`); the map keeps each node's current epoch,
and for `replay_horizon_s` after a node left, the epoch it left with. A datagram of an older epoch
than the current one, or of an epoch that ended, changes nothing: a BYE ends only the epoch it
names, and old HELLOs of an epoch that said BYE never put the node back; after a BYE a node comes
back only with a fresh epoch. A node that only fell silent may come back in the same epoch (a cut
cable mended), never in an older one. The ReplayGuard (wire/envelope.py) rejects exact repeats;
this rejects what is authentic but stale. (A node whose clock stepped back before its restart
picks a smaller epoch and is ignored until the horizon has passed, about a minute.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from pymosix.ids import NodeId

#: Low bits of an epoch that are random (two starts within one millisecond still differ).
EPOCH_RANDOM_BITS = 20


def new_epoch(wall_ms: int, random_bits: int) -> int:
    """An epoch for an agent starting at `wall_ms`: later starts get larger epochs (63 bits)."""
    return ((wall_ms << EPOCH_RANDOM_BITS) | (random_bits & ((1 << EPOCH_RANDOM_BITS) - 1))) & (
        (1 << 63) - 1
    )


@dataclass(frozen=True, slots=True)
class NodeEntry:
    """One node in the map."""

    node_id: NodeId
    address: str
    #: When it joined the map; the map lists nodes in this order (this node first).
    joined_at: float
    last_heard: float
    epoch: int = 0
    static: bool = False
    gossip_port: int = 0
    migration_port: int = 0
    #: The node's number in a static map (openMosix's numbering), 0 if it has none.
    number: int = 0


@dataclass(frozen=True, slots=True)
class MapChanged:
    """The set of nodes changed; `nodes` is the new map, this node first."""

    nodes: tuple[NodeEntry, ...]
    joined: tuple[NodeId, ...] = ()
    left: tuple[NodeId, ...] = ()


@dataclass(frozen=True, slots=True)
class Conflict:
    """Another address claims a node id already in the map."""

    node_id: NodeId
    address: str
    claimed_by: str
    first_seen: float


@dataclass(frozen=True, slots=True)
class Ended:
    """What is known of a node's past epochs, remembered until `until`: every epoch before
    `epoch` is over, and `epoch` itself too when `over` (it left or was replaced; a node that
    only fell silent may come back in the same epoch, as after a cut cable)."""

    epoch: int
    until: float
    over: bool = True


@dataclass
class ClusterMap:
    """openMosix's map: this node plus every node heard recently or listed statically."""

    self_id: NodeId
    self_address: str
    dead_after_s: float
    now: float = 0.0
    gossip_port: int = 0
    migration_port: int = 0
    _nodes: dict[NodeId, NodeEntry] = field(default_factory=dict)
    conflicts: dict[tuple[NodeId, str], Conflict] = field(default_factory=dict)
    #: Most conflicts kept (a hostile or broken LAN cannot grow the table without bound).
    max_conflicts: int = 64
    #: How long an ended epoch is remembered: as long as a capture of it can pass the timestamp
    #: check (twice the allowed clock skew: the sender's clock may be off the other way too).
    replay_horizon_s: float = 61.0
    _ended: dict[NodeId, Ended] = field(default_factory=dict)
    #: Authentic datagrams of an old or ended epoch that were ignored.
    stale: int = 0

    def __post_init__(self) -> None:
        self._nodes[self.self_id] = NodeEntry(
            self.self_id,
            self.self_address,
            self.now,
            self.now,
            static=True,
            gossip_port=self.gossip_port,
            migration_port=self.migration_port,
        )

    # --- queries ---------------------------------------------------------------------------

    def nodes(self) -> tuple[NodeEntry, ...]:
        """The map, this node first, then the others in the order they joined."""
        me = self._nodes[self.self_id]
        others = sorted(
            (n for n in self._nodes.values() if n.node_id != self.self_id),
            key=lambda n: (n.joined_at, n.node_id),
        )
        return (me, *others)

    def get(self, node_id: NodeId) -> NodeEntry | None:
        return self._nodes.get(node_id)

    def by_address(self, address: str) -> NodeEntry | None:
        return next((n for n in self._nodes.values() if n.address == address), None)

    def peers(self) -> list[NodeEntry]:
        return [n for n in self.nodes() if n.node_id != self.self_id]

    def __len__(self) -> int:
        return len(self._nodes)

    # --- events ----------------------------------------------------------------------------

    def add_static(
        self,
        entries: list[tuple[NodeId, str]],
        now: float,
        numbers: Mapping[NodeId, int] | None = None,
    ) -> list[MapChanged]:
        """Nodes from a map file: always in the map, with the map's node numbers."""
        numbers = numbers or {}
        joined = []
        for node_id, address in entries:
            if node_id == self.self_id:
                me = self._nodes[node_id]
                self._nodes[node_id] = replace(me, number=numbers.get(node_id, me.number))
                continue
            if node_id in self._nodes:
                self.record_conflict(node_id, address, now)
                continue
            self._nodes[node_id] = NodeEntry(
                node_id, address, now, now, static=True, number=numbers.get(node_id, 0)
            )
            joined.append(node_id)
        return self._changed(joined=joined)

    def heard(
        self,
        node_id: NodeId,
        address: str,
        epoch: int,
        now: float,
        gossip_port: int = 0,
        migration_port: int = 0,
    ) -> list[MapChanged]:
        """A hello from `node_id` at `address` in its `epoch`."""
        known = self._nodes.get(node_id)
        if known is not None and known.address != address:
            self.record_conflict(node_id, address, now)
            return []
        if node_id != self.self_id and self._is_stale(node_id, epoch, now):
            return []
        if known is None:
            self._nodes[node_id] = NodeEntry(
                node_id, address, now, now, epoch, False, gossip_port, migration_port
            )
            return self._changed(joined=[node_id])
        if node_id != self.self_id:
            if epoch > known.epoch:
                self._end(node_id, known.epoch, now)  # it restarted: the old epoch is over
            self._nodes[node_id] = replace(
                known,
                last_heard=now,
                epoch=epoch,
                gossip_port=gossip_port or known.gossip_port,
                migration_port=migration_port or known.migration_port,
            )
        return []

    def left(self, node_id: NodeId, address: str, epoch: int, now: float) -> list[MapChanged]:
        """A clean leave (bye) from `node_id` at `address` ending `epoch`: gone at once.

        A bye of an epoch older than the node's current one, or of one already over, is stale and
        changes nothing; one of a newer epoch (a start and stop between two hellos) ends that
        epoch and every older one. A static node stays in the map, its epoch over.
        """
        known = self._nodes.get(node_id)
        if node_id == self.self_id or self._is_stale(node_id, epoch, now):
            return []
        if known is not None and known.address != address:
            return []
        self._end(node_id, epoch, now)
        if known is None or known.static:
            return []
        del self._nodes[node_id]
        return self._changed(left=[node_id])

    def admits(self, node_id: NodeId, epoch: int, now: float) -> bool:
        """Whether a datagram of another kind (load, ...) from `node_id` in `epoch` is current.

        A discovered node must be in the map with exactly that epoch. A static node (it sends no
        hellos) is followed by the epochs of its datagrams: a newer one replaces the old.
        """
        known = self._nodes.get(node_id)
        if known is None or node_id == self.self_id:
            return False
        if self._is_stale(node_id, epoch, now):
            return False
        if known.static:
            if epoch > known.epoch:
                self._end(node_id, known.epoch, now)
                self._nodes[node_id] = replace(known, epoch=epoch, last_heard=now)
            return True
        if epoch != known.epoch:
            self.stale += 1
            return False
        return True

    def tick(self, now: float) -> list[MapChanged]:
        """Drop nodes not heard from for dead_after_s."""
        dead = [
            n.node_id
            for n in self._nodes.values()
            if not n.static and now - n.last_heard > self.dead_after_s
        ]
        for node_id in dead:
            self._end(node_id, self._nodes[node_id].epoch, now, over=False)
            del self._nodes[node_id]
        for node_id in [k for k, e in self._ended.items() if e.until < now]:
            del self._ended[node_id]
        return self._changed(left=dead)

    # --- helpers ---------------------------------------------------------------------------

    def _is_stale(self, node_id: NodeId, epoch: int, now: float) -> bool:
        """An epoch older than the node's current one, or one that has ended (counted)."""
        known = self._nodes.get(node_id)
        ended = self._ended.get(node_id)
        stale = (known is not None and epoch < known.epoch) or (
            ended is not None
            and ended.until >= now
            and (epoch < ended.epoch or (epoch == ended.epoch and ended.over))
        )
        if stale:
            self.stale += 1
        return stale

    def _end(self, node_id: NodeId, epoch: int, now: float, over: bool = True) -> None:
        """Remember, for the replay horizon, that epochs of `node_id` before `epoch` are over,
        and `epoch` too if `over`."""
        old = self._ended.get(node_id)
        if old is not None and old.until >= now:
            if old.epoch > epoch:
                epoch, over = old.epoch, old.over
            elif old.epoch == epoch:
                over = over or old.over
        self._ended[node_id] = Ended(epoch, now + self.replay_horizon_s, over)

    def record_conflict(self, node_id: NodeId, address: str, now: float) -> None:
        key = (node_id, address)
        if key not in self.conflicts and len(self.conflicts) < self.max_conflicts:
            self.conflicts[key] = Conflict(node_id, self._nodes[node_id].address, address, now)

    def _changed(
        self, joined: list[NodeId] | None = None, left: list[NodeId] | None = None
    ) -> list[MapChanged]:
        if not joined and not left:
            return []
        return [MapChanged(self.nodes(), tuple(joined or ()), tuple(left or ()))]


def change_message(self_id: NodeId, nodes: tuple[NodeEntry, ...]) -> list[str]:
    """The seed's kernel message for a changed map, one string per line."""
    lines = [
        f"pymosix configuration changed: This is pymosix #{self_id} (of {len(nodes)} configured)"
    ]
    lines += [f"pymosix #{n.node_id} is at IP address {n.address}" for n in nodes]
    return lines
