"""Tally: the in-process counters of relay.metrics, kept per hour in the ledger.

The counters behind `/metrics` (webhooks by source and outcome, delivery results by
destination and outcome) live in one process's memory and start at zero with it; the
console shows the last 24 hours whichever process took the webhooks or made the
attempts, and across restarts. So a background task, every few seconds, reads the
counters (prometheus_client's own `collect()`), adds what they gained since its last
flush to the current hour's tallies (`Store.add_tallies`, which adds, so several
processes on one ledger sum up), keeps each destination's newest failed attempt, and
drops hours older than a week.

The webhook path writes nothing more than before: the counters it already increments
are read here. Writes are bounded whatever the request rate — at most one small
transaction per interval, none when nothing changed. A flush that fails (store down)
keeps its counts for the next one; a process killed outright loses at most its last
interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from relay.errors import StoreError
from relay.metrics import Metrics
from relay.store import TALLY_DELIVERY, TALLY_WEBHOOK, Store

log = logging.getLogger("relay.tally")
FLUSH_SECONDS = 5.0
KEEP_HOURS = 8 * 24  # the console shows 24 h; a week more costs a few hundred rows
HOUR = 3600


def hour_of(moment: float) -> int:
    """The start of the hour holding `moment`, in epoch seconds."""
    return int(moment // HOUR * HOUR)


def _read(counter: Any, kind: str, label: str) -> dict[tuple[str, str, str], int]:
    found: dict[tuple[str, str, str], int] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = (kind, sample.labels[label], sample.labels["outcome"])
                found[key] = int(sample.value)
    return found


class Tally:
    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        every: float = FLUSH_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.every = every
        self._clock = clock
        self._flushed: dict[tuple[str, str, str], int] = {}
        self._errors_flushed: dict[str, float] = {}  # destination → `at` of the error saved
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def counts(self) -> dict[tuple[str, str, str], int]:
        """The counters now: (kind, source or destination, outcome) → count since start."""
        return {
            **_read(self.metrics.webhooks, TALLY_WEBHOOK, "source"),
            **_read(self.metrics.deliveries, TALLY_DELIVERY, "destination"),
        }

    async def flush(self) -> None:
        """Save what the counters gained since the last flush. Raises StoreError (and
        keeps the counts for the next flush) when the store cannot take it."""
        now = self._clock()
        counts = self.counts()
        gained = {k: n - self._flushed.get(k, 0) for k, n in counts.items()}
        gained = {k: n for k, n in gained.items() if n > 0}
        errors = {
            name: error
            for name, error in list(self.metrics.failures.items())
            if error.at > self._errors_flushed.get(name, 0.0)
        }
        if not gained and not errors:
            return
        hour = hour_of(now)
        await self.store.add_tallies(hour, gained, errors, hour - KEEP_HOURS * HOUR)
        self._flushed.update(counts)
        self._errors_flushed.update((name, error.at) for name, error in errors.items())

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="relay-tally")

    async def stop(self) -> None:
        """Stop the task and save what is left (a store that is down loses it)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush()
        except StoreError as exc:
            log.warning("tally: the last counts were not saved: %s", exc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.flush()
            except StoreError as exc:
                if not self._failing:  # one line per outage, not one per interval
                    log.warning("tally: counts not saved yet (kept for later): %s", exc)
                self._failing = True
            except Exception:  # a bug here must not end the task: the counts would stop
                log.exception("tally: unexpected error")
            else:
                if self._failing:
                    log.info("tally: counts saved again")
                self._failing = False
