"""A small seeded run of every fuzz target (bench/fuzz): no crash, no hang, and the mutator gets
past the first checks (some inputs decode as valid messages)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.fuzz.run import fuzz
from bench.fuzz.targets import TARGETS


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeded_fuzz_run(name: str) -> None:
    result = fuzz(name, inputs=1500, seed=1, hang_s=5.0)
    assert result.failure is None
    assert result.inputs == 1500
    assert result.accepted > 0


def test_the_fuzz_loop_reports_a_crash(tmp_path: Path) -> None:
    TARGETS["_broken"] = (lambda data: 1 / len(data) > 0, [b""], [])  # ZeroDivisionError
    try:
        result = fuzz("_broken", inputs=10, seed=1, crash_dir=tmp_path)
    finally:
        del TARGETS["_broken"]
    assert result.failure is not None
    assert "ZeroDivisionError" in result.failure
    assert (tmp_path / "fuzz-crash-_broken.bin").read_bytes() == b""


def test_hypothesis_engine_runs() -> None:
    result = fuzz("control", inputs=50, seed=1, engine="hypothesis")
    assert result.failure is None
    assert result.inputs >= 50
