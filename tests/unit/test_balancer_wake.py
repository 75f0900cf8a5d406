"""The balancer runs a round as soon as a new job has its first CPU figure, not up to half a load
interval later (balancer.py): part of the time to balance (issue 13 item 4)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any, cast

from pymosix.balancer import Balancer


def test_a_measured_job_wakes_the_balancer_at_once() -> None:
    async def main() -> float:
        config = SimpleNamespace(load_interval_ms=20_000, load_max_age_ms=5000, balance=True)
        agent = SimpleNamespace(config=config)
        engine = SimpleNamespace(measure_listeners=[], accept=None)
        balancer = Balancer(cast(Any, agent), cast(Any, None), cast(Any, engine))
        ran = asyncio.Event()

        async def round_() -> None:
            ran.set()

        balancer.round = round_  # type: ignore[method-assign]
        await balancer.start()
        try:
            t0 = time.monotonic()
            for listener in engine.measure_listeners:
                listener()  # what MigrationEngine.measured does
            await asyncio.wait_for(ran.wait(), 5.0)  # the period is 10 s
            return time.monotonic() - t0
        finally:
            await balancer.stop()

    assert asyncio.run(main()) < 1.0
