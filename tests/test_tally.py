"""relay.tally against a real store (SQLite file and PostgreSQL): the in-process counters
become per-hour tallies; several processes add up; a store outage keeps the counts for
the next flush; nothing is written when nothing changed."""

from __future__ import annotations

import asyncio
import time

import pytest

from relay.errors import StoreError
from relay.metrics import Metrics
from relay.store import TALLY_DELIVERY, TALLY_WEBHOOK, Store
from relay.tally import HOUR, KEEP_HOURS, Tally, hour_of
from tests.pgdb import pg_databases  # noqa: F401 - fixture
from tests.store import test_store as contract

anyio_backend = contract.anyio_backend
store_url = contract.store_url
opener = contract.opener
store = contract.store

pytestmark = pytest.mark.anyio


async def test_counters_become_tallies_of_the_hour(store: Store) -> None:
    metrics = Metrics()
    tally = Tally(store, metrics)
    for outcome in ("accepted", "accepted", "duplicate", "rejected"):
        metrics.webhook("stripe", outcome)
    metrics.settled("simmer", "delivered")
    metrics.settled("simmer", "pending")
    metrics.attempt_failed("simmer", 7, 503, "HTTP 503: try later")
    await tally.flush()
    now_hour = hour_of(time.time())
    assert await store.tallies(now_hour) == {
        (TALLY_WEBHOOK, "stripe", "accepted"): 2,
        (TALLY_WEBHOOK, "stripe", "duplicate"): 1,
        (TALLY_WEBHOOK, "stripe", "rejected"): 1,
        (TALLY_DELIVERY, "simmer", "delivered"): 1,
        (TALLY_DELIVERY, "simmer", "pending"): 1,
    }
    error = (await store.destination_errors())["simmer"]
    assert (error.error, error.status_code, error.delivery_id) == ("HTTP 503: try later", 503, 7)
    metrics.webhook("stripe", "accepted")
    await tally.flush()  # only what was gained since
    assert (await store.tallies(now_hour))[(TALLY_WEBHOOK, "stripe", "accepted")] == 3


async def test_processes_on_one_ledger_add_up(opener) -> None:
    one, two = Metrics(), Metrics()
    first, second = Tally(await opener(), one), Tally(await opener(), two)
    one.webhook("paddle", "accepted")
    two.webhook("paddle", "accepted")
    two.webhook("paddle", "quarantined")
    await first.flush()
    await second.flush()
    totals = await first.store.tallies(0)
    assert totals[(TALLY_WEBHOOK, "paddle", "accepted")] == 2
    assert totals[(TALLY_WEBHOOK, "paddle", "quarantined")] == 1


async def test_a_store_outage_keeps_the_counts_for_later(opener) -> None:
    store = await opener()
    metrics = Metrics()
    tally = Tally(store, metrics)
    metrics.webhook("stripe", "accepted")
    await store.close()
    with pytest.raises(StoreError):
        await tally.flush()
    metrics.webhook("stripe", "accepted")
    await store.open()
    await tally.flush()
    assert (await store.tallies(0))[(TALLY_WEBHOOK, "stripe", "accepted")] == 2


async def test_hours_go_to_their_own_row_and_old_ones_are_dropped(store: Store) -> None:
    clock = [1_700_000_000.0]
    metrics = Metrics()
    tally = Tally(store, metrics, clock=lambda: clock[0])
    metrics.webhook("stripe", "accepted")
    await tally.flush()
    clock[0] += HOUR
    metrics.webhook("stripe", "accepted")
    metrics.webhook("stripe", "accepted")
    await tally.flush()
    start = hour_of(clock[0])
    assert (await store.tallies(start))[(TALLY_WEBHOOK, "stripe", "accepted")] == 2
    assert (await store.tallies(start - HOUR))[(TALLY_WEBHOOK, "stripe", "accepted")] == 3
    clock[0] += (KEEP_HOURS + 1) * HOUR
    metrics.webhook("stripe", "ignored")
    await tally.flush()
    assert await store.tallies(0) == {(TALLY_WEBHOOK, "stripe", "ignored"): 1}


async def test_nothing_new_writes_nothing(store: Store) -> None:
    calls: list[int] = []
    original = store.add_tallies

    async def counted(*args, **kwargs):  # a spy on the real method, not a stand-in
        calls.append(1)
        return await original(*args, **kwargs)

    store.add_tallies = counted  # type: ignore[method-assign]
    metrics = Metrics()
    tally = Tally(store, metrics)
    await tally.flush()
    metrics.webhook("stripe", "accepted")
    await tally.flush()
    await tally.flush()
    assert len(calls) == 1


async def test_the_task_flushes_on_its_own_and_on_stop(store: Store) -> None:
    metrics = Metrics()
    tally = Tally(store, metrics, every=0.05)
    tally.start()
    metrics.webhook("stripe", "accepted")
    for _ in range(200):  # until the task's own flush (every 0.05 s) has saved it
        if await store.tallies(0):
            break
        await asyncio.sleep(0.05)
    assert await store.tallies(0) == {(TALLY_WEBHOOK, "stripe", "accepted"): 1}
    metrics.webhook("stripe", "duplicate")
    await tally.stop()
    assert (await store.tallies(0))[(TALLY_WEBHOOK, "stripe", "duplicate")] == 1
