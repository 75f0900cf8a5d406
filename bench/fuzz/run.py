"""The fuzz loop: inputs from the mutator or from hypothesis, a watchdog, and what was found."""

from __future__ import annotations

import random
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from bench._common import RESULTS
from bench.fuzz.targets import TARGETS, mutate


@dataclass
class Result:
    inputs: int
    slowest_s: float
    #: Inputs the decoder took as valid: the fuzz got past every check with these.
    accepted: int = 0
    failure: str | None = None


class Hang(BaseException):
    """Raised by the watchdog in the target; BaseException so no decoder's except catches it."""


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang


def fuzz(
    name: str,
    inputs: int,
    seed: int,
    engine: str = "mutate",
    hang_s: float = 2.0,
    crash_dir: Path = RESULTS,
) -> Result:
    """Run `inputs` inputs through target `name`; stop at the first crash or hang, whose input
    is kept in `crash_dir` as fuzz-crash-NAME.bin."""
    target, seeds, tokens = TARGETS[name]
    result = Result(0, 0.0)

    def one(data: bytes) -> None:
        start = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, hang_s)
        try:
            result.accepted += target(data)
        except Hang:
            raise AssertionError(f"hang: over {hang_s} s on one input") from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        result.inputs += 1
        result.slowest_s = max(result.slowest_s, time.perf_counter() - start)

    old = signal.signal(signal.SIGALRM, _alarm)
    data = b""
    try:
        if engine == "hypothesis":
            _with_hypothesis(one, inputs, seed, seeds)
        else:
            rng = random.Random(seed)
            corpus = list(seeds)
            for _ in range(inputs):
                data = mutate(rng.choice(corpus), rng, tokens)
                one(data)
                if len(corpus) < 256 and rng.random() < 0.001:
                    corpus.append(data)  # keep some mutants: edits pile up, deeper states
    except Exception as e:  # the finding: what the target let through
        result.failure = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        crash_dir.mkdir(exist_ok=True)
        (crash_dir / f"fuzz-crash-{name}.bin").write_bytes(data)
        traceback.print_exc()
    finally:
        signal.signal(signal.SIGALRM, old)
    return result


def _with_hypothesis(
    one: Callable[[bytes], None], inputs: int, seed: int, seeds: list[bytes]
) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    @hseed(seed)
    @settings(
        max_examples=inputs,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.one_of(st.binary(max_size=2048), st.sampled_from(seeds)))
    def driver(data: bytes) -> None:
        one(data)

    driver()
