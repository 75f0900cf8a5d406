"""The cluster map as a pure state machine: who is in the cluster, by node id and address.

Fed what discovery heard (hello, bye) and the time; answers with the changes, which the agent logs
in the seed's words. A node not heard from for `dead_after_s` is dropped; static entries (from a
map file) never are. Two nodes claiming one node id from different addresses is a conflict that
is recorded and reported, never resolved by letting one silently shadow the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from pymosix.ids import NodeId


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
        """A hello from `node_id` at `address`."""
        known = self._nodes.get(node_id)
        if known is not None and known.address != address:
            self.record_conflict(node_id, address, now)
            return []
        if known is None:
            self._nodes[node_id] = NodeEntry(
                node_id, address, now, now, epoch, False, gossip_port, migration_port
            )
            return self._changed(joined=[node_id])
        if node_id != self.self_id:
            self._nodes[node_id] = replace(
                known,
                last_heard=now,
                epoch=epoch,
                gossip_port=gossip_port or known.gossip_port,
                migration_port=migration_port or known.migration_port,
            )
        return []

    def left(self, node_id: NodeId, address: str) -> list[MapChanged]:
        """A clean leave (bye) from `node_id` at `address`: gone at once."""
        known = self._nodes.get(node_id)
        if known is None or known.static or known.address != address:
            return []
        del self._nodes[node_id]
        return self._changed(left=[node_id])

    def tick(self, now: float) -> list[MapChanged]:
        """Drop nodes not heard from for dead_after_s."""
        dead = [
            n.node_id
            for n in self._nodes.values()
            if not n.static and now - n.last_heard > self.dead_after_s
        ]
        for node_id in dead:
            del self._nodes[node_id]
        return self._changed(left=dead)

    # --- helpers ---------------------------------------------------------------------------

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
