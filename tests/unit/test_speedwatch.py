"""Speeds measured again while idle: when a reading is due, which is kept, and that a speed set by
hand is never replaced (fake clock, fake benchmark)."""

from __future__ import annotations

import pytest

from pymosix.load.speedwatch import (
    IDLE_UTIL,
    NodeState,
    SpeedWatch,
    due,
    kept,
    measure_in_subprocess,
)


def test_due_only_when_the_interval_is_over_and_the_node_is_idle() -> None:
    idle = NodeState(util=0.02, jobs=0, speed=5000)
    assert due(100.0, 0.0, 60.0, idle)
    assert not due(50.0, 0.0, 60.0, idle), "interval not over"
    assert not due(100.0, 0.0, 0.0, idle), "0 is never"
    assert not due(100.0, 0.0, 60.0, NodeState(IDLE_UTIL, 0, 5000)), "CPUs busy"
    assert not due(100.0, 0.0, 60.0, NodeState(0.0, 1, 5000)), "a job on the node"


def test_the_best_reading_is_kept() -> None:
    assert kept(5000, 9000) == 9000
    assert kept(9000, 5000) == 9000


class Node:
    def __init__(self) -> None:
        self.now = 0.0
        self.state = NodeState(util=0.0, jobs=0, speed=5000)
        self.readings = [9000, 7000]

    def set_speed(self, speed: int) -> None:
        self.state = NodeState(self.state.util, self.state.jobs, speed)

    async def measure(self) -> int:
        return self.readings.pop(0)

    def watch(self, interval_s: float = 10.0) -> SpeedWatch:
        return SpeedWatch(
            interval_s, lambda: self.state, self.set_speed, lambda: self.now, self.measure
        )


async def test_a_better_reading_raises_the_speed_and_a_worse_one_does_not() -> None:
    node = Node()
    w = node.watch()
    await w.start()
    try:
        await w.step()
        assert w.readings == [], "not due yet"
        node.now = 10.0
        await w.step()
        assert node.state.speed == 9000
        node.now = 15.0
        await w.step()
        assert w.readings == [9000], "the interval starts again at each reading"
        node.now = 20.0
        await w.step()
        assert w.readings == [9000, 7000]
        assert node.state.speed == 9000, "a lower reading never lowers the speed"
    finally:
        await w.stop()


async def test_a_busy_node_is_not_measured() -> None:
    node = Node()
    w = node.watch()
    await w.start()
    node.now = 100.0
    node.state = NodeState(util=0.9, jobs=0, speed=5000)
    await w.step()
    node.state = NodeState(util=0.0, jobs=2, speed=5000)
    await w.step()
    assert w.readings == []
    await w.stop()


async def test_a_speed_set_by_hand_is_never_replaced() -> None:
    node = Node()
    w = node.watch()
    await w.start()
    node.set_speed(1234)  # mosctl setspeed
    node.now = 100.0
    await w.step()
    await w.step()
    assert w.readings == []
    assert node.state.speed == 1234
    await w.stop()


async def test_a_failed_benchmark_changes_nothing() -> None:
    node = Node()

    async def broken() -> int:
        raise RuntimeError("the speed benchmark exited with status 1")

    w = SpeedWatch(1.0, lambda: node.state, node.set_speed, lambda: node.now, broken)
    await w.start()
    node.now = 5.0
    await w.step()
    assert node.state.speed == 5000
    await w.stop()


@pytest.mark.timeout(60)
async def test_the_real_benchmark_runs_in_a_child() -> None:
    assert 1 <= await measure_in_subprocess() <= 10_000_000
