"""Prometheus metrics: webhooks by source/outcome, deliveries by destination/outcome,
queue depth, oldest pending age, delivery latency. One registry per app.

The ledger figures (deliveries by destination and status, oldest pending age) are read
at scrape time from counts the store keeps itself (`Store.stats`): a scrape costs the
same at 10 deliveries and at 10M. With RELAY_ADMIN_TOKEN set, a scrape must carry
`Authorization: Bearer <token>` (`authorized`)."""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from relay.store import STATUSES, DestinationError

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.webhooks = Counter(
            "relay_webhooks",
            "Webhooks received, by source and outcome",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "relay_delivery_results",
            "Delivery results settled by this process, by destination and outcome",
            ["destination", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "relay_delivery_latency_seconds",
            "From webhook recorded to destination accepted",
            ["destination"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._stats: dict[str, Any] = {}
        # The newest failed attempt per destination in this process (relay.tally saves it).
        self.failures: dict[str, DestinationError] = {}

    def webhook(self, source: str, outcome: str) -> None:
        self.webhooks.labels(source, outcome).inc()

    def settled(self, destination: str, outcome: str) -> None:
        self.deliveries.labels(destination, outcome).inc()

    def attempt_failed(
        self, destination: str, delivery_id: int, status_code: int | None, error: str
    ) -> None:
        self.failures[destination] = DestinationError(time.time(), error, status_code, delivery_id)

    def delivered(self, destination: str, seconds: float) -> None:
        self.latency.labels(destination).observe(max(0.0, seconds))

    async def render(self, store: Any, destinations: Iterable[str] = ()) -> bytes:
        """Prometheus text, with ledger gauges read from the store at scrape time."""
        stats = await store.stats(time.time())
        disabled = await store.disabled_destinations()
        depth = GaugeMetricFamily(
            "relay_deliveries",
            "Deliveries in the ledger by destination and status",
            labels=["destination", "status"],
        )
        counts = stats["by_status"]
        # every status of every destination seen, 0 included: a queue that empties reads 0
        # rather than vanishing from the scrape
        for destination in sorted({d for d, _ in counts}):
            for status in STATUSES:
                depth.add_metric([destination, status], counts.get((destination, status), 0))
        oldest = GaugeMetricFamily(
            "relay_oldest_pending_age_seconds", "Age of the oldest pending delivery"
        )
        oldest.add_metric([], stats["oldest_pending_age"])
        body = generate_latest(self.registry)
        extra = _Once(
            [
                depth,
                oldest,
                *reconcile_families(await store.reconcile_states()),
                *_disabled_gauges(destinations, disabled),
                *await _submission_families(store),
            ]
        )
        return body + generate_latest(extra)  # type: ignore[arg-type]


async def _submission_families(store: Any) -> list[Any]:
    """Queued submissions followed to their outcome (impact.com), from the ledger's
    counters: how many are being followed, and the outcomes so far by ErrorType and the
    first ErrorReason code."""
    stats = await store.submission_stats()
    following = GaugeMetricFamily(
        "relay_submissions_following",
        "Queued submissions (impact.com) whose outcome relay is still waiting for",
        labels=["destination"],
    )
    for destination, count in sorted(stats["following"].items()):
        following.add_metric([destination], count)
    outcomes = CounterMetricFamily(
        "relay_submission_outcomes",
        "Outcomes of followed submissions: accepted, duplicate (the destination had it),"
        " rejected (by ErrorType and first ErrorReason code), unresolved (no outcome in time)",
        labels=["destination", "outcome", "error_type", "reason"],
    )
    for key, count in sorted(stats["outcomes"].items()):
        outcomes.add_metric(list(key), count)
    return [following, outcomes]


def authorized(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries `Bearer <token>`, compared in constant time."""
    scheme, _, given = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Starlette decodes header bytes as latin-1: encoding back gives the bytes sent
    return hmac.compare_digest(given.strip().encode("latin-1"), token.encode())


def _disabled_gauges(destinations: Iterable[str], disabled: dict[str, Any]) -> list[Any]:
    """relay_destination_disabled 1/0 per configured destination (and any disabled one), and
    since when for the disabled ones: alert on `relay_destination_disabled == 1`."""
    flag = GaugeMetricFamily(
        "relay_destination_disabled",
        "1 while the destination is disabled because its endpoint said it is gone (HTTP 410)",
        labels=["destination"],
    )
    since = GaugeMetricFamily(
        "relay_destination_disabled_since_seconds",
        "When the destination was disabled (Unix time)",
        labels=["destination"],
    )
    for name in sorted(set(destinations) | set(disabled)):
        flag.add_metric([name], 1 if name in disabled else 0)
        if name in disabled:
            since.add_metric([name], disabled[name].since)
    return [flag, since]


class _Once:
    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> Any:
        return iter(self._families)


def reconcile_families(states: list[Any]) -> list[Any]:
    """relay_reconcile_*: each reconciled source's state as the ledger holds it (so every
    process shows the same figures, whichever one reconciles)."""
    success = GaugeMetricFamily(
        "relay_reconcile_last_success_timestamp_seconds",
        "When the source's last successful reconcile ended (Unix time)",
        labels=["source"],
    )
    mark = GaugeMetricFamily(
        "relay_reconcile_mark_timestamp_seconds",
        "The reconcile high-water mark: everything before it was read from the API",
        labels=["source"],
    )
    failing = GaugeMetricFamily(
        "relay_reconcile_failing", "1 when the source's last reconcile failed", labels=["source"]
    )
    runs = CounterMetricFamily(
        "relay_reconcile_runs", "Successful reconcile runs", labels=["source"]
    )
    errors = CounterMetricFamily(
        "relay_reconcile_errors", "Failed reconcile runs", labels=["source"]
    )
    for state in states:
        if state.last_success_at is not None:
            success.add_metric([state.source], state.last_success_at)
        if state.mark is not None:
            mark.add_metric([state.source], state.mark)
        failing.add_metric([state.source], 1.0 if state.failing else 0.0)
        runs.add_metric([state.source], state.runs)
        errors.add_metric([state.source], state.failures)
    return [success, mark, failing, runs, errors]
