"""Prometheus metrics: webhooks by source/outcome, deliveries by destination/outcome,
queue depth, oldest pending age, delivery latency. One registry per app."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from relay.store import STATUSES

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

    def webhook(self, source: str, outcome: str) -> None:
        self.webhooks.labels(source, outcome).inc()

    def settled(self, destination: str, outcome: str) -> None:
        self.deliveries.labels(destination, outcome).inc()

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
        for (destination, status), count in sorted(stats["by_status"].items()):
            if status in STATUSES:
                depth.add_metric([destination, status], count)
        oldest = GaugeMetricFamily(
            "relay_oldest_pending_age_seconds", "Age of the oldest pending delivery"
        )
        oldest.add_metric([], stats["oldest_pending_age"])
        body = generate_latest(self.registry)
        extra = _Once([depth, oldest, *_disabled_gauges(destinations, disabled)])
        return body + generate_latest(extra)  # type: ignore[arg-type]


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
