"""Measure this node's speed again while it is idle, keeping the best reading.

The agent measures its speed once at start (pymosix.load.speed), in a fraction of a second; if
anything else held the CPU then (a neighbour on a shared host, jobs left running by a restart), the
reading is low and the balancer sends the node less work than it can do, for as long as the agent
runs. Other load only ever lowers a reading, so the agent measures again, at most every
`speed_recheck_s`, while its CPUs are idle and it holds no job, and keeps the highest. A speed set
in the config or with `mosctl setspeed` is the admin's and is never replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: CPU utilisation of the node's CPUs below which it counts as idle (the agent's own sampling and
#: gossip stay far below it).
IDLE_UTIL = 0.1
#: A measurement that takes longer than this is given up (the node is not idle after all).
MEASURE_TIMEOUT_S = 30.0
#: How often the idle condition is looked at.
POLL_S = 1.0


@dataclass(frozen=True, slots=True)
class NodeState:
    """What the watch needs to know of the node at one moment."""

    util: float
    jobs: int
    speed: int


def due(now: float, last_s: float, interval_s: float, state: NodeState) -> bool:
    """Whether to measure now: the interval is over and nothing runs on the node's CPUs."""
    return (
        interval_s > 0 and now - last_s >= interval_s and state.jobs == 0 and state.util < IDLE_UTIL
    )


def kept(current: int, measured: int) -> int:
    """The speed to keep after a new reading: the best seen (load only lowers a reading)."""
    return max(current, measured)


async def measure_in_subprocess() -> int:
    """One measurement in a child interpreter: the agent's event loop never stalls for it, and the
    child runs on the node's CPUs (it inherits the agent's cgroup and affinity)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pymosix.load.speed",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), MEASURE_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"the speed benchmark exited with status {proc.returncode}")
    speed = json.loads(out)["speed"]
    if not isinstance(speed, int) or speed <= 0:
        raise ValueError(f"the speed benchmark printed a bad speed: {speed!r}")
    return speed


class SpeedWatch:
    """The agent component: polls the node's state and raises its speed when a reading is better.

    `state()` reads the node now; `set_speed(n)` makes n the node's speed. `measure` is the
    benchmark (a subprocess in the agent; a fake in unit tests)."""

    def __init__(
        self,
        interval_s: float,
        state: Callable[[], NodeState],
        set_speed: Callable[[int], None],
        clock: Callable[[], float],
        measure: Callable[[], Awaitable[int]] = measure_in_subprocess,
    ) -> None:
        self.interval_s = interval_s
        self.state = state
        self.set_speed = set_speed
        self.clock = clock
        self.measure = measure
        self.readings: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self._ours = 0
        self._last = 0.0

    async def start(self) -> None:
        self._ours = self.state().speed
        self._last = self.clock()
        if self.interval_s > 0:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def step(self) -> None:
        """Measure if due; keep the better speed. Stops for good once someone else set one."""
        state = self.state()
        if state.speed != self._ours:
            log.info("speed %d was set by hand: no more measurements", state.speed)
            self.interval_s = 0
            return
        if not due(self.clock(), self._last, self.interval_s, state):
            return
        self._last = self.clock()
        try:
            measured = await self.measure()
        except (OSError, ValueError, RuntimeError, TimeoutError) as e:
            log.warning("measuring this node's speed again failed: %s", e)
            return
        self.readings.append(measured)
        after = self.state()
        # (Its utilisation now counts the benchmark itself.) A job that came meanwhile shared
        # the CPU: the reading may be low, but a low reading is never kept anyway.
        if after.speed != self._ours:
            return  # set by hand while it ran
        best = kept(after.speed, measured)
        if best != after.speed:
            log.info("measured this node's speed again: %d (was %d)", best, after.speed)
            self._ours = best
            self.set_speed(best)

    async def _run(self) -> None:
        while self.interval_s > 0:
            await asyncio.sleep(POLL_S)
            await self.step()
