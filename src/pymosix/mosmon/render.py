"""mosmon's screen as pure text: rows of the load vector in, lines out. No terminal here.

Views (keys and options as in openMosix's mosmon): l load, L log-scale load, s speed (with CPUs),
m memory used/free, r raw memory (free of total, MB), u utilisation.
Layouts: v vertical bars, one narrow column per node; w vertical bars spread over the whole width;
V one horizontal bar per line (fits many nodes); a automatic: v while the nodes fit across, else V.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

VIEWS = {
    "l": "load",
    "L": "load (log scale)",
    "s": "speed",
    "m": "memory used/free",
    "r": "raw memory",
    "u": "utilisation",
}
LAYOUTS = {"v": "vertical", "w": "wide", "V": "horizontal", "a": "automatic"}
HELP = "l/L load  s speed  m/r memory  u util  v/w/V/a layout  </> page  q quit"
COLUMN = 7  # characters per node in the vertical layout


@dataclass(frozen=True, slots=True)
class Bar:
    """One node's bar: fill 0..1 of the scale, and the text under or beside it."""

    node_id: int
    fill: float
    label: str
    up: bool
    is_self: bool


def bar_value(row: dict[str, Any], view: str) -> tuple[float, str]:
    """The bar's raw value and its label for one node."""
    if not row.get("up"):
        return 0.0, "down"
    mb = 1024 * 1024
    if view == "l":
        return float(row["load"]), f"{row['load']:.2f}"
    if view == "L":
        return math.log2(1 + float(row["load"])), f"{row['load']:.2f}"
    if view == "s":
        return float(row["speed"]), f"{row['speed']}x{row['ncpus']}"
    if view == "m":
        used = row["mem_total"] - row["mem_free"]
        return used / max(1, row["mem_total"]), f"{used // mb}/{row['mem_free'] // mb}"
    if view == "r":
        return float(row["mem_free"]), f"{row['mem_free'] // mb}M"
    if view == "u":
        return float(row["util"]), f"{row['util']:.0%}"
    raise ValueError(f"unknown view {view!r}; views: {', '.join(VIEWS)}")


def scale_for(view: str, rows: Sequence[dict[str, Any]]) -> float:
    """Top of the scale: the load views grow in whole units, the others are fixed."""
    values = [bar_value(r, view)[0] for r in rows]
    if view in ("m", "u"):
        return 1.0
    if view == "r":
        return float(max((r.get("mem_total", 0) for r in rows), default=1)) or 1.0
    top = max(values, default=0.0)
    return float(max(1, math.ceil(top))) if view in ("l", "L") else (top or 1.0)


def bars(rows: Sequence[dict[str, Any]], view: str) -> tuple[list[Bar], float]:
    top = scale_for(view, rows)
    out = []
    for r in rows:
        value, label = bar_value(r, view)
        out.append(
            Bar(
                int(r["node_id"]),
                min(1.0, value / top) if top else 0.0,
                label,
                bool(r.get("up")),
                bool(r.get("self")),
            )
        )
    return out, top


def pick_layout(layout: str, nodes: int, width: int) -> str:
    if layout != "a":
        return layout
    return "v" if nodes * COLUMN + 8 <= width else "V"


def nodes_per_page(layout: str, width: int, height: int) -> int:
    if layout == "V":
        return max(1, height - 4)
    if layout == "w":
        return max(1, (width - 8) // 4)
    return max(1, (width - 8) // COLUMN)


def render(
    rows: Sequence[dict[str, Any]],
    view: str = "l",
    layout: str = "a",
    width: int = 80,
    height: int = 25,
    page: int = 0,
) -> list[str]:
    """The whole screen: a title, the bars of one page of nodes, the node ids, the help line."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; views: {', '.join(VIEWS)}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; layouts: {', '.join(LAYOUTS)}")
    all_bars, top = bars(rows, view)
    lay = pick_layout(layout, len(all_bars), width)
    per_page = nodes_per_page(lay, width, height)
    pages = max(1, math.ceil(len(all_bars) / per_page))
    page = min(max(0, page), pages - 1)
    shown = all_bars[page * per_page : (page + 1) * per_page]
    title = f"pymosix mosmon: {VIEWS[view]}, {len(all_bars)} node(s)"
    if pages > 1:
        title += f", page {page + 1}/{pages}"
    body = (
        _horizontal(shown, width)
        if lay == "V"
        else _vertical(shown, top, view, width, height - 4, lay == "w")
    )
    return [title[:width], *body, HELP[:width]]


def _scale_label(value: float, view: str) -> str:
    if view in ("m", "u"):
        return f"{value:.0%}"
    if view == "r":
        return f"{value / 1024 / 1024 / 1024:.1f}G"
    if view == "s":
        return f"{value:.0f}"
    return f"{value:.1f}"


def _vertical(
    bs: list[Bar], top: float, view: str, width: int, height: int, wide: bool
) -> list[str]:
    height = max(3, height)
    col = max(COLUMN, (width - 8) // max(1, len(bs))) if wide else COLUMN
    lines = []
    for level in range(height - 2, 0, -1):
        cut = level / (height - 2)
        label = _scale_label(top * cut, view) if level in (height - 2, (height - 2) // 2) else ""
        cells = []
        for b in bs:
            mark = (
                ("#" if b.up else " ")
                if b.fill >= cut - 1e-9
                else ("." if b.fill >= cut - 1 / (height - 2) / 2 and b.fill > 0 else " ")
            )
            cells.append((mark * (col - 3)).center(col))
        lines.append(f"{label:>6} |" + "".join(cells))
    lines.append("       +" + "-" * (col * len(bs)))
    lines.append("  value " + "".join(b.label.center(col)[:col] for b in bs))
    lines.append(
        "   node "
        + "".join(((" *" if b.is_self else "  ") + str(b.node_id)).center(col)[:col] for b in bs)
    )
    return lines


def _horizontal(bs: list[Bar], width: int) -> list[str]:
    bar_width = max(10, width - 24)
    lines = []
    for b in bs:
        filled = round(b.fill * bar_width)
        mark = "*" if b.is_self else " "
        lines.append(f"{mark}{b.node_id:>6} |{('#' * filled).ljust(bar_width)}| {b.label}"[:width])
    return lines
