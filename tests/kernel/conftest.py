"""Fixtures for real-kernel tests: test beds with a unique name per test, always taken down."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator

import pytest

from pymosix.testbed import TestBed


@pytest.fixture
def make_bed() -> Iterator[Callable[..., TestBed]]:
    """make_bed(nodes=2, **kw) -> a running bed; every bed made is taken down after the test."""
    beds: list[TestBed] = []

    def make(
        nodes: int = 2, converge: bool = True, measure_speed: bool = False, **kw: object
    ) -> TestBed:
        # The reference speed unless a test measures it: loads then read in runnable tasks, and a
        # busy machine's slower measurement cannot move them.
        if not measure_speed:
            kw["extra_args"] = ["--set", "speed=10000", *kw.get("extra_args", ())]  # type: ignore[misc]
        bed = TestBed.up(nodes=nodes, name=f"t{secrets.token_hex(3)}", **kw)  # type: ignore[arg-type]
        beds.append(bed)
        if converge and "agents" not in kw:
            bed.wait_converged()
        return bed

    try:
        yield make
    finally:
        for bed in beds:
            bed.down()


def wait_until(
    what: str, predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.05
) -> float:
    """Poll predicate until it holds; return the seconds it took, or fail naming `what`."""
    start = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except Exception:
            pass
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"not within {timeout_s} s: {what}", pytrace=False)
        time.sleep(poll_s)
