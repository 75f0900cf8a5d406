"""The move counters and histograms, fed records as the engine's hook feeds them, read back
through prometheus_client's own text format and parser."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pymosix.errors import MigrationError
from pymosix.metrics import MoveMetrics
from pymosix.migration.moves import CannotMove, MoveRecord, Refused, reason_of, result_of


def record(direction: str, result: str, reason: str, freeze: float | None = 0.2) -> MoveRecord:
    return MoveRecord(0.0, direction, 1, 2, 0, 1, 3, reason, result, 0.5, freeze, 3 << 20)


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_results_and_reasons_of_moves() -> None:
    assert result_of(None) == "ok"
    assert result_of(CannotMove("holds a TCP connection")) == "cantmove"
    assert result_of(Refused("blocks guests")) == "refused"
    assert result_of(MigrationError("lost")) == "failed"
    assert result_of(OSError("reset")) == "failed"
    assert reason_of(1.5, None) == "balance"
    assert reason_of(None, None) == "request"
    assert reason_of(None, "expel") == "expel"
    assert reason_of(None, "nonsense") == "request"


def test_moves_are_counted_by_direction_result_and_reason() -> None:
    reg = CollectorRegistry()
    m = MoveMetrics(reg)
    before = samples(reg)
    zero = (
        "pymosix_migrations_total",
        frozenset({("direction", "in"), ("result", "failed"), ("reason", "expel")}),
    )
    assert before[zero] == 0  # every series is there from the start
    for r in (
        record("out", "ok", "balance", 0.2),
        record("out", "ok", "request", 1.5),
        record("out", "refused", "balance", None),
        record("in", "ok", "request", None),
    ):
        m.moved(r)
    s = samples(reg)

    def mig(direction: str, result: str, reason: str) -> float:
        labels = {("direction", direction), ("result", result), ("reason", reason)}
        return s["pymosix_migrations_total", frozenset(labels)]

    assert mig("out", "ok", "balance") == 1
    assert mig("out", "ok", "request") == 1
    assert mig("out", "refused", "balance") == 1
    assert mig("in", "ok", "request") == 1
    assert mig("in", "ok", "balance") == 0
    # The balancer's decisions: the outgoing moves it started, by how they ended.
    assert s["pymosix_balancer_decisions_total", frozenset({("result", "ok")})] == 1
    assert s["pymosix_balancer_decisions_total", frozenset({("result", "refused")})] == 1
    # Histograms of the moves out that worked (an incoming one is the other node's to time).
    assert s["pymosix_migration_freeze_seconds_count", frozenset()] == 2
    assert s["pymosix_migration_freeze_seconds_sum", frozenset()] == 1.7
    assert s["pymosix_migration_freeze_seconds_bucket", frozenset({("le", "0.25")})] == 1
    assert s["pymosix_migration_image_bytes_count", frozenset()] == 2
    assert s["pymosix_migration_image_bytes_sum", frozenset()] == 2 * (3 << 20)
