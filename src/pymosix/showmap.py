"""showmap's text, exactly the seed's layout (DESIGN.md §4): this node first, then the others."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pymosix.ids import format_node_id


def render_map(self_id: int, nodes: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        f"My Node-Id: {format_node_id(self_id)}",
        "",
        "Base Node-Id Address          Count",
        "------------ ---------------- -----",
    ]
    lines += [
        f"{format_node_id(n['node_id']):<12} {n['address']:<16} {n.get('count', 1)}" for n in nodes
    ]
    return "\n".join(lines) + "\n"
