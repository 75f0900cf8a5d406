"""The page in a real headless Chromium against the monitor on loopback with a fake agent:
what it draws for many jobs, a node that went away and a job that cannot move."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pymosix.web.server import WebCaller, WebMonitor
from tests.kernel.test_web import CHROMIUM, CHROMIUM_ARGS
from tests.unit.test_web import GONE, ME, PEER, FakeAgent, FakeEngine, FakeLoad

#: pids above the kernel's largest pid_max: nothing runs there, so cantmove finds nothing.
PID = 2**22


class ManyJobs(FakeAgent):
    async def _jobs(self, req: dict[str, Any], conn: Any) -> dict[str, Any]:
        rows = [
            {
                "home_pid": 100 + i,
                "home_node": ME,
                "node": ME,
                "user": "u",
                "cpu": 50.0,
                "rss": 1,
                "migrations": 0,
                "state": "running",
                "command": "loop",
                "pid": PID + i,
            }
            for i in range(20)
        ]
        rows.append(
            {
                "home_pid": 7,
                "home_node": ME,
                "node": PEER,
                "user": "u",
                "cpu": 90.0,
                "rss": 1,
                "migrations": 2,
                "state": "running",
                "command": "away",
            }
        )
        return {"node_id": ME, "jobs": rows}


class TwoNodes(FakeLoad):
    def rows(self) -> list[dict[str, Any]]:
        base = {
            "up": True,
            "util": 0.5,
            "speed": 10000,
            "ncpus": 2,
            "mem_total": 8 << 30,
            "mem_free": 2 << 30,
            "stay": False,
            "lstay": False,
            "block": True,
            "age_ms": 0,
        }
        return [
            {"node_id": ME, "address": "127.0.0.1", "load": 1.5, **base},
            {"node_id": PEER, "address": "127.0.0.2", "load": 0.25, **base, "block": False},
        ]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(page address, root token) of a monitor running in a thread's event loop."""
    loop = asyncio.new_event_loop()
    agent = ManyJobs(tmp_path, web_users="")
    monitor = WebMonitor(agent, TwoNodes(), FakeEngine())  # type: ignore[arg-type]
    monitor.seen[GONE] = "127.0.0.3"  # a node that was in the map and left
    monitor._cant[PID + 3] = (float("inf"), "process 3 holds a TCP connection")
    token = loop.run_until_complete(monitor._op_token({}, WebCaller(0)))["token"]
    loop.run_until_complete(monitor.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{monitor.port}/", token
    finally:
        asyncio.run_coroutine_threadsafe(monitor.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_the_page_draws_many_jobs_a_gone_node_and_reasons(served: tuple[str, str]) -> None:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (scripts/setup-system.sh installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    url, token = served
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 760})
            page.set_default_timeout(20_000)
            page.goto(url)
            page.fill("#token", token)
            page.click("#login-button")
            here = f'[data-node="{ME}"]'
            page.wait_for_selector(f"{here} .job.more")
            # 21 jobs: 20 here, drawn as 15 bubbles and "+5"; the one away around its node.
            assert page.locator(f"{here} .job[data-job]").count() == 15
            assert page.inner_text(f"{here} .job.more") == "+5"
            assert page.locator(f'[data-node="{PEER}"] [data-job="{ME}:7"].away').count() == 1
            assert page.locator("#jobs tbody tr[data-row]").count() == 21
            assert page.locator(f'[data-job="{ME}:103"].cant').count() == 1
            assert "holds a TCP connection" in page.inner_text("#jobs tr.reason")
            # The node that left is still there, down; block shows on the node that has it.
            page.wait_for_selector(f'[data-node="{GONE}"].down .flag.dead')
            assert page.inner_text(f"{here} .flags") == "block"
            assert page.inner_text(f"{here} .disc .load") == "1.50"
            assert "6.0G/8.0G" in page.inner_text(f"{here} .bars")
        finally:
            browser.close()
