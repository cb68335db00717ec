"""The store reads the console uses, on every backend: SQLite (a file) and PostgreSQL
(RELAY_TEST_POSTGRES_URL) — email hashes and the upgrade that computes them, searches
by order key / email / event id, keyset pages of deliveries and events, the per-hour
tallies shared by several processes, the oldest pending delivery per destination."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace

import pytest

from relay.conversion import Customer
from relay.store import (
    DELIVERED,
    FAILED,
    IGNORED,
    PENDING,
    QUARANTINED,
    SKIPPED,
    STATUSES,
    TALLY_DELIVERY,
    TALLY_WEBHOOK,
    Attempt,
    DestinationError,
    EventRecord,
    Settlement,
    Store,
    email_hash,
    open_store,
)
from tests.pgdb import pg_databases  # noqa: F401 - fixture
from tests.store import test_store as contract
from tests.store.test_store import DESTS, conversion, event, everywhere

anyio_backend = contract.anyio_backend
store_url = contract.store_url
opener = contract.opener
store = contract.store

pytestmark = pytest.mark.anyio
SOURCES = ("stripe", "paddle", "lemonsqueezy", "chargebee")


async def settle_as(store: Store, destination: str, status: str, error: str | None = None) -> None:
    """Claim the due deliveries of `destination` and settle them all as `status`."""
    for claim in await store.claim([destination], 1000, 30, time.time()):
        attempt = Attempt(time.time(), 12.5, "failed" if status == FAILED else status, 400, error or "")
        await store.settle(claim, Settlement(status, error=error, status_code=400, attempt=attempt),
                           time.time())


def test_email_hash_is_of_the_normalized_address() -> None:
    assert email_hash(" Buyer@Example.COM\n") == email_hash("buyer@example.com")
    assert email_hash("buyer@example.com") != email_hash("other@example.com")
    assert email_hash(None) is None and email_hash("  ") is None
    assert "buyer" not in (email_hash("buyer@example.com") or "")


async def test_search_by_email_hash_finds_that_buyer_only(store: Store) -> None:
    now = time.time()
    for n, email in enumerate(["Ann@Example.com", "bob@example.com", "ann@example.com ", None]):
        await store.record(event(f"e{n}", now), [conversion(f"o{n}", email=email)], everywhere)
    found = await store.find_conversions(SOURCES, email_hash=email_hash("ANN@example.com"))
    assert [c.conversion.order_key for c in found] == ["o2", "o0"]  # newest first
    assert all(c.conversion.customer.email.strip().lower() == "ann@example.com" for c in found)
    older = await store.find_conversions(SOURCES, email_hash=email_hash("ann@example.com"),
                                         before=found[0].id)
    assert [c.conversion.order_key for c in older] == ["o0"]
    assert await store.find_conversions(SOURCES, email_hash=email_hash("nobody@example.com")) == []
    with pytest.raises(ValueError):
        await store.find_conversions(SOURCES)


async def test_search_by_order_key_and_event_id(store: Store) -> None:
    now = time.time()
    await store.record(event("evt_a", now), [conversion("cs_1")], everywhere)
    await store.record(event("evt_b", now), [conversion("cs_1", kind="refund")], everywhere)
    await store.record(event("evt_c", now), [conversion("cs_2")], everywhere)
    found = await store.find_conversions(SOURCES, order_key="cs_1")
    assert sorted(c.conversion.kind for c in found) == ["purchase", "refund"]
    assert await store.find_conversions(("paddle",), order_key="cs_1") == []  # other source
    assert await store.find_conversions(SOURCES, order_key="cs_") == []  # exact keys only
    [stored] = await store.find_events(SOURCES, "evt_b")
    assert (stored.source, stored.event_id, stored.body) == ("stripe", "evt_b", None)
    assert await store.find_events(SOURCES, "evt_x") == []
    refund = next(c for c in found if c.conversion.kind == "refund")
    assert refund.event_row == stored.id
    again = await store.conversion(refund.id)
    assert again is not None and again.conversion == refund.conversion
    assert await store.conversion(999_999) is None
    deliveries = await store.conversion_deliveries(refund.id)
    assert [(d.destination, d.status, d.conversion_id, d.order_key) for d in deliveries] == [
        ("impact", PENDING, refund.id, "cs_1"), ("simmer", PENDING, refund.id, "cs_1")]


async def test_delivery_pages_walk_every_row_once_newest_first(store: Store) -> None:
    now = time.time()
    for n in range(23):
        await store.record(event(f"e{n}", now), [conversion(f"o{n}")], everywhere)
    await settle_as(store, "simmer", FAILED, "HTTP 400: bad email")
    seen: list[int] = []
    before = None
    while True:
        page = await store.delivery_page(STATUSES, DESTS, before=before, limit=5)
        if not page:
            break
        assert len(page) <= 5
        seen.extend(row.id for row in page)
        before = (page[-1].created_at, page[-1].id)
    assert len(seen) == 46 and len(set(seen)) == 46 and seen == sorted(seen, reverse=True)
    failed = await store.delivery_page([FAILED], ["simmer"], limit=100)
    assert len(failed) == 23
    assert {(r.destination, r.status, r.last_error) for r in failed} == {
        ("simmer", FAILED, "HTTP 400: bad email")}
    assert await store.delivery_page([FAILED], ["impact"]) == []
    assert await store.delivery_page([FAILED, SKIPPED], []) == []
    pending = await store.delivery_page([PENDING], DESTS, limit=100)
    assert {r.destination for r in pending} == {"impact"}
    assert all(r.conversion_id is not None for r in pending)


async def test_delivery_pages_filter_by_source_and_time_recorded(store: Store) -> None:
    now = time.time()
    day = 86400.0
    for n in range(10):  # one a day, oldest first, as a ledger grows
        at = now - (10 - n) * day
        paddle = n % 3 == 0
        record = EventRecord("paddle" if paddle else "stripe", f"e{n}", "t", at, b"{}")
        conv = replace(conversion(f"o{n}"), source="paddle" if paddle else "stripe")
        await store.record(record, [conv], lambda _: ("simmer",))
    rows = await store.delivery_page(STATUSES, ["simmer"], limit=100)
    assert len(rows) == 10
    by_source = await store.delivery_page(STATUSES, ["simmer"], source="paddle", limit=100)
    assert [r.order_key for r in by_source] == ["o9", "o6", "o3", "o0"]
    window = await store.delivery_page(
        STATUSES, ["simmer"], since=now - 7.5 * day, until=now - 3.5 * day, limit=100
    )
    assert [r.order_key for r in window] == ["o6", "o5", "o4", "o3"]
    assert all(now - 7.5 * day <= r.created_at < now - 3.5 * day for r in window)
    assert await store.delivery_page(STATUSES, ["simmer"], since=now + day) == []
    assert len(await store.delivery_page(STATUSES, ["simmer"], until=now + day, limit=100)) == 10
    assert await store.delivery_page(STATUSES, ["simmer"], until=now - 20 * day) == []
    both = await store.delivery_page(STATUSES, ["simmer"], source="paddle", since=now - 7.5 * day,
                                     until=now - 3.5 * day,
                                     before=(by_source[1].created_at, by_source[1].id))
    assert [r.order_key for r in both] == ["o3"]


async def test_event_pages_by_status_with_keyset(store: Store) -> None:
    now = time.time()
    for n in range(7):
        status = QUARANTINED if n % 2 else IGNORED
        await store.record(EventRecord("stripe", f"evt_{n}", "t", now + n, b"{}", status, "why"),
                           [], everywhere)
    await store.record(EventRecord("stripe", "evt_same_time", "t", now + 5, b"{}", QUARANTINED,
                                   "why"), [], everywhere)
    first = await store.events([QUARANTINED], limit=2)
    assert [e.event_id for e in first] == ["evt_same_time", "evt_5"]
    rest = await store.events([QUARANTINED], limit=10,
                              before=(first[-1].received_at, first[-1].id))
    assert [e.event_id for e in rest] == ["evt_3", "evt_1"]
    ignored = await store.events([IGNORED], source="stripe", limit=10, before=(now + 4, 10**9))
    assert [e.event_id for e in ignored] == ["evt_4", "evt_2", "evt_0"]


async def test_tallies_add_up_across_processes_and_old_hours_go(opener) -> None:
    one, two = await opener(), await opener()
    hour = int(time.time()) // 3600 * 3600
    await one.add_tallies(hour - 3600, {(TALLY_WEBHOOK, "stripe", "accepted"): 5}, {}, 0)
    await one.add_tallies(hour, {(TALLY_WEBHOOK, "stripe", "accepted"): 2,
                                 (TALLY_WEBHOOK, "stripe", "rejected"): 1}, {}, 0)
    await two.add_tallies(hour, {(TALLY_WEBHOOK, "stripe", "accepted"): 3,
                                 (TALLY_DELIVERY, "simmer", "delivered"): 4,
                                 (TALLY_WEBHOOK, "paddle", "duplicate"): 0}, {}, 0)
    assert await two.tallies(hour - 3600) == {
        (TALLY_WEBHOOK, "stripe", "accepted"): 10,
        (TALLY_WEBHOOK, "stripe", "rejected"): 1,
        (TALLY_DELIVERY, "simmer", "delivered"): 4,
    }
    assert (await one.tallies(hour))[(TALLY_WEBHOOK, "stripe", "accepted")] == 5
    await one.add_tallies(hour, {}, {}, prune_before=hour)  # the hour before is dropped
    assert (await two.tallies(0))[(TALLY_WEBHOOK, "stripe", "accepted")] == 5


async def test_destination_errors_keep_the_newest(opener) -> None:
    one, two = await opener(), await opener()
    now = time.time()
    await one.add_tallies(0, {}, {"simmer": DestinationError(now, "HTTP 401: bad key", 401, 7)}, 0)
    await two.add_tallies(0, {}, {"simmer": DestinationError(now - 60, "older", 500, 3),
                                  "impact": DestinationError(now - 5, "timeout", None, 9)}, 0)
    errors = await one.destination_errors()
    assert errors == {"simmer": DestinationError(now, "HTTP 401: bad key", 401, 7),
                      "impact": DestinationError(now - 5, "timeout", None, 9)}
    await two.add_tallies(0, {}, {"simmer": DestinationError(now + 1, "HTTP 503", 503, 8)}, 0)
    assert (await one.destination_errors())["simmer"].error == "HTTP 503"


async def test_oldest_pending_per_destination(store: Store) -> None:
    now = time.time()
    await store.record(event("e1", now - 300), [conversion("o1")], everywhere)
    await store.record(event("e2", now - 100), [conversion("o2")], everywhere)
    assert await store.oldest_pending(DESTS) == {"simmer": now - 300, "impact": now - 300}
    await settle_as(store, "simmer", DELIVERED)
    [claim] = await store.claim(["impact"], 1, 30, now)  # the oldest one
    await store.settle(claim, Settlement(DELIVERED), now)
    assert await store.oldest_pending(DESTS + ("ga4",)) == {"impact": now - 100}
    assert await store.oldest_pending([]) == {}


async def test_a_ledger_from_before_the_console_gets_email_hashes_in_place(store_url: str) -> None:
    first = open_store(store_url)
    await first.open()
    now = time.time()
    await first.record(event("e1", now), [conversion("o1", email=" Old@Example.com")], everywhere)
    await first.record(event("e2", now), [conversion("o2", email=None)], everywhere)
    await first.record(event("e3", now), [replace(conversion("o3"), customer=Customer(id="cus_1"))],
                       everywhere)
    await first.close()
    drop = ["DROP INDEX conversions_email", "ALTER TABLE conversions DROP COLUMN email_hash",
            "UPDATE schema_version SET version = 7"]
    if store_url.startswith("sqlite"):
        with sqlite3.connect(store_url.split("sqlite:///", 1)[1]) as conn:
            for statement in drop:
                conn.execute(statement)
    else:
        import psycopg

        with psycopg.connect(store_url, autocommit=True) as conn:
            for statement in drop:
                conn.execute(statement)
    upgraded = open_store(store_url)
    await upgraded.open()
    try:
        [found] = await upgraded.find_conversions(SOURCES, email_hash=email_hash("old@example.com"))
        assert found.conversion.order_key == "o1"
        await upgraded.record(event("e4", now), [conversion("o4", email="old@example.com")],
                              everywhere)
        found = await upgraded.find_conversions(SOURCES, email_hash=email_hash("old@example.com"))
        assert [c.conversion.order_key for c in found] == ["o4", "o1"]
    finally:
        await upgraded.close()


async def test_forget_clears_the_email_hash_and_the_page_says_erased(store: Store) -> None:
    now = time.time()
    await store.record(event("e1", now), [conversion("o1", email="Gone@Example.com")], everywhere)
    await store.record(event("e2", now), [conversion("o2", email="kept@example.com")], everywhere)
    [before] = await store.find_conversions(SOURCES, email_hash=email_hash("gone@example.com"))
    assert before.erased is None
    forgotten = await store.forget(email="gone@example.com", now=now)
    assert forgotten.conversions == 1
    assert await store.find_conversions(SOURCES, email_hash=email_hash("gone@example.com")) == []
    assert len(await store.find_conversions(SOURCES, email_hash=email_hash("kept@example.com"))) == 1
    erased = await store.conversion(before.id)
    assert erased is not None and erased.erased == "forget"
    assert erased.conversion.customer.email is None
