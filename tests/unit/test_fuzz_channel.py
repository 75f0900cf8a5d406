"""A small seeded run of the channel fuzzer (bench/fuzz/channel.py runs 100,000 per target)."""

from __future__ import annotations

import pytest
from bench.fuzz import channel


@pytest.mark.parametrize("target", sorted(channel.TARGETS))
def test_seeded_fuzz_finds_no_crash(target: str) -> None:
    outcomes = channel.run(target, inputs=300, rng_seed=1, batch=5)
    assert sum(outcomes.values()) >= 300
    # Not all refused at the first check: some reach the cryptography, or the decoder.
    assert len(outcomes) >= 2, outcomes


def test_a_crash_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness itself: an unexpected exception stops the run (the fuzzer can fail)."""

    def broken(data: bytes) -> str:
        if len(data) > 3:
            raise IndexError("boom")
        return "ok"

    monkeypatch.setitem(
        channel.TARGETS, "decode", channel.Target(channel.TARGETS["decode"].strategy, broken)
    )
    assert channel.main(["--inputs", "50", "--targets", "decode"]) == 1
