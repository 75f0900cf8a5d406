"""mosmon and mtop: pure rendering of every view and layout at many widths, and the apps driven
headless with textual's pilot, reading what they draw."""

from __future__ import annotations

import re
from typing import Any, Generic, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pymosix.mosmon.app import Mosmon, Mtop, to_text
from pymosix.mosmon.render import (
    COLUMN,
    GUTTER,
    KEYS,
    LABEL_NAMES,
    LAYOUTS,
    VIEWS,
    Screen,
    compact,
    help_lines,
    nbytes,
    plain,
    render,
    render_styled,
    with_dead,
)
from pymosix.mosmon.top import render_top

GiB = 1 << 30
T = TypeVar("T")


def row(
    node_id: int,
    load: float,
    up: bool = True,
    me: bool = False,
    total: int = 8 * GiB,
    free: int = 6 * GiB,
    age_ms: int = 100,
    speed: int = 10000,
) -> dict[str, Any]:
    return {
        "node_id": node_id,
        "address": "x",
        "self": me,
        "up": up,
        "load": load,
        "util": min(1.0, load),
        "speed": speed,
        "ncpus": 1,
        "mem_total": total,
        "mem_free": free,
        "age_ms": age_ms,
    }


SEED = [row(25611, 2.0, me=True), row(25612, 2.0)]


def cluster(n: int) -> list[dict[str, Any]]:
    """n live nodes with 5-digit ids, all at speed 10000 (the labels that once ran together)."""
    return [row(25611 + i, (i % 7) / 2, me=i == 0, free=(i % 5 + 1) * GiB) for i in range(n)]


def vertical_label_lines(lines: list[str]) -> list[str]:
    """The lines under the axis (labels, node ids), without the help line."""
    axis = next(i for i, ln in enumerate(lines) if ln.startswith("     0 +"))
    return lines[axis + 1 : -1]


def assert_columns_apart(lines: list[str], shown: int) -> None:
    """Every label sits inside its own node's column, with a space before the next column."""
    axis = next(ln for ln in lines if ln.startswith("     0 +"))
    col = (len(axis) - GUTTER) // shown
    assert col >= COLUMN
    for ln in vertical_label_lines(lines):
        body = ln[GUTTER:]
        tokens = list(re.finditer(r"\S+", body))
        assert len(tokens) == shown, (ln, shown)
        for k, t in enumerate(tokens):
            assert k * col <= t.start(), (ln, k, col)
            assert t.end() <= (k + 1) * col - 1, (ln, k, col)


@pytest.mark.parametrize("width", [40, 80, 200])
@pytest.mark.parametrize("nodes", [1, 8, 40])
@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_labels_never_collide(width: int, nodes: int, view: str, layout: str) -> None:
    rows = cluster(nodes)
    lines = render(rows, view, layout, width, 25)
    assert len(lines) <= 25
    assert all(len(ln) <= width for ln in lines), [ln for ln in lines if len(ln) > width]
    body = lines[1:-1]
    if any(ln.startswith("     0 +") for ln in body):
        shown = len(vertical_label_lines(lines)[-1].split()) - 1
        assert 1 <= shown <= nodes
        assert_columns_apart(lines, shown)
        node_ids = vertical_label_lines(lines)[-1].split()[1:]
        assert node_ids[0] in ("*25611", "25611")
        assert all(re.fullmatch(r"\*?\d{5}", n) for n in node_ids)
    else:
        # One node a line: its id, the bar between two |, then every label whole.
        per_label = len(LABEL_NAMES[view])
        for ln in body:
            m = re.fullmatch(r"[* ] *(\d+) \|([#: ]+)\| (.+)", ln)
            assert m, ln
            words = m.group(3).split()
            assert len(words) in (per_label, 2 * per_label), ln
            assert all(len(w) <= 6 for w in words), ln


def test_speed_labels_are_apart_as_the_issue_showed_them() -> None:
    lines = render([*SEED, row(25613, 0.0)], "s", "v", 80, 16)
    speed = next(ln for ln in lines if ln.lstrip().startswith("speed"))
    assert speed.split() == ["speed", "10000", "10000", "10000"]
    cpus = next(ln for ln in lines if ln.lstrip().startswith("cpus"))
    assert cpus.split() == ["cpus", "1", "1", "1"]


def test_even_load_shows_equal_bars() -> None:
    lines = render(SEED, "l", "v", 80, 16)
    bar_rows = [ln for ln in lines if "|" in ln and "#" in ln]
    assert bar_rows, lines
    for ln in bar_rows:
        cells = ln.split("|", 1)[1]
        assert cells[:7].strip() == cells[7:14].strip()
    assert lines[-3].split() == ["load", "2.00", "2.00"]
    assert lines[-2].split() == ["node", "*25611", "25612"]


def test_loaded_and_idle_nodes_differ() -> None:
    lines = render([row(1, 3.0, me=True), row(2, 0.0)], "l", "V", 80, 25)
    assert lines[1].count("#") > 40
    assert lines[2].count("#") == 0
    assert lines[1].endswith("load 3.00")


def column(lines: list[str], k: int) -> str:
    """The marks of vertical bar k, bottom up."""
    bars = [ln for ln in lines if ln[6:8] == " |"]
    return "".join(ln[GUTTER + k * COLUMN + 1] for ln in reversed(bars))


def test_memory_view_draws_used_and_free_up_to_the_total() -> None:
    rows = [
        row(1, 0.0, me=True, total=8 * GiB, free=5 * GiB),  # 3 used, 5 free: the whole scale
        row(2, 0.0, total=4 * GiB, free=1 * GiB),  # 3 used, 1 free: half the scale
    ]
    lines = render(rows, "m", "v", 80, 16)
    # Ten rows of 0.8 GiB each, bottom up: used solid, free dotted, nothing above the total.
    assert column(lines, 0) == "####::::::"
    assert column(lines, 1) == "####:     "
    assert lines[1].startswith("  8.0G |")
    used = next(ln for ln in lines if ln.lstrip().startswith("used"))
    free = next(ln for ln in lines if ln.lstrip().startswith("free"))
    assert used.split() == ["used", "3.0G", "3.0G"]
    assert free.split() == ["free", "5.0G", "1.0G"]
    across = render(rows, "m", "V", 80, 10)
    a, b = (ln.split("|")[1] for ln in across[1:3])
    assert len(a) == len(b) == 80 - 11 - len("used 3.0G free 5.0G")
    assert a.count("#") == round(len(a) * 3 / 8)
    assert a.count(":") == len(a) - a.count("#")
    assert b.count("#") == a.count("#")
    assert b.rstrip(" ").count(":") == round(len(a) / 2) - b.count("#")
    assert across[2].endswith("used 3.0G free 1.0G")


def test_stale_figures_are_marked() -> None:
    rows = [row(1, 1.0, me=True), row(2, 1.0, age_ms=9000)]
    lines = render(rows, "l", "v", 80, 16)
    assert "~ older than 3 s" in lines[0]
    assert lines[-3].split() == ["load", "1.00", "~1.00"]
    styled = render_styled(rows, Screen("l", "v", 80, 16))
    assert any(style == "dim" and "#" in text for line in styled for text, style in line)
    assert "~" not in render(SEED, "l", "v", 80, 16)[0]


def test_dead_nodes_show_on_d() -> None:
    rows = with_dead(
        [row(1, 1.0, me=True), row(2, 0.0, up=False)], [{"node_id": 3, "address": "y"}]
    )
    hidden = render(rows, "l", "v", 80, 16)
    assert "2 dead or down hidden (d shows)" in hidden[0]
    assert hidden[-2].split() == ["node", "*1"]
    shown = render(rows, "l", "v", 80, 16, show_dead=True)
    assert shown[-2].split() == ["node", "*1", "2", "3"]
    assert shown[-3].split() == ["load", "1.00", "down", "dead"]
    across = render(rows, "s", "V", 80, 16, show_dead=True)
    assert across[2].endswith("| down")
    assert across[3].endswith("| dead")
    # A node in the map is never listed twice as dead.
    assert len(with_dead(rows, [{"node_id": 1}])) == 3


def test_more_nodes_than_fit_are_paged() -> None:
    rows = [row(n, n / 100) for n in range(1, 61)]
    first = render(rows, "l", "V", 80, 25, page=0)
    assert "page 1/3" in first[0]
    last = render(rows, "l", "V", 80, 25, page=9)
    assert "page 3/3" in last[0]
    assert render(rows, "l", "a", 80, 25)[1].lstrip().startswith("1 |")  # automatic: horizontal


def test_unknown_view_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown view"):
        render(SEED, "x")
    with pytest.raises(ValueError, match="unknown layout"):
        render(SEED, "l", "x")


@given(st.floats(min_value=0, max_value=1e15))
def test_compact_numbers_fit_five(value: float) -> None:
    assert len(compact(value)) <= 5


@pytest.mark.parametrize("value", [9.996, 99.96, 99_999.6, 999_960.0, 1e15])
def test_compact_numbers_fit_five_where_rounding_adds_a_digit(value: float) -> None:
    assert len(compact(value)) <= 5, compact(value)


@given(st.integers(min_value=0, max_value=1 << 60))
def test_byte_counts_fit_five(value: int) -> None:
    assert len(nbytes(value)) <= 5


def test_help_lists_every_key() -> None:
    text = plain(help_lines(40, 30))
    assert text[0] == "mosmon keys"
    for key, _ in KEYS:
        assert any(ln.split()[:1] == [key.split()[0]] for ln in text), key
    assert all(len(ln) <= 40 for ln in text)


def test_colour_styles_reach_the_text() -> None:
    text = to_text(render_styled([row(1, 0.3), row(2, 3.0)], Screen("l", "v", 80, 16)))
    styles = {str(span.style) for span in text.spans}
    assert {"green", "red", "bold"} <= styles


# --- the apps, headless ---------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(40, 25), (80, 25), (200, 50)])
@pytest.mark.parametrize("nodes", [1, 8, 40])
async def test_mosmon_app_draws_every_size(width: int, height: int, nodes: int) -> None:
    rows = with_dead(cluster(nodes), [{"node_id": 999, "address": "z"}])
    app = Mosmon(lambda: rows, interval_s=0.05)
    async with app.run_test(size=(width, height)) as pilot:
        await pilot.pause()
        for key in ("s", "m", "v"):
            await pilot.press(key)
            lines = app.screen_text().splitlines()
            assert len(lines) <= height
            assert all(len(ln) <= width for ln in lines)
            if key == "v" or nodes * COLUMN + GUTTER <= width:
                assert_columns_apart(lines, len(vertical_label_lines(lines)[-1].split()) - 1)
        await pilot.press("q")


class Counting(Generic[T]):
    """A source that always gives the same figures and counts how often it was read."""

    def __init__(self, value: T) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> T:
        self.calls += 1
        return self.value


async def test_mosmon_app_keys_dead_help_and_memory() -> None:
    rows = with_dead(
        [row(25611, 2.0, me=True), row(25612, 1.0, total=4 * GiB, free=GiB)],
        [{"node_id": 25613, "address": "192.168.100.13"}],
    )

    source = Counting(rows)
    app = Mosmon(source, interval_s=0.05)
    async with app.run_test(size=(80, 25)) as pilot:
        await pilot.pause()
        assert "load, 2 node(s), 1 dead or down hidden (d shows)" in app.screen_text()
        await pilot.press("d")
        text = app.screen_text().splitlines()
        assert text[-2].split() == ["node", "*25611", "25612", "25613"]
        assert text[-3].split() == ["load", "2.00", "1.00", "dead"]
        await pilot.press("d")
        assert app.screen_text().splitlines()[-2].split() == ["node", "*25611", "25612"]
        await pilot.press("m")
        text = app.screen_text().splitlines()
        assert next(ln for ln in text if ln.lstrip().startswith("used")).split()[1:] == [
            "2.0G",
            "3.0G",
        ]
        # 19 rows of bars, 8 GiB at the top: 3 GiB used is 7 rows, 4 GiB in all 9.5.
        assert column(text, 1).rstrip() == "#" * 7 + ":" * 3
        await pilot.press("question_mark")
        assert app.screen_text().startswith("mosmon keys")
        await pilot.press("h")
        assert "memory used/free" in app.screen_text()
        await pilot.press("h")
        await pilot.press("escape")
        assert "memory used/free" in app.screen_text()
        styled = to_text(app.styled())
        assert {"magenta", "green"} <= {str(s.style) for s in styled.spans}
        await pilot.pause(0.2)
        assert source.calls >= 2
        await pilot.press("q")
    assert app.return_code in (0, None)


async def test_mosmon_app_says_when_it_cannot_update() -> None:
    from pymosix.errors import PymosixError

    ok = True

    def source() -> list[dict[str, Any]]:
        if not ok:
            raise PymosixError("no pymosix agent is running here")
        return SEED

    app = Mosmon(source, interval_s=0.05)
    async with app.run_test(size=(80, 25)) as pilot:
        await pilot.pause()
        ok = False
        await pilot.pause(0.2)
        assert "(not updating: no pymosix agent is running here)" in app.screen_text()
        assert "*25611" in app.screen_text()  # the last figures stay on screen
        await pilot.press("q")


# --- mtop -----------------------------------------------------------------------------------


def job(pid: int, home: int, node: int, cpu: float, rss: int, user: str = "ann") -> dict[str, Any]:
    return {
        "home_pid": pid,
        "home_node": home,
        "node": node,
        "user": user,
        "state": "running",
        "cpu": cpu,
        "rss": rss,
        "migrations": int(home != node),
        "command": f"job{pid} --with a long command line " + "x" * 80,
        "guest": home != node,
        "stale": False,
    }


TOP = {
    "node_id": 25611,
    "jobs": [job(101, 25611, 25613, 99.0, 5 << 20), job(202, 25612, 25612, 40.0, 50 << 20)],
    "nodes": [
        {"node_id": 25611, "address": "a", "answered": True, "error": "", "seconds": 0},
        {"node_id": 25614, "address": "d", "answered": False, "error": "no answer within 2 s"},
    ],
    "missing": [25614],
    "loads": [row(25611, 0.1, me=True), row(25612, 1.0), row(25613, 1.0)],
}


@pytest.mark.parametrize("width", [40, 80, 200])
def test_mtop_lists_jobs_with_their_node(width: int) -> None:
    lines = plain(render_top(TOP, width, 25, "P", 0))
    assert all(len(ln) <= width for ln in lines)
    assert lines[0].startswith("mtop ")
    assert "3/3 nodes up" in lines[0]
    assert lines[1].startswith("no answer from node 25614")
    header = next(
        i for i, ln in enumerate(lines) if ln.split()[:4] == ["PID", "USER", "HOME", "NODE"]
    )
    first, second = lines[header + 1].split(), lines[header + 2].split()
    assert first[:4] == ["101", "ann", "here", "25613"]
    assert second[:4] == ["202", "ann", "25612", "25612"]
    by_mem = plain(render_top(TOP, width, 25, "M", 0))
    assert by_mem[header + 1].split()[0] == "202"
    nodes = [ln.split() for ln in lines if re.match(r" *\*?256\d\d ", ln)]
    assert [n[0] for n in nodes] == ["*25611", "25612", "25613"]
    assert [n[2] for n in nodes] == ["0", "1", "1"]  # jobs per node, where they run
    if width >= 80:  # every figure right under its heading
        head = next(ln for ln in lines if ln.split()[:2] == ["NODE", "LOAD"])
        ends = [m.end() for m in re.finditer(r"\S+", head)]
        for ln in lines:
            if re.match(r" *\*?256\d\d ", ln):
                assert [m.end() for m in re.finditer(r"\S+", ln)] == ends, (head, ln)


def test_mtop_fits_the_height_with_many_nodes_and_jobs() -> None:
    view = dict(TOP)
    view["loads"] = cluster(40)
    view["jobs"] = [job(i, 25611, 25611 + i % 40, float(i % 100), i << 10) for i in range(300)]
    lines = plain(render_top(view, 80, 25, "P", 0))
    assert len(lines) == 25
    assert any("more node(s)" in ln for ln in lines)
    assert lines[-1].split()[4] == "running"


async def test_mtop_app_refreshes_sorts_and_helps() -> None:

    source = Counting(TOP)
    app = Mtop(source, interval_s=0.05)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        text = app.screen_text().splitlines()
        header = next(i for i, ln in enumerate(text) if "COMMAND" in ln)
        assert text[header + 1].split()[0] == "101"
        await pilot.press("M")
        text = app.screen_text().splitlines()
        assert text[header + 1].split()[0] == "202"
        await pilot.press("h")
        assert app.screen_text().startswith("mtop keys")
        await pilot.press("question_mark")
        assert "COMMAND" in app.screen_text()
        await pilot.pause(0.2)
        assert source.calls >= 2
        await pilot.press("q")
