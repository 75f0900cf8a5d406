"""The interactive mosmon and mtop: textual apps around the pure renderers, polling each interval.

Both draw styled lines (text, style) that rich turns into colour; textual gives as much colour as
the terminal has (and none under NO_COLOR). ``h`` or ``?`` shows the keys, again (or Escape) to
go back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Static

from pymosix.errors import PymosixError
from pymosix.mosmon.render import (
    LAYOUTS,
    VIEWS,
    Line,
    Screen,
    help_lines,
    key_lines,
    render_styled,
)
from pymosix.mosmon.top import SORTS, TOP_KEYS, render_top

Source = Callable[[], list[dict[str, Any]]]


def to_text(lines: Sequence[Line]) -> Text:
    """Styled lines as one rich Text."""
    text = Text(no_wrap=True, overflow="crop")
    for i, line in enumerate(lines):
        if i:
            text.append("\n")
        for part, style in line:
            text.append(part, style or None)
    return text


class Refreshing(App[None]):
    """One screen of styled text, refreshed from a source each interval; a help screen on h/?."""

    CSS = "Screen { overflow: hidden; } #screen { width: 100%; height: 100%; }"
    COMMON: ClassVar[list[BindingType]] = [
        Binding("h,question_mark", "help", "keys", show=False),
        Binding("escape", "help(False)", "back", show=False),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, interval_s: float = 1.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.error = ""
        self.showing_help = False
        #: time.monotonic() of the last good refresh.
        self.updated_at = 0.0

    def compose(self) -> ComposeResult:
        yield Static("", id="screen")

    async def on_mount(self) -> None:
        await self.refresh_data()
        self.set_interval(self.interval_s, self.refresh_data)

    async def refresh_data(self) -> None:
        try:
            await asyncio.to_thread(self.fetch)
            self.error = ""
            self.updated_at = time.monotonic()
        except PymosixError as e:
            self.error = str(e)
        self.redraw()

    def fetch(self) -> None:
        """Read the source (in a thread); the subclass keeps what it read."""
        raise NotImplementedError

    def lines(self, width: int, height: int) -> list[Line]:
        raise NotImplementedError

    def help(self, width: int, height: int) -> list[Line]:
        raise NotImplementedError

    def styled(self) -> list[Line]:
        width, height = self.size.width or 80, self.size.height or 25
        if self.showing_help:
            return self.help(width, height)
        return self.lines(width, height)

    def screen_text(self) -> str:
        """What the screen widget holds, as plain text (the tests read it)."""
        content = self.query_one("#screen", Static).content
        return content.plain if isinstance(content, Text) else str(content)

    def redraw(self) -> None:
        self.query_one("#screen", Static).update(to_text(self.styled()))

    def not_updating(self) -> tuple[str, ...]:
        return (f"(not updating: {self.error})",) if self.error else ()

    def action_help(self, show: bool | None = None) -> None:
        self.showing_help = not self.showing_help if show is None else show
        self.redraw()

    def on_resize(self) -> None:
        self.redraw()


class Mosmon(Refreshing):
    """One screen of bars; the keys are the original's options."""

    BINDINGS: ClassVar[list[BindingType]] = [
        *(Binding(k, f"view('{k}')", v, show=False) for k, v in VIEWS.items()),
        *(Binding(k, f"layout('{k}')", v, show=False) for k, v in LAYOUTS.items()),
        Binding("greater_than_sign,right,n", "page(1)", "next page", show=False),
        Binding("less_than_sign,left,p", "page(-1)", "previous page", show=False),
        Binding("d", "dead", "dead nodes", show=False),
        Binding("D", "dead(False)", "hide dead nodes", show=False),
        *Refreshing.COMMON,
    ]

    def __init__(
        self,
        source: Source,
        view: str = "l",
        layout: str = "a",
        interval_s: float = 1.0,
        show_dead: bool = False,
        stale_after_s: float = 3.0,
    ) -> None:
        super().__init__(interval_s)
        self.source = source
        self.view = view
        self.layout_name = layout
        self.page = 0
        self.show_dead = show_dead
        self.stale_after_s = stale_after_s
        self.rows: list[dict[str, Any]] = []

    def fetch(self) -> None:
        self.rows = self.source()

    def lines(self, width: int, height: int) -> list[Line]:
        s = Screen(
            self.view,
            self.layout_name,
            width,
            height,
            self.page,
            self.show_dead,
            self.stale_after_s,
            self.not_updating(),
        )
        return render_styled(self.rows, s)

    def help(self, width: int, height: int) -> list[Line]:
        return help_lines(width, height, self.stale_after_s)

    def action_view(self, view: str) -> None:
        self.view = view
        self.showing_help = False
        self.redraw()

    def action_layout(self, layout: str) -> None:
        self.layout_name = layout
        self.page = 0
        self.redraw()

    def action_page(self, step: int) -> None:
        self.page = max(0, self.page + step)
        self.redraw()

    def action_dead(self, show: bool | None = None) -> None:
        self.show_dead = not self.show_dead if show is None else show
        self.redraw()


class Mtop(Refreshing):
    """top for the cluster: the nodes' load, then every job with the node it runs on."""

    BINDINGS: ClassVar[list[BindingType]] = [
        *(Binding(k, f"sort('{k}')", v, show=False) for k, v in SORTS.items()),
        *Refreshing.COMMON,
    ]

    def __init__(
        self, source: Callable[[], dict[str, Any]], interval_s: float = 2.0, sort: str = "P"
    ) -> None:
        super().__init__(interval_s)
        self.source = source
        self.sort = sort
        self.view: dict[str, Any] = {"jobs": [], "nodes": [], "loads": [], "node_id": 0}

    def fetch(self) -> None:
        self.view = self.source()

    def lines(self, width: int, height: int) -> list[Line]:
        return render_top(self.view, width, height, self.sort, time.time(), self.not_updating())

    def help(self, width: int, height: int) -> list[Line]:
        return key_lines("mtop keys", TOP_KEYS, width, height)

    def action_sort(self, key: str) -> None:
        self.sort = key
        self.redraw()
