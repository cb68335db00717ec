"""`stats()` (what /metrics shows) comes from counts the database keeps itself; they must
match a real count after every kind of write, on both backends, and an existing ledger
gets them built when it is upgraded."""

from __future__ import annotations

import asyncio
import importlib
import time

import pytest

from relay.store import DELIVERED, FAILED, PENDING, SKIPPED, Attempt, Settlement, Store, open_store
from tests.store.ledger import DAY, body_for, buyer, raw, real_counts, real_oldest_age, stored_event

pytestmark = pytest.mark.anyio
DESTS = ("simmer", "impact", "webhook")


def three(_: object) -> tuple[str, ...]:
    return DESTS


async def exact(store: Store, url: str, now: float) -> dict:
    stats = await store.stats(now)
    assert stats["by_status"] == real_counts(url)
    assert stats["oldest_pending_age"] == pytest.approx(real_oldest_age(url, now), abs=1e-6)
    return stats


async def test_counts_match_a_real_count_after_every_kind_of_write(store: Store, store_url: str) -> None:
    now = time.time() + 5  # everything recorded below is due by then
    await exact(store, store_url, now)
    # records: one batch of several, one alone, a duplicate, an old one
    await asyncio.gather(*(
        store.record(stored_event(f"evt_{i}", body_for(f"b{i}@example.com")),
                     [buyer(f"ord_{i}", email=f"b{i}@example.com")], three)
        for i in range(6)
    ))
    await store.record(stored_event("evt_old", body_for("old@example.com"), days_ago=40),
                       [buyer("ord_old", email="old@example.com", days_ago=40)], three)
    await store.record(stored_event("evt_0", b"{}"), [buyer("ord_0")], three)  # duplicate
    stats = await exact(store, store_url, now)
    assert stats["by_status"][("simmer", PENDING)] == 7
    assert stats["oldest_pending_age"] == pytest.approx(40 * DAY, rel=0.01)

    # claims change no status; settles do, each way
    claims = await store.claim(list(DESTS), 100, 30, now)
    assert len(claims) == 21
    await exact(store, store_url, now)
    outcomes = [
        Settlement(DELIVERED, status_code=200, attempt=Attempt(now, 1.0, "delivered", 200)),
        Settlement(FAILED, error="HTTP 400", status_code=400),
        Settlement(SKIPPED, error="no email"),
        Settlement(PENDING, next_attempt_at=now + 60, error="HTTP 502", status_code=502),
        Settlement(PENDING, next_attempt_at=now, count_attempt=False),  # a rate-limit deferral
    ]
    for i, claim in enumerate(claims):
        await store.settle(claim, outcomes[i % len(outcomes)], now)
    await exact(store, store_url, now)
    # a lost lease changes nothing
    assert not await store.settle(claims[0], Settlement(FAILED, error="late"), now)
    await exact(store, store_url, now)

    assert await store.requeue(now=now, statuses=(FAILED, SKIPPED)) > 0
    await exact(store, store_url, now)

    # everything of the old conversion settled, then retention, then forget
    for claim in await store.claim(list(DESTS), 100, 30, now + 61):
        await store.settle(claim, Settlement(DELIVERED, status_code=200), now + 61)
    await exact(store, store_url, now + 61)
    result = await store.retain(now - 30 * DAY, now)
    while not result.done:
        result = await store.retain(now - 30 * DAY, now, result.cursor)
    await exact(store, store_url, now + 61)
    await store.record(stored_event("evt_late", body_for("late@example.com")),
                       [buyer("ord_late", email="late@example.com")], three)
    forgotten = await store.forget(email="late@example.com", now=now)
    assert forgotten.deliveries == 3  # its pending deliveries failed
    stats = await exact(store, store_url, now)
    assert stats["by_status"][("webhook", FAILED)] >= 1

    # and a write path that knows nothing about the counts: plain SQL
    raw(store_url, "UPDATE deliveries SET status = 'skipped' WHERE status = 'delivered' AND destination = 'webhook'")
    raw(store_url, "DELETE FROM attempts")
    raw(store_url, "DELETE FROM deliveries WHERE destination = 'impact'")
    stats = await exact(store, store_url, now)
    assert ("impact", DELIVERED) not in stats["by_status"]
    await store.compact()  # PostgreSQL folds its shards; the figures stay the same
    await exact(store, store_url, now)


async def test_counts_stay_exact_with_several_writers_at_once(opener, store_url: str) -> None:
    stores = [await opener() for _ in range(3)]
    now = time.time() + 30

    async def write(store: Store, w: int) -> None:
        for i in range(20):
            await store.record(stored_event(f"evt_{w}_{i}", b"{}"), [buyer(f"o_{w}_{i}")], three)
            for claim in await store.claim(list(DESTS), 4, 30, now):
                await store.settle(claim, Settlement(DELIVERED if i % 2 else FAILED, error="x"), now)

    await asyncio.gather(*(write(s, w) for w, s in enumerate(stores)))
    await asyncio.gather(stores[0].compact(), stores[1].compact(), write(stores[2], 9))
    await exact(stores[0], store_url, now)
    total = sum((await stores[1].stats(now))["by_status"].values())
    assert total == 4 * 20 * 3


async def test_an_existing_ledger_gets_its_counts_when_upgraded(store_url: str) -> None:
    store = open_store(store_url)
    await store.open()
    now = time.time()
    for i in range(5):
        await store.record(stored_event(f"evt_{i}", b"{}", days_ago=i), [buyer(f"o_{i}", days_ago=i)], three)
    [claim, *_] = await store.claim(["simmer"], 1, 30, now)
    await store.settle(claim, Settlement(DELIVERED, status_code=200), now)
    await store.close()
    backend = importlib.import_module("relay.store.sqlite" if store_url.startswith("sqlite:")
                                      else "relay.store.postgres")
    ERASURE_VERSION, SCHEMA_VERSION = backend.ERASURE_VERSION, backend.SCHEMA_VERSION  # noqa: N806
    # what the ledger looked like before the erasure step: no counts, no triggers, the old index
    if store_url.startswith("sqlite:"):
        for statement in (
            "DROP TRIGGER deliveries_count_insert", "DROP TRIGGER deliveries_count_update",
            "DROP TRIGGER deliveries_count_delete", "DROP TABLE delivery_counts",
            "DROP INDEX conversions_retention", "DROP INDEX conversions_event",
            "DROP INDEX deliveries_status_age", "DROP TABLE retention_state",
            "CREATE INDEX deliveries_status ON deliveries (status, destination)",
            "ALTER TABLE conversions DROP COLUMN erased_at", "ALTER TABLE conversions DROP COLUMN erased_by",
            "ALTER TABLE events DROP COLUMN erased_at",
            f"UPDATE schema_version SET version = {ERASURE_VERSION - 1}",  # noqa: S608
        ):
            raw(store_url, statement)
    else:
        raw(store_url, "DROP TABLE delivery_counts; DROP TABLE retention_state;"  # noqa: S608
                       " DROP TRIGGER deliveries_count_insert ON deliveries;"
                       " DROP TRIGGER deliveries_count_update ON deliveries;"
                       " DROP TRIGGER deliveries_count_delete ON deliveries;"
                       " DROP TRIGGER deliveries_count_truncate ON deliveries;"
                       " DROP INDEX deliveries_status_age; DROP INDEX conversions_retention;"
                       " DROP INDEX conversions_event;"
                       " CREATE INDEX deliveries_status ON deliveries (status, destination);"
                       " ALTER TABLE conversions DROP COLUMN erased_at, DROP COLUMN erased_by;"
                       " ALTER TABLE events DROP COLUMN erased_at;"
                       f" UPDATE schema_version SET version = {ERASURE_VERSION - 1}")
    # an old relay goes on writing meanwhile
    raw(store_url, "UPDATE deliveries SET status = 'failed' WHERE destination = 'impact' AND id IN"
                   " (SELECT min(id) FROM deliveries WHERE destination = 'impact')")
    store = open_store(store_url)
    await store.open()
    try:
        assert raw(store_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
        stats = await exact(store, store_url, now)
        assert stats["by_status"][("simmer", DELIVERED)] == 1
        assert stats["by_status"][("impact", FAILED)] == 1
        assert stats["oldest_pending_age"] == pytest.approx(4 * DAY, rel=0.01)
        # and kept from now on
        await store.record(stored_event("evt_new", b"{}"), [buyer("o_new")], three)
        await exact(store, store_url, now)
        names = {r[0] for r in raw(store_url, "SELECT indexname FROM pg_indexes" if "postgres" in store_url
                                   else "SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "deliveries_status" not in names and "deliveries_status_age" in names
    finally:
        await store.close()
    # opening again changes nothing
    store = open_store(store_url)
    await store.open()
    try:
        await exact(store, store_url, now)
    finally:
        await store.close()


async def test_sqlite_stats_cost_does_not_grow_with_the_ledger(tmp_path) -> None:
    """The work of one `stats()` call, in SQLite virtual-machine steps, at 60 and at 6,000
    deliveries: a count over the table would take ~100 times more steps."""
    from relay.store.sqlite import SQLiteStore

    store = SQLiteStore(f"sqlite:///{tmp_path / 'relay.db'}")
    await store.open()
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    async def cost() -> int:
        nonlocal steps
        assert store._conn is not None
        store._conn.set_progress_handler(count, 1)
        steps = 0
        await store.stats(time.time())
        store._conn.set_progress_handler(None, 1)
        return steps

    async def add(n: int, start: int) -> None:
        await asyncio.gather(*(store.record(stored_event(f"evt_{i}", b"{}"), [buyer(f"o_{i}")], three)
                               for i in range(start, start + n)))

    try:
        await add(20, 0)
        small = await cost()
        await add(1980, 20)
        large = await cost()
    finally:
        await store.close()
    assert large < small + 50, (small, large)
