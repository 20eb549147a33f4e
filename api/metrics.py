"""Prometheus metrics: what an operator graphs and alerts on.

Counters and histograms are updated on the hot path; positions, lag,
projection states and the persisted rejection counts (which cover every
process and outlive the rows the bound removed) are read from the
database at scrape time. Each app
has its own registry (several apps in one test process must not share).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from destinations import store as destination_store
from destinations.spec import Destination
from ledger.errors import HookledgerError
from ledger.recorder import read_head, rejections, translated
from projections.adapters import Adapter
from projections.status import status

STATES = ("live", "catching_up", "failed")


class Metrics:
    """The app's metrics and its registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.deliveries = Counter(
            "hookledger_deliveries_total",
            "Deliveries by source and outcome (accepted, duplicate, rejected reasons, errors).",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.ingest_seconds = Histogram(
            "hookledger_ingest_seconds",
            "Time from request to durable acknowledgement, by source.",
            ["source"],
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "hookledger_append_batch_size",
            "Deliveries committed per group-commit transaction.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )

        self._counters: dict[tuple[str, str], Any] = {}
        self._timers: dict[str, Any] = {}

    def delivered(self, source: str, outcome: str, seconds: float | None) -> None:
        """Count one delivery (and time it when it was stored); children cached per label."""
        counter = self._counters.get((source, outcome))
        if counter is None:
            counter = self._counters[(source, outcome)] = self.deliveries.labels(source, outcome)
        counter.inc()
        if seconds is not None:
            timer = self._timers.get(source)
            if timer is None:
                timer = self._timers[source] = self.ingest_seconds.labels(source)
            timer.observe(seconds)

    def watch(
        self,
        engine: Engine,
        projectors: dict[str, Adapter],
        destinations: dict[str, Destination] | None = None,
    ) -> None:
        """Add the scrape-time gauges for this database, projections and destinations."""
        self.registry.register(_StateCollector(engine, projectors, destinations or {}))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(
        self, engine: Engine, projectors: dict[str, Adapter], destinations: dict[str, Destination]
    ) -> None:
        self.engine = engine
        self.projectors = projectors
        self.destinations = destinations

    def describe(self) -> list:
        return []  # collected lazily: never query the database at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("hookledger_database_up", "1 when the database answered the scrape.")
        head = GaugeMetricFamily("hookledger_head_position", "Last position in the log.")
        try:
            with translated(), self.engine.connect() as conn:
                position, _ = read_head(conn)
                refused = rejections.counts(conn)
                kept = rejections.usage(conn)
            entries = status(self.engine, self.projectors)
            with translated():
                handed = destination_store.status(self.engine, self.destinations)
        except HookledgerError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        head.add_metric([], position)
        yield up
        yield head
        yield from _rejection_metrics(refused, kept)
        labels = ["projection"]
        pos = GaugeMetricFamily(
            "hookledger_projection_position", "Last position applied.", labels=labels
        )
        lag = GaugeMetricFamily(
            "hookledger_projection_lag", "Events not yet applied.", labels=labels
        )
        rows = GaugeMetricFamily("hookledger_projection_rows", "Live rows.", labels=labels)
        state = GaugeMetricFamily(
            "hookledger_projection_state", "1 for the current state.", labels=[*labels, "state"]
        )
        errors = GaugeMetricFamily(
            "hookledger_projection_errors", "Handler errors recorded.", labels=labels
        )
        progress = GaugeMetricFamily(
            "hookledger_rebuild_progress_ratio", "Rebuild progress, 0 to 1.", labels=labels
        )
        for e in entries:
            name = [e["name"]]
            pos.add_metric(name, e["position"])
            lag.add_metric(name, e["lag"])
            rows.add_metric(name, e["rows"])
            errors.add_metric(name, e["errors"])
            for s in STATES:
                state.add_metric([e["name"], s], 1 if e["state"] == s else 0)
            if e["rebuild"] is not None:
                progress.add_metric(name, e["rebuild"]["percent"] / 100)
        yield from (pos, lag, rows, state, errors, progress)
        yield from _destination_metrics(handed)


DESTINATION_STATES = ("live", "paused", "failed")


def _destination_metrics(entries: list[dict[str, Any]]) -> Iterator[Any]:
    """Per destination: position, lag, attempts by outcome, dead letters, state (kept in
    the destination's row as they happen: no count over the attempts)."""
    labels = ["destination"]
    pos = GaugeMetricFamily(
        "hookledger_destination_position", "Every event up to it is handed over.", labels=labels
    )
    lag = GaugeMetricFamily(
        "hookledger_destination_lag", "Events of the log not yet handed over.", labels=labels
    )
    attempts = CounterMetricFamily(
        "hookledger_destination_attempts",
        "Attempts by outcome (delivered, failed: any other answer, a timeout, an error).",
        labels=[*labels, "outcome"],
    )
    dead = GaugeMetricFamily(
        "hookledger_destination_dead_letters", "Events declared dead.", labels=labels
    )
    state = GaugeMetricFamily(
        "hookledger_destination_state", "1 for the current state.", labels=[*labels, "state"]
    )
    for e in entries:
        name = [e["name"]]
        if e["position"] is not None:
            pos.add_metric(name, e["position"])
            lag.add_metric(name, e["lag"])
        for outcome in ("delivered", "failed"):
            attempts.add_metric([e["name"], outcome], e[outcome])
        dead.add_metric(name, e["dead"])
        for s in DESTINATION_STATES:
            state.add_metric([e["name"], s], 1 if e["state"] == s else 0)
    yield from (pos, lag, attempts, dead, state)


def _rejection_metrics(counts: list, kept: rejections.Usage) -> Iterator[Any]:
    labels = ["source", "reason"]
    total = CounterMetricFamily(
        "hookledger_rejections",
        "Refused deliveries ever counted, by source and reason (kept across restarts).",
        labels=labels,
    )
    unrecorded = CounterMetricFamily(
        "hookledger_rejections_unrecorded",
        "Refused deliveries counted but never stored: the rejection writer was saturated.",
        labels=labels,
    )
    for row in counts:
        total.add_metric([row.source, row.reason], row.refused)
        unrecorded.add_metric([row.source, row.reason], row.unrecorded)
    evicted = CounterMetricFamily(
        "hookledger_rejections_evicted",
        "Stored rejections removed, oldest first, to stay within rejections_max_bytes.",
    )
    evicted.add_metric([], kept.evicted)
    stored = GaugeMetricFamily("hookledger_rejections_stored", "Rejections in the table now.")
    stored.add_metric([], kept.rows)
    size = GaugeMetricFamily(
        "hookledger_rejections_stored_bytes", "Headers plus bodies of the stored rejections."
    )
    size.add_metric([], kept.bytes)
    yield from (total, unrecorded, evicted, stored, size)
