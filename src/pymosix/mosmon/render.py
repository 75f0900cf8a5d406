"""mosmon's screen as pure text: rows of the load vector in, lines out. No terminal here.

Views (keys and options as in openMosix's mosmon): l load, L log-scale load, s speed (with CPUs),
m memory used and free up to the total, r raw free memory of the total, u utilisation.
Layouts: v vertical bars, one narrow column per node; w vertical bars spread over the whole width;
V one horizontal bar per line (fits many nodes); a automatic: v while the nodes fit across, else V.

A line is a list of segments (text, style); `plain` joins them for --once and the tests, the app
turns the styles into colour. Every label is made to fit its column with a space to spare, so no
two labels ever touch, at any width.
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
SHORT_VIEWS = {
    "l": "load",
    "L": "log load",
    "s": "speed",
    "m": "memory",
    "r": "raw mem",
    "u": "util",
}
LAYOUTS = {"v": "vertical", "w": "wide", "V": "horizontal", "a": "automatic"}
KEYS = [
    ("l", "load"),
    ("L", "load, log scale"),
    ("s", "speed and CPUs"),
    ("m", "memory used and free"),
    ("r", "raw free memory"),
    ("u", "utilisation"),
    ("v", "vertical bars"),
    ("w", "wide vertical bars"),
    ("V", "horizontal bars"),
    ("a", "automatic layout"),
    ("d", "show or hide dead nodes"),
    ("< >", "previous / next page"),
    ("h ?", "this help (again to leave)"),
    ("q", "quit"),
]
HELP = "l L s m r u views  v w V a layouts  d dead  < > pages  h help  q quit"
SHORT_HELP = "h or ? keys  q quit"
COLUMN = 7  # characters per node in the vertical layout: 6 for its labels, 1 to keep them apart
GUTTER = 8  # the scale or the label name left of the bars: 6 characters, then " |"

Seg = tuple[str, str]
Line = list[Seg]


@dataclass(frozen=True, slots=True)
class Bar:
    """One node's bar: stacked parts (fraction of the scale, style) from the bottom, its labels."""

    node_id: int
    parts: tuple[tuple[float, str], ...]
    labels: tuple[str, ...]
    state: str  # "up", "stale", "down" (in the map, no figures) or "dead" (left the map)
    is_self: bool


@dataclass(frozen=True, slots=True)
class Screen:
    """What the user chose: view, layout, size, page, and whether dead nodes show."""

    view: str = "l"
    layout: str = "a"
    width: int = 80
    height: int = 25
    page: int = 0
    show_dead: bool = False
    stale_after_s: float = 3.0
    #: Lines under the title (mosmon's "not updating: why").
    extra: tuple[str, ...] = ()


# --- numbers that fit ---------------------------------------------------------------------------


def compact(value: float) -> str:
    """A number in at most 5 characters: 2.00, 12.3, 123, 12345, 123k, 1.2M."""
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    if value < 99_999.5:  # not 100_000: 99999.6 would print as 100000
        return f"{value:.0f}"
    for unit, size in (("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)):
        v = value / size
        if v < 1000 or unit == "T":
            return f"{v:.1f}{unit}" if v < 10 else f"{v:.0f}{unit}"
    raise AssertionError("unreachable")


def nbytes(value: float) -> str:
    """A byte count in at most 5 characters: 512M, 6.0G, 23G, 1.5T."""
    for unit in "KMGTP":
        value /= 1024
        if value < 1000 or unit == "P":
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    raise AssertionError("unreachable")


def fit(text: str, width: int) -> str:
    """text cut to width (never needed for the compact forms above; a guard for odd input)."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "+"


# --- bars ---------------------------------------------------------------------------------------

#: Label names, one per label line under the vertical bars (or before the values across).
LABEL_NAMES = {
    "l": ("load",),
    "L": ("load",),
    "s": ("speed", "cpus"),
    "m": ("used", "free"),
    "r": ("free", "total"),
    "u": ("util",),
}


def node_state(row: dict[str, Any], stale_after_s: float) -> str:
    if row.get("dead"):
        return "dead"
    if not row.get("up"):
        return "down"
    age = row.get("age_ms")
    return "stale" if age is not None and age > stale_after_s * 1000 else "up"


def load_style(load: float) -> str:
    """Colour of a load (or utilisation): idle green, busy yellow, a full CPU or more red."""
    return "green" if load < 0.5 else "yellow" if load < 1.0 else "red"


def scale_for(view: str, rows: Sequence[dict[str, Any]]) -> float:
    """Top of the scale: the load views grow in whole units, memory is the largest total."""
    live = [r for r in rows if r.get("up")]
    if view == "u":
        return 1.0
    if view in ("m", "r"):
        return float(max((int(r["mem_total"]) for r in live), default=1) or 1)
    if view == "s":
        return float(max((int(r["speed"]) for r in live), default=1) or 1)
    top = max((float(r["load"]) for r in live), default=0.0)
    if view == "L":
        return math.log2(1 + max(1, math.ceil(top)))
    return float(max(1, math.ceil(top)))


def make_bar(row: dict[str, Any], view: str, top: float, stale_after_s: float) -> Bar:
    state = node_state(row, stale_after_s)
    node_id, me = int(row["node_id"]), bool(row.get("self"))
    if state in ("down", "dead"):
        return Bar(node_id, (), (state,), state, me)
    mark = "~" if state == "stale" else ""
    if view in ("l", "L"):
        load = float(row["load"])
        value = math.log2(1 + load) if view == "L" else load
        fill = min(1.0, value / top)
        return Bar(node_id, ((fill, load_style(load)),), (mark + compact(load),), state, me)
    if view == "s":
        fill = min(1.0, int(row["speed"]) / top)
        labels = (mark + compact(int(row["speed"])), str(row["ncpus"]))
        return Bar(node_id, ((fill, "cyan"),), labels, state, me)
    if view == "u":
        util = float(row["util"])
        fill = min(1.0, util)
        return Bar(node_id, ((fill, load_style(util * 0.99)),), (f"{mark}{util:.0%}",), state, me)
    total, free = int(row["mem_total"]), int(row["mem_free"])
    used = max(0, total - free)
    if view == "m":
        parts = ((used / top, "magenta"), (free / top, "green"))
        return Bar(node_id, parts, (mark + nbytes(used), mark + nbytes(free)), state, me)
    if view == "r":
        return Bar(
            node_id, ((free / top, "green"),), (mark + nbytes(free), nbytes(total)), state, me
        )
    raise ValueError(f"unknown view {view!r}; views: {', '.join(VIEWS)}")


def bars(
    rows: Sequence[dict[str, Any]], view: str, stale_after_s: float = 3.0
) -> tuple[list[Bar], float]:
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; views: {', '.join(VIEWS)}")
    top = scale_for(view, rows)
    return [make_bar(r, view, top, stale_after_s) for r in rows], top


def _scale_label(value: float, view: str) -> str:
    if view == "u":
        return f"{value:.0%}"
    if view in ("m", "r"):
        return nbytes(value)
    if view == "L":
        return compact(2**value - 1)
    return compact(value)


# --- layouts ------------------------------------------------------------------------------------


def pick_layout(layout: str, nodes: int, width: int) -> str:
    if layout != "a":
        return layout
    return "v" if nodes * COLUMN + GUTTER <= width else "V"


def _vertical_rows(view: str, height: int) -> int:
    """Lines for the bars themselves: the screen less title, axis, labels, node ids and help."""
    return max(2, height - 4 - len(LABEL_NAMES[view]))


def nodes_per_page(layout: str, width: int, height: int) -> int:
    """Nodes on one page; `height` is the screen's less any extra title lines."""
    if layout == "V":
        return max(1, height - 2)
    return max(1, (width - GUTTER) // COLUMN)


def render_styled(rows: Sequence[dict[str, Any]], s: Screen) -> list[Line]:
    """The whole screen: title, one page of bars, the labels and node ids, the keys."""
    if s.layout not in LAYOUTS:
        raise ValueError(f"unknown layout {s.layout!r}; layouts: {', '.join(LAYOUTS)}")
    all_bars, top = bars(rows, s.view, s.stale_after_s)
    hidden = [b for b in all_bars if b.state in ("dead", "down")] if not s.show_dead else []
    shown_bars = [b for b in all_bars if b not in hidden]
    lay = pick_layout(s.layout, len(shown_bars), s.width)
    height = s.height - len(s.extra)
    per_page = nodes_per_page(lay, s.width, height)
    pages = max(1, math.ceil(len(shown_bars) / per_page))
    page = min(max(0, s.page), pages - 1)
    shown = shown_bars[page * per_page : (page + 1) * per_page]
    title = _title(s, len(all_bars) - len(hidden), len(hidden), page, pages, shown)
    body = (
        _horizontal(shown, s.view, s.width)
        if lay == "V"
        else _vertical(shown, top, s.view, s.width, _vertical_rows(s.view, height), lay == "w")
    )
    head = [[(title[: s.width], "bold")]] + [[(e[: s.width], "yellow")] for e in s.extra]
    keys = HELP if len(HELP) <= s.width else SHORT_HELP
    return [*head, *body, [(keys[: s.width], "dim")]]


def _title(s: Screen, nodes: int, hidden: int, page: int, pages: int, shown: list[Bar]) -> str:
    """The title line, in long words where they fit, else in short ones."""
    parts = [(f"pymosix mosmon: {VIEWS[s.view]}", f"mosmon: {SHORT_VIEWS[s.view]}")]
    parts.append((f"{nodes} node(s)", f"{nodes} nodes"))
    if hidden:
        parts.append((f"{hidden} dead or down hidden (d shows)", f"{hidden} hidden (d)"))
    if pages > 1:
        parts.append((f"page {page + 1}/{pages}", f"p{page + 1}/{pages}"))
    if any(b.state == "stale" for b in shown):
        parts.append((f"~ older than {s.stale_after_s:g} s", "~ stale"))
    long = ", ".join(p[0] for p in parts)
    return long if len(long) <= s.width else ", ".join(p[1] for p in parts)[: s.width]


def render(
    rows: Sequence[dict[str, Any]],
    view: str = "l",
    layout: str = "a",
    width: int = 80,
    height: int = 25,
    page: int = 0,
    show_dead: bool = False,
) -> list[str]:
    """The screen as plain lines (--once, tests)."""
    return plain(render_styled(rows, Screen(view, layout, width, height, page, show_dead)))


def plain(lines: Sequence[Line]) -> list[str]:
    return ["".join(t for t, _ in line) for line in lines]


def _cell(bar: Bar, level_lo: float, level_hi: float) -> tuple[str, str]:
    """The mark and style of one bar at one height band [level_lo, level_hi) of the scale."""
    if bar.state in ("dead", "down"):
        return " ", ""
    mid = (level_lo + level_hi) / 2
    base = 0.0
    for i, (frac, style) in enumerate(bar.parts):
        if base + frac >= mid - 1e-9 and frac > 0:
            # The first part (used, load) draws solid, the next (free) lighter; stale is dim.
            return ("#" if i == 0 else ":"), ("dim" if bar.state == "stale" else style)
        base += frac
    return " ", ""


def _vertical(
    bs: list[Bar], top: float, view: str, width: int, height: int, wide: bool
) -> list[Line]:
    col = max(COLUMN, (width - GUTTER) // max(1, len(bs))) if wide else COLUMN
    bar_w = col - 3
    lines: list[Line] = []
    for level in range(height, 0, -1):
        lo, hi = (level - 1) / height, level / height
        label = _scale_label(top, view) if level == height else ""
        line: Line = [(f"{fit(label, 6):>6} |", "dim")]
        for b in bs:
            mark, style = _cell(b, lo, hi)
            left = (col - 1 - bar_w) // 2
            line += [(" " * left, ""), (mark * bar_w, style), (" " * (col - left - bar_w), "")]
        lines.append(line)
    lines.append([("     0 +" + "-" * (col * len(bs)), "dim")])
    for i, name in enumerate(LABEL_NAMES[view]):
        line = [(f"{name:>6}  ", "dim")]
        for b in bs:
            text = b.labels[i] if i < len(b.labels) else ""
            style = (
                "bold red" if b.state in ("dead", "down") else "dim" if b.state == "stale" else ""
            )
            line.append((fit(text, col - 1).center(col - 1) + " ", style))
        lines.append(line)
    line = [("  node  ", "dim")]
    for b in bs:
        ident = ("*" if b.is_self else "") + str(b.node_id)
        line.append((fit(ident, col - 1).center(col - 1) + " ", "bold" if b.is_self else ""))
    lines.append(line)
    return lines


def _horizontal(bs: list[Bar], view: str, width: int) -> list[Line]:
    names = LABEL_NAMES[view]

    def text(b: Bar, named: bool) -> str:
        if b.state in ("dead", "down"):
            return b.state
        return " ".join(f"{n} {v}" if named else v for n, v in zip(names, b.labels, strict=False))

    prefix = 9  # mark, 6 digits of node id, " |"
    named = bool(bs) and max(len(text(b, True)) for b in bs) + prefix + 2 + 10 <= width
    label_w = max((len(text(b, named)) for b in bs), default=0)
    bar_w = max(4, width - prefix - 2 - label_w)
    lines: list[Line] = []
    for b in bs:
        line: Line = [(f"{'*' if b.is_self else ' '}{b.node_id:>6} |", "bold" if b.is_self else "")]
        used, cum = 0, 0.0
        for i, (frac, style) in enumerate(b.parts):
            cum += frac
            n = max(0, min(bar_w, round(cum * bar_w)) - used)
            mark = "#" if i == 0 else ":"
            line.append((mark * n, "dim" if b.state == "stale" else style))
            used += n
        line.append((" " * (bar_w - used) + "| ", ""))
        style = "bold red" if b.state in ("dead", "down") else "dim" if b.state == "stale" else ""
        line.append((text(b, named)[: max(0, width - prefix - bar_w - 2)], style))
        lines.append(line)
    return lines


def key_lines(
    title: str, keys: Sequence[tuple[str, str]], width: int, height: int, notes: Sequence[str] = ()
) -> list[Line]:
    """A help screen: every key, one per line, then notes on what the marks mean."""
    lines: list[Line] = [[(fit(title, width), "bold")], []]
    lines += [
        [(f"  {k:<4}"[:width], "bold cyan"), (f" {what}"[: max(0, width - 6)], "")]
        for k, what in keys
    ]
    if notes:
        lines += [[], *([(fit(n, width), "")] for n in notes)]
    return lines[:height]


def help_lines(width: int, height: int, stale_after_s: float = 3.0) -> list[Line]:
    """mosmon's help screen."""
    notes = (
        "*  this node",
        f"~  figures older than {stale_after_s:g} s (stale)",
        "dead  left the map;  down  no figures yet",
    )
    return key_lines("mosmon keys", KEYS, width, height, notes)


def with_dead(
    rows: Sequence[dict[str, Any]], gone: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The map's rows, then a dead row for each node that left the map lately (the agent's list)."""
    there = {int(r["node_id"]) for r in rows}
    dead = [
        {"node_id": int(g["node_id"]), "address": g.get("address", ""), "up": False, "dead": True}
        for g in gone
        if int(g["node_id"]) not in there
    ]
    return [*rows, *dead]
