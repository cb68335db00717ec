"""Retention (`retain`) and `forget` on both backends: what goes, what stays, and that the
ledger keeps working on what stays."""

from __future__ import annotations

import asyncio
import time

import pytest

from relay.conversion import Conversion
from relay.store import (
    DELIVERED,
    ERASED_BY_FORGET,
    FAILED,
    FORGET,
    PENDING,
    RETENTION,
    Settlement,
    Store,
)
from tests.store.ledger import DAY, body_for, buyer, raw, stored_event

pytestmark = pytest.mark.anyio
DESTS = ("simmer", "impact")


def both(_: object) -> tuple[str, ...]:
    return DESTS


async def settle_all(store: Store, status: str = DELIVERED, now: float | None = None) -> None:
    now = time.time() + 1 if now is None else now
    for claim in await store.claim(list(DESTS), 1000, 30, now):
        await store.settle(claim, Settlement(status, status_code=200, error="HTTP 400"), now)


async def run_retention(store: Store, days: float = 30, limit: int = 500) -> tuple[int, int, int]:
    """(conversions, events, batches) of one complete run."""
    now = time.time()
    conversions = events = batches = 0
    cursor = None
    while True:
        batch = await store.retain(now - days * DAY, now, cursor, limit)
        assert not batch.busy
        assert batch.conversions <= limit
        conversions, events, batches = conversions + batch.conversions, events + batch.events, batches + 1
        cursor = batch.cursor
        if batch.done:
            return conversions, events, batches


def conversion_row(url: str, order: str) -> tuple[Conversion, object, object]:
    data, key, erased = raw(url, "SELECT data, customer_key, erased_by FROM conversions WHERE order_key = ?",
                            (order,))[0]
    return Conversion.from_json(bytes(data)), key, erased


def body_of(url: str, event_id: str) -> bytes:
    return bytes(raw(url, "SELECT body FROM events WHERE event_id = ?", (event_id,))[0][0])


async def test_retention_erases_old_settled_records_and_keeps_what_dedupe_needs(store: Store, store_url: str) -> None:
    # recorded in the order they arrived (ids follow arrival)
    await store.record(stored_event("evt_ignored", body_for("ignored@example.com"), days_ago=45), [], both)
    old_body = body_for("ann.buyer@example.com", "cus_ann", '"name": "Ann Buyer"')
    await store.record(stored_event("evt_old", old_body, days_ago=40),
                       [buyer("ord_old", customer_id="cus_ann", days_ago=40)], both)
    await store.record(stored_event("evt_stuck", body_for("stuck@example.com"), days_ago=40),
                       [buyer("ord_stuck", email="stuck@example.com", days_ago=40)], both)
    await store.record(stored_event("evt_new", body_for("new@example.com")),
                       [buyer("ord_new", email="new@example.com", days_ago=2)], both)
    # events that carried no conversion (ignored): the old one above, a recent one
    await store.record(stored_event("evt_ignored_new", body_for("recent@example.com")), [], both)
    await settle_all(store)
    # one delivery of the stuck conversion is still pending (requeued: a retry is waiting)
    stuck = [r for r in await store.deliveries(limit=100) if r.order_key == "ord_stuck"]
    assert await store.requeue([stuck[0].id], now=time.time() + 3600, statuses=(DELIVERED,)) == 1

    conversions, events, _ = await run_retention(store)
    assert (conversions, events) == (1, 2)  # ord_old; evt_old and evt_ignored

    old, key, erased = conversion_row(store_url, "ord_old")
    assert erased == RETENTION
    assert old.customer.email is None and old.customer.name is None and old.customer.phone is None
    assert old.customer.city is None and old.customer.postal_code is None and old.customer.id is None
    assert old.metadata == {} and old.attribution == {} and "customer" not in old.refs
    # what identifies the order stays
    assert (old.kind, old.order_key, str(old.total), old.currency) == ("purchase", "ord_old", "49.00", "EUR")
    assert old.refs["payment_intent"] == "pi_ord_old"
    assert key == "id:cus_ann"  # the customer key stays: new-customer detection keeps working
    assert body_of(store_url, "evt_old") == b""
    assert body_of(store_url, "evt_ignored") == b""
    # not settled, or younger than the retention: untouched
    assert conversion_row(store_url, "ord_stuck")[0].customer.email == "stuck@example.com"
    assert b"stuck@example.com" in body_of(store_url, "evt_stuck")
    assert conversion_row(store_url, "ord_new")[0].customer.email == "new@example.com"
    assert b"recent@example.com" in body_of(store_url, "evt_ignored_new")
    # a redelivery of the old event is a duplicate, the same order under a new event is known
    again = await store.record(stored_event("evt_old", old_body), [buyer("ord_old", customer_id="cus_ann")], both)
    assert again.duplicate
    other = await store.record(stored_event("evt_old_2", b"{}"), [buyer("ord_old", customer_id="cus_ann")], both)
    assert not other.conversions and len(other.known) == 1
    # the buyer comes back: not a new customer
    back = await store.record(stored_event("evt_back", b"{}"), [buyer("ord_back", customer_id="cus_ann")], both)
    assert back.conversions[0].new_customer is False
    # a second run finds nothing more
    assert (await run_retention(store))[:2] == (0, 0)
    # an erased delivery is never requeued, and a claim of it says why
    rows = [r for r in await store.deliveries(limit=100) if r.order_key == "ord_old"]
    assert {r.erased for r in rows} == {RETENTION}
    assert await store.requeue([r.id for r in rows], now=time.time(), statuses=(DELIVERED,)) == 0
    raw(store_url, "UPDATE deliveries SET status = 'pending' WHERE id = ?", (rows[0].id,))
    [claim] = [c for c in await store.claim(list(DESTS), 100, 30, time.time() + 1) if c.delivery_id == rows[0].id]
    assert claim.erased == RETENTION


async def test_retention_works_in_bounded_batches(store: Store, store_url: str) -> None:
    for i in range(12):
        await store.record(stored_event(f"evt_{i}", body_for(f"b{i}@example.com"), days_ago=40),
                           [buyer(f"ord_{i}", email=f"b{i}@example.com", days_ago=40 + i / 100)], both)
    for i in range(7):
        await store.record(stored_event(f"evt_ign_{i}", b'{"x": 1}', days_ago=50), [], both)
    await settle_all(store)
    conversions, events, batches = await run_retention(store, limit=5)
    assert (conversions, events) == (12, 19)
    assert batches >= 12 // 5 + 7 // 5
    assert raw(store_url, "SELECT count(*) FROM events WHERE length(body) > 0") == [(0,)]


async def test_retention_from_several_processes_at_once(opener, store_url: str) -> None:
    stores = [await opener() for _ in range(3)]
    for i in range(30):
        await stores[0].record(stored_event(f"evt_{i}", body_for(f"b{i}@example.com"), days_ago=40),
                               [buyer(f"ord_{i}", email=f"b{i}@example.com", days_ago=40)], both)
    await settle_all(stores[0])

    async def run(store: Store) -> int:
        now, cursor, done, total = time.time(), None, False, 0
        while not done:
            batch = await store.retain(now - 30 * DAY, now, cursor, 4)
            total += batch.conversions
            cursor, done = batch.cursor, batch.done
            if batch.busy:  # another process holds the retention lock: try again soon
                done = False
                await asyncio.sleep(0.01)
        return total

    totals = await asyncio.gather(*(run(s) for s in stores))
    assert sum(totals) == 30  # each conversion erased once
    assert raw(store_url, "SELECT count(*) FROM conversions WHERE erased_at IS NULL") == [(0,)]
    assert raw(store_url, "SELECT count(*) FROM events WHERE length(body) > 0") == [(0,)]


async def test_forget_by_email_erases_the_buyer_everywhere_and_nobody_else(store: Store, store_url: str) -> None:
    email = "Ann.Buyer@Example.com"
    # her purchase (customer id and email), a renewal carrying only her customer id, a
    # purchase without customer id (keyed by the email's hash), an ignored event naming her
    await store.record(stored_event("evt_a1", body_for(email, "cus_ann")),
                       [buyer("ord_a1", email=email, customer_id="cus_ann")], both)
    await store.record(stored_event("evt_a2", body_for(None, "cus_ann")),
                       [buyer("sub_a2", email=None, customer_id="cus_ann", kind="subscription_renewed")], both)
    await store.record(stored_event("evt_a3", body_for("ann.buyer@example.com")),
                       [buyer("ord_a3", email="ann.buyer@example.com")], both)
    await store.record(stored_event("evt_a4", body_for(None, extra=f'"note": "reply to {email}."')), [], both)
    # someone else whose address contains hers, and an unrelated buyer
    await store.record(stored_event("evt_b1", body_for("joann.buyer@example.com", "cus_jo")),
                       [buyer("ord_b1", email="joann.buyer@example.com", customer_id="cus_jo")], both)
    await store.record(stored_event("evt_c1", body_for("carl@example.com")),
                       [buyer("ord_c1", email="carl@example.com", name="Carl")], both)
    # ord_a1 delivered, the rest still pending
    for claim in await store.claim(list(DESTS), 100, 30, time.time() + 1):
        if claim.conversion.order_key == "ord_a1":
            await store.settle(claim, Settlement(DELIVERED, status_code=200), time.time())

    forgotten = await store.forget(email="  ann.buyer@example.COM ", now=time.time())
    assert (forgotten.conversions, forgotten.events) == (3, 4)
    assert forgotten.deliveries == 4  # sub_a2 and ord_a3 were pending at both destinations

    for order in ("ord_a1", "sub_a2", "ord_a3"):
        conv, key, erased = conversion_row(store_url, order)
        assert erased == FORGET and key is None
        assert conv.customer.email is None and conv.customer.name is None and conv.customer.id is None
        assert conv.attribution == {} and conv.metadata == {}
    for event_id in ("evt_a1", "evt_a2", "evt_a3", "evt_a4"):
        assert body_of(store_url, event_id) == b""
    rows = {(r.order_key, r.destination): r for r in await store.deliveries(limit=100)}
    assert rows[("ord_a1", "simmer")].status == DELIVERED
    assert rows[("sub_a2", "impact")].status == FAILED
    assert rows[("sub_a2", "impact")].last_error == ERASED_BY_FORGET
    # the others are untouched
    assert conversion_row(store_url, "ord_b1")[0].customer.email == "joann.buyer@example.com"
    assert b"joann.buyer@example.com" in body_of(store_url, "evt_b1")
    assert conversion_row(store_url, "ord_c1")[0].customer.name == "Carl"
    assert rows[("ord_b1", "simmer")].status == PENDING and rows[("ord_c1", "impact")].status == PENDING
    # forgetting again changes nothing; she comes back as a new customer; dedupe still holds
    assert (await store.forget(email=email, now=time.time())).records == 0
    back = await store.record(stored_event("evt_a5", b"{}"), [buyer("ord_a5", email=email, customer_id="cus_ann")], both)
    assert back.conversions[0].new_customer is True
    assert (await store.record(stored_event("evt_a1", b"{}"), [], both)).duplicate


async def test_forget_by_customer_id_and_after_retention(store: Store, store_url: str) -> None:
    await store.record(stored_event("evt_1", body_for("zoe@example.com", "cus_zoe"), days_ago=40),
                       [buyer("ord_1", email="zoe@example.com", customer_id="cus_zoe", days_ago=40)], both)
    await store.record(stored_event("evt_2", body_for("zoe@example.com", "cus_zoe")),
                       [buyer("ord_2", email="zoe@example.com", customer_id="cus_zoe")], both)
    await store.record(stored_event("evt_3", body_for(None, "cus_zoey")),
                       [buyer("ord_3", email=None, customer_id="cus_zoey")], both)
    await settle_all(store)
    assert (await run_retention(store))[0] == 1  # ord_1: erased, its customer key kept
    assert conversion_row(store_url, "ord_1")[1] == "id:cus_zoe"

    forgotten = await store.forget(customer_id="cus_zoe", now=time.time())
    assert (forgotten.conversions, forgotten.events, forgotten.deliveries) == (2, 1, 0)
    assert conversion_row(store_url, "ord_1")[1:] == (None, FORGET)  # the key is gone too
    assert conversion_row(store_url, "ord_2")[0].customer.email is None
    assert body_of(store_url, "evt_2") == b""
    assert conversion_row(store_url, "ord_3")[0].customer.id == "cus_zoey"  # a prefix is not a match
    assert b"cus_zoey" in body_of(store_url, "evt_3")


async def test_forget_needs_a_buyer(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.forget(email="  ", now=time.time())
