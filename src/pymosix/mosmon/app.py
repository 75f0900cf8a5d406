"""The interactive mosmon: a textual app around the pure renderer, polling once a second."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Static

from pymosix.errors import PymosixError
from pymosix.mosmon.render import LAYOUTS, VIEWS, render

Source = Callable[[], list[dict[str, Any]]]


class Mosmon(App[None]):
    """One screen of bars; the keys are the original's options."""

    CSS = "Screen { overflow: hidden; } #bars { width: 100%; height: 100%; }"
    BINDINGS: ClassVar[list[BindingType]] = [
        *(Binding(k, f"view('{k}')", v, show=False) for k, v in VIEWS.items()),
        *(Binding(k, f"layout('{k}')", v, show=False) for k, v in LAYOUTS.items()),
        Binding("greater_than_sign,right,n", "page(1)", "next page", show=False),
        Binding("less_than_sign,left,p", "page(-1)", "previous page", show=False),
        Binding("q", "quit", "quit"),
    ]

    def __init__(
        self, source: Source, view: str = "l", layout: str = "a", interval_s: float = 1.0
    ) -> None:
        super().__init__()
        self.source = source
        self.view = view
        self.layout_name = layout
        self.page = 0
        self.interval_s = interval_s
        self.rows: list[dict[str, Any]] = []
        self.error = ""

    def compose(self) -> ComposeResult:
        yield Static("", id="bars")

    async def on_mount(self) -> None:
        await self.refresh_rows()
        self.set_interval(self.interval_s, self.refresh_rows)

    async def refresh_rows(self) -> None:
        try:
            self.rows = await asyncio.to_thread(self.source)
            self.error = ""
        except PymosixError as e:
            self.error = str(e)
        self.redraw()

    def screen_text(self) -> str:
        size = self.size
        lines = render(
            self.rows, self.view, self.layout_name, size.width or 80, size.height or 25, self.page
        )
        if self.error:
            lines.insert(1, f"(not updating: {self.error})")
        return "\n".join(lines)

    def redraw(self) -> None:
        self.query_one("#bars", Static).update(self.screen_text())

    def action_view(self, view: str) -> None:
        self.view = view
        self.redraw()

    def action_layout(self, layout: str) -> None:
        self.layout_name = layout
        self.page = 0
        self.redraw()

    def action_page(self, step: int) -> None:
        self.page = max(0, self.page + step)
        self.redraw()

    def on_resize(self) -> None:
        self.redraw()
