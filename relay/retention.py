"""Retention: erase the personal data the ledger no longer needs (RELAY_RETENTION_DAYS).

The raw bodies and personal data (email, name, phone, address, metadata, attribution
ids) of conversions whose deliveries are all settled and whose conversion time is older
than the retention, and the bodies of their events, are erased by the store in bounded
batches (`Store.retain`); dedupe keys and customer keys stay. Remembered attribution ids
(RELAY_ATTRIBUTION__MEMORY) go once no conversion newer than the cutoff wrote or used
them. The worker runs it when it starts and every hour, off the delivery path; with
several processes on PostgreSQL one runs each batch and the others skip it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from relay.store import Store

log = logging.getLogger("relay.retention")
DAY = 86400.0
BATCH = 500  # rows one batch looks at: one short write transaction
PAUSE = 0.05  # seconds between batches, so webhooks and deliveries get the ledger meanwhile


@dataclass(slots=True)
class Run:
    conversions: int = 0
    events: int = 0
    memories: int = 0  # remembered attribution ids (RELAY_ATTRIBUTION__MEMORY) removed
    busy: bool = False  # another process was running it


async def run_once(
    store: Store,
    days: float,
    *,
    now: float | None = None,
    stopping: Callable[[], bool] = lambda: False,
    batch: int = BATCH,
    pause: float = PAUSE,
) -> Run:
    """One complete retention run; returns what it erased."""
    now = time.time() if now is None else now
    cutoff = now - days * DAY
    run = Run()
    cursor = None
    while not stopping():
        result = await store.retain(cutoff, now, cursor, batch)
        run.conversions += result.conversions
        run.events += result.events
        run.memories += result.memories
        if result.busy:
            run.busy = True
            break
        if result.done:
            break
        cursor = result.cursor
        await asyncio.sleep(pause)
    if run.conversions or run.events or run.memories:
        log.info(
            "retention: erased personal data older than %g days: conversions=%d event_bodies=%d"
            " remembered_attribution=%d",
            days,
            run.conversions,
            run.events,
            run.memories,
        )
    return run
