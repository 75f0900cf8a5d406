"""How often a node announces itself, so that discovery costs each node a bounded rate at any size.

Every hello is multicast to every node, so with a fixed interval each node receives (N-1)/interval
hellos a second: 20,000/s at 10,000 nodes and 0.5 s. Instead a node stretches its interval in
proportion to the map it sees beyond HELLO_BUDGET nodes, which keeps the cluster-wide hello rate,
and so what each node receives, at about HELLO_BUDGET per base interval (64/s with the defaults),
whatever N. Silence that means death is judged against the stretched interval (`dead_after_s`
keeps the configured ratio, 6 by default). Small clusters (up to HELLO_BUDGET nodes) keep the
configured interval and bounds exactly. What a big cluster gives up is how fast the map notices a
crash; the balancer does not wait for the map: load entries older than load_max_age_ms are ignored,
so a silent node stops attracting work within seconds, and a clean leave (bye) is seen at once.
A new node is heard by all at its first hello and learns the others as their hellos come, enough
for its gossip after a few of them. pymosix.sim models exactly this (sim/membership.py).
"""

from __future__ import annotations

#: Nodes up to which the configured interval is kept; the cluster-wide rate bound, in hellos per
#: base interval.
HELLO_BUDGET = 32
#: The wire's bound on an announced interval (wire/messages.py Hello).
MAX_INTERVAL_S = 3600.0


def hello_interval(n_nodes: int, base_s: float, budget: int = HELLO_BUDGET) -> float:
    """Seconds between this node's hellos when its map holds n_nodes (itself included)."""
    if base_s <= 0 or budget < 1:
        raise ValueError("base interval and budget must be positive")
    return min(MAX_INTERVAL_S, base_s * max(1.0, n_nodes / budget))


def dead_after(
    n_nodes: int, base_hello_s: float, base_dead_s: float, budget: int = HELLO_BUDGET
) -> float:
    """Silence after which a node is dropped: the configured bound, stretched like the interval."""
    return base_dead_s * hello_interval(n_nodes, base_hello_s, budget) / base_hello_s
