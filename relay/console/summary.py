"""The overview's figures, from reads that cost the same whatever the ledger's size:
`store.stats` (deliveries by destination and status), the per-hour tallies of the last
24 hours (relay.tally), each destination's last failed attempt and its oldest pending
delivery.

Success rate of a destination: of the attempts settled in the last 24 hours that got
an answer about the conversion — delivered, failed for good, or to be retried — the
share delivered. Skips (a conversion the destination cannot take) and rate-limit
deferrals are not attempts. A destination "fails repeatedly" when at least
FAILING_ATTEMPTS of them failed and fewer than half succeeded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.store import (
    DELIVERED,
    FAILED,
    PENDING,
    SKIPPED,
    TALLY_DELIVERY,
    TALLY_WEBHOOK,
    DestinationError,
    DisabledDestination,
    ReconcileState,
    Store,
)
from relay.tally import HOUR, hour_of

WEBHOOK_OUTCOMES = ("accepted", "duplicate", "ignored", "quarantined", "rejected")
# Other answers, shown together: refused before the body was read or not stored.
OTHER_OUTCOMES = {
    "throttled": "locked out",
    "too_large": "too large",
    "too_slow": "too slow",
    "busy": "busy (503)",
    "disconnected": "client gone",
    "malformed": "not a JSON object",
    "store_error": "store unavailable (503)",
}
FAILING_ATTEMPTS = 3
BACKLOG_SECONDS = 15 * 60  # a pending delivery older than this is a backlog worth a word
WINDOW_HOURS = 24


@dataclass(slots=True)
class SourceFigures:
    name: str
    configured: bool
    counts: dict[str, int]
    other: int = 0
    other_detail: str = ""
    reconcile: ReconcileState | None = None  # RELAY_<SOURCE>__RECONCILE_INTERVAL_SECONDS

    @property
    def total(self) -> int:
        return sum(self.counts.values()) + self.other


@dataclass(slots=True)
class DestinationFigures:
    name: str
    configured: bool
    counts: dict[str, int]  # by status, the whole ledger
    oldest_pending_age: float | None
    delivered_24h: int = 0
    failed_24h: int = 0  # failed for good or to be retried
    error: DestinationError | None = None
    disabled: DisabledDestination | None = None  # its endpoint said it is gone (HTTP 410)
    health: str = "ok"  # ok | warn | bad | idle
    verdict: str = ""
    reasons: list[str] = field(default_factory=list)

    @property
    def attempts_24h(self) -> int:
        return self.delivered_24h + self.failed_24h

    @property
    def success_rate(self) -> float | None:
        return self.delivered_24h / self.attempts_24h if self.attempts_24h else None


@dataclass(slots=True)
class Overview:
    sources: list[SourceFigures]
    destinations: list[DestinationFigures]
    since: float  # the start of the window the 24 h figures cover


def _names(configured: Iterable[str], seen: Iterable[str]) -> list[str]:
    first = list(configured)
    return first + sorted(set(seen) - set(first))


def _plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


def judge(d: DestinationFigures, now: float) -> None:
    """Health, a one-line verdict in words, and the reasons behind it."""
    rate = d.success_rate
    failed_now = d.counts.get(FAILED, 0)
    if d.disabled is not None:
        d.health = "bad"
        d.verdict = "Disabled by its endpoint: nothing is sent to it until it is enabled again"
    elif d.failed_24h >= FAILING_ATTEMPTS and rate is not None and rate < 0.5:
        d.health = "bad"
        d.verdict = (
            f"Failing repeatedly: {d.failed_24h} of {_plural(d.attempts_24h, 'attempt')}"
            " in the last 24 h failed"
        )
    elif d.failed_24h or failed_now:
        d.health = "warn"
        d.verdict = "Some deliveries failed"
    elif d.oldest_pending_age is not None and d.oldest_pending_age > BACKLOG_SECONDS:
        d.health = "warn"
        d.verdict = "Deliveries are waiting"
    elif not d.attempts_24h and not any(d.counts.values()):
        d.health = "idle"
        d.verdict = "Nothing delivered yet"
    elif not d.attempts_24h:
        d.health = "idle"
        d.verdict = "No attempts in the last 24 h"
    else:
        d.verdict = "Delivering"
    if failed_now:
        d.reasons.append(
            f"{_plural(failed_now, 'delivery', 'deliveries')} failed for good, waiting for Retry"
        )
    if d.oldest_pending_age is not None and d.oldest_pending_age > BACKLOG_SECONDS:
        d.reasons.append("the oldest pending delivery has waited over 15 minutes")
    if not d.configured:
        d.reasons.append("not configured now: nothing is sent to it")


async def overview(
    store: Store,
    sources: Iterable[str],
    destinations: Iterable[str],
    now: float | None = None,
) -> Overview:
    now = time.time() if now is None else now
    since_hour = hour_of(now) - (WINDOW_HOURS - 1) * HOUR
    stats = await store.stats(now)
    tallies = await store.tallies(since_hour)
    errors = await store.destination_errors()
    disabled = await store.disabled_destinations()
    reconciled = {state.source: state for state in await store.reconcile_states()}
    by_status: Mapping[tuple[str, str], int] = stats["by_status"]

    webhook: dict[str, dict[str, int]] = {}
    delivery: dict[str, dict[str, int]] = {}
    for (kind, name, outcome), n in tallies.items():
        table = webhook if kind == TALLY_WEBHOOK else delivery if kind == TALLY_DELIVERY else None
        if table is not None:
            table.setdefault(name, {})[outcome] = n

    configured_sources = list(sources)
    source_rows = []
    for name in _names(configured_sources, webhook):
        counts = webhook.get(name, {})
        other = {o: n for o, n in counts.items() if o not in WEBHOOK_OUTCOMES and n}
        source_rows.append(
            SourceFigures(
                name,
                name in configured_sources,
                {o: counts.get(o, 0) for o in WEBHOOK_OUTCOMES},
                sum(other.values()),
                ", ".join(f"{n} {OTHER_OUTCOMES.get(o, o)}" for o, n in sorted(other.items())),
                reconciled.get(name),
            )
        )

    configured_dests = list(destinations)
    names = _names(configured_dests, [d for d, _ in by_status] + list(errors) + list(disabled))
    oldest = await store.oldest_pending(names)
    dest_rows = []
    for name in names:
        results = delivery.get(name, {})
        figures = DestinationFigures(
            name,
            name in configured_dests,
            {s: by_status.get((name, s), 0) for s in (DELIVERED, PENDING, FAILED, SKIPPED)},
            max(0.0, now - oldest[name]) if name in oldest else None,
            delivered_24h=results.get(DELIVERED, 0),
            failed_24h=results.get(FAILED, 0) + results.get(PENDING, 0),
            error=errors.get(name),
            disabled=disabled.get(name),
        )
        judge(figures, now)
        dest_rows.append(figures)
    return Overview(source_rows, dest_rows, float(since_hour))


def describe_rate(figures: DestinationFigures) -> dict[str, Any]:
    """The success rate as the page shows it."""
    rate = figures.success_rate
    if rate is None:
        return {"text": "–", "detail": "no attempts in the last 24 h"}
    # Rounded down, so that any failure shows: 999 of 1000 is 99.9 %, never 100 %.
    percent = math.floor(rate * 1000) / 10
    return {
        "text": f"{percent:g} %",
        "detail": f"{figures.delivered_24h} of {_plural(figures.attempts_24h, 'attempt')}",
    }
