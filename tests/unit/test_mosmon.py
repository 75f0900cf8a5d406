"""mosmon: pure rendering of every view and layout, and the app driven headless."""

from __future__ import annotations

from typing import Any

import pytest

from pymosix.mosmon.app import Mosmon
from pymosix.mosmon.render import LAYOUTS, VIEWS, render


def row(node_id: int, load: float, up: bool = True, me: bool = False) -> dict[str, Any]:
    return {
        "node_id": node_id,
        "address": "x",
        "self": me,
        "up": up,
        "load": load,
        "util": min(1.0, load),
        "speed": 10000,
        "ncpus": 1,
        "mem_total": 8 << 30,
        "mem_free": 6 << 30,
    }


SEED = [row(25611, 2.0, me=True), row(25612, 2.0)]


@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_view_and_layout_fits_80x25(view: str, layout: str) -> None:
    lines = render(SEED, view, layout, 80, 25)
    assert len(lines) <= 25
    assert all(len(line) <= 80 for line in lines)
    assert lines[-1].startswith("l/L load")


def test_even_load_shows_equal_bars() -> None:
    lines = render(SEED, "l", "v", 80, 16)
    bar_rows = [ln for ln in lines if "|" in ln and "#" in ln]
    assert bar_rows, lines
    for ln in bar_rows:
        cells = ln.split("|", 1)[1]
        assert cells[:7].strip() == cells[7:14].strip()
    assert "2.00" in lines[-3]
    assert "*25611" in lines[-2]


def test_loaded_and_idle_nodes_differ() -> None:
    lines = render([row(1, 3.0, me=True), row(2, 0.0)], "l", "V", 80, 25)
    assert lines[1].count("#") > 40
    assert lines[2].count("#") == 0
    assert "3.00" in lines[1]


def test_down_node_is_marked() -> None:
    lines = render([row(1, 1.0, me=True), row(2, 0.0, up=False)], "l", "V", 80, 25)
    assert lines[2].endswith("down")


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


async def test_app_headless_keys() -> None:
    calls = 0

    def source() -> list[dict[str, Any]]:
        nonlocal calls
        calls += 1
        return SEED

    app = Mosmon(source, interval_s=0.05)
    async with app.run_test(size=(80, 25)) as pilot:
        await pilot.pause()
        assert "load, 2 node(s)" in app.screen_text()
        await pilot.press("u")
        assert "utilisation" in app.screen_text()
        await pilot.press("s")
        assert "10000x1" in app.screen_text()
        await pilot.press("V")
        assert app.layout_name == "V"
        await pilot.pause(0.2)
        assert calls >= 2
        await pilot.press("q")
    assert app.return_code in (0, None)
