"""Stored events (status, reason, replay), backfill to a destination and resend, on every
backend: SQLite (a file) and PostgreSQL (RELAY_TEST_POSTGRES_URL)."""

from __future__ import annotations

import sqlite3
import time

import pytest

from relay.errors import StoreError
from relay.store import (
    ACCEPTED,
    DELIVERED,
    FAILED,
    IGNORED,
    PENDING,
    QUARANTINED,
    Attempt,
    EventRecord,
    Settlement,
    Store,
    open_store,
)
from tests.pgdb import pg_databases  # noqa: F401 - fixture
from tests.store import test_store as contract
from tests.store.test_store import conversion, everywhere

# The backends and the store fixtures of the Store contract tests.
anyio_backend = contract.anyio_backend
store_url = contract.store_url
opener = contract.opener
store = contract.store

pytestmark = pytest.mark.anyio


def stored(event_id: str, status: str = ACCEPTED, reason: str | None = None,
           at: float | None = None, source: str = "stripe",
           body: bytes = b'{"id": "x"}') -> EventRecord:
    return EventRecord(source, event_id, "checkout.session.completed",
                       time.time() if at is None else at, body, status, reason)


def only(name: str):
    return lambda _: (name,)


async def test_every_status_is_kept_and_listed_newest_first(store: Store) -> None:
    now = time.time()
    await store.record(stored("evt_a", at=now - 300), [conversion("cs_a")], everywhere)
    ignored = await store.record(stored("evt_i", IGNORED, "test-mode event", at=now - 200), [],
                                 everywhere)
    assert not ignored.duplicate and ignored.deliveries == 0
    await store.record(stored("evt_q", QUARANTINED, "unknown currency code 'XYZ'", at=now - 100,
                              source="paddle", body=b'{"secret": "buyer@example.com"}'),
                       [], everywhere)
    again = await store.record(stored("evt_i", IGNORED, "test-mode event"), [], everywhere)
    assert again.duplicate  # a duplicate is not stored twice

    rows = await store.events()
    assert [(r.event_id, r.status, r.reason) for r in rows] == [
        ("evt_q", QUARANTINED, "unknown currency code 'XYZ'"),
        ("evt_i", IGNORED, "test-mode event"),
        ("evt_a", ACCEPTED, None),
    ]
    assert all(r.body is None and r.replayed_at is None for r in rows)  # no bodies unless asked
    assert [r.event_id for r in await store.events(oldest_first=True, limit=None)] == [
        "evt_a", "evt_i", "evt_q"]
    assert [r.event_id for r in await store.events([IGNORED, QUARANTINED])] == ["evt_q", "evt_i"]
    assert [r.event_id for r in await store.events(source="paddle")] == ["evt_q"]
    assert [r.event_id for r in await store.events(since=now - 250)] == ["evt_q", "evt_i"]
    assert [r.event_id for r in await store.events(limit=1)] == ["evt_q"]
    [one] = await store.events(ids=[rows[0].id], with_body=True)
    assert one.body == b'{"secret": "buyer@example.com"}' and one.source == "paddle"
    assert one.received_at == pytest.approx(now - 100)
    assert await store.events(ids=[999_999]) == []


async def test_replay_records_what_is_new_once(store: Store) -> None:
    now = time.time()
    await store.record(stored("evt_i", IGNORED, "test-mode event", at=now - 60), [], everywhere)
    [row] = await store.events()

    dry = await store.replay(row.id, ACCEPTED, None, row.event_id, [conversion("cs_1")],
                             everywhere, now, dry_run=True)
    assert [c.order_key for c in dry.conversions] == ["cs_1"] and dry.deliveries == 2
    [after_dry] = await store.events()
    assert (after_dry.status, after_dry.replayed_at) == (IGNORED, None)  # nothing changed
    assert await store.deliveries() == []

    first = await store.replay(row.id, ACCEPTED, None, row.event_id, [conversion("cs_1")],
                               everywhere, now)
    assert len(first.conversions) == 1 and first.deliveries == 2 and not first.known
    [after] = await store.events()
    assert (after.status, after.reason) == (ACCEPTED, None)
    assert after.replayed_at == pytest.approx(now)
    deliveries = await store.deliveries()
    assert sorted(d.destination for d in deliveries) == ["impact", "simmer"]
    assert all(d.status == PENDING and d.order_key == "cs_1" for d in deliveries)

    second = await store.replay(row.id, ACCEPTED, None, row.event_id, [conversion("cs_1")],
                                everywhere, now + 1)
    assert not second.conversions and len(second.known) == 1 and second.deliveries == 0
    assert len(await store.deliveries()) == 2
    found = await store.conversions_by_key(
        [("stripe", "purchase", "cs_1"), ("stripe", "refund", "x")])
    assert list(found) == [("stripe", "purchase", "cs_1")]
    assert found[("stripe", "purchase", "cs_1")].total == conversion("cs_1").total

    with pytest.raises(StoreError, match="not in the ledger"):
        await store.replay(999_999, ACCEPTED, None, "evt", [], everywhere, now)


async def test_replay_takes_the_real_event_id_when_it_is_free(store: Store) -> None:
    now = time.time()
    await store.record(stored("sha256:aa", QUARANTINED, "unknown shape"), [], everywhere)
    await store.record(stored("sha256:bb", QUARANTINED, "unknown shape"), [], everywhere)
    await store.record(stored("evt_taken"), [], everywhere)
    rows = {r.event_id: r for r in await store.events()}
    await store.replay(rows["sha256:aa"].id, ACCEPTED, None, "evt_real", [], everywhere, now)
    await store.replay(rows["sha256:bb"].id, ACCEPTED, None, "evt_taken", [], everywhere, now)
    ids = sorted(r.event_id for r in await store.events())
    assert ids == ["evt_real", "evt_taken", "sha256:bb"]  # a taken id is not stolen
    # the processor's retry of the now readable body is a duplicate
    assert (await store.record(stored("evt_real"), [], everywhere)).duplicate


async def test_backfill_to_a_destination_adds_only_missing_deliveries(store: Store) -> None:
    now = time.time()
    await store.record(stored("e_old", at=now - 1000), [conversion("o_old")], only("simmer"))
    await store.record(stored("e1", at=now - 100), [conversion("o1"), conversion("o2")],
                       only("simmer"))
    await store.record(stored("e2", at=now - 50), [conversion("o3")], everywhere)

    missing = await store.without_delivery("impact", since=now - 500)
    assert [c.order_key for _, c in missing] == ["o1", "o2"]
    assert [c.order_key for _, c in await store.without_delivery("impact", since=0)] == [
        "o_old", "o1", "o2"]
    assert [c.order_key for _, c in await store.without_delivery(
        "impact", since=0, until=now - 500)] == ["o_old"]
    page = await store.without_delivery("impact", since=0, limit=1)
    assert [c.order_key for _, c in page] == ["o_old"]
    assert [c.order_key for _, c in await store.without_delivery(
        "impact", since=0, after=page[0][0])] == ["o1", "o2"]
    assert await store.without_delivery("simmer", since=0) == []

    ids = [cid for cid, _ in missing]
    assert await store.add_deliveries("impact", ids, now) == 2
    assert await store.add_deliveries("impact", ids, now) == 0  # never a second delivery
    assert [c.order_key for _, c in await store.without_delivery("impact", since=now - 500)] == []
    impact = await store.deliveries(destination="impact")
    assert sorted(d.order_key for d in impact) == ["o1", "o2", "o3"]
    claims = await store.claim(["impact"], 10, 30, now)
    assert sorted(c.conversion.order_key for c in claims) == ["o1", "o2", "o3"]


async def test_erased_conversions_are_neither_planned_nor_resent(store: Store) -> None:
    """A conversion whose buyer was forgotten (or removed by retention) cannot be sent: the
    worker fails its delivery ("not sent: … erased"). So `relay backfill --destination`
    does not plan one for it, and `relay resend` refuses to turn its delivered delivery
    into that failure."""
    from relay.destinations import Destination
    from relay.redeliver import check_resend

    now = time.time()
    await store.record(stored("e1", at=now), [conversion("o1", email="gone@example.com")],
                       only("simmer"))
    await store.record(stored("e2", at=now), [conversion("o2", email="kept@example.com")],
                       only("simmer"))
    for claim in await store.claim(["simmer"], 10, 30, now):
        await store.settle(claim, Settlement(DELIVERED, status_code=200), now + 1)
    await store.forget(email="gone@example.com", now=now + 2)

    assert [c.order_key for _, c in await store.without_delivery("impact", since=0)] == ["o2"]
    rows = {d.order_key: d for d in await store.deliveries(destination="simmer")}
    ok, refused = await check_resend(store, [rows["o1"].id, rows["o2"].id],
                                     {"simmer": Destination(None)}, force=False)  # type: ignore[arg-type]
    assert [r.id for r in ok] == [rows["o2"].id]
    assert refused == [f"delivery {rows['o1'].id}: the buyer's personal data was erased by relay"
                       " forget, so it cannot be sent again"]


async def test_resend_requeues_a_delivered_delivery_and_keeps_its_history(store: Store) -> None:
    now = time.time()
    await store.record(stored("e1", at=now), [conversion("o1")], everywhere)
    claims = await store.claim(list(("simmer", "impact")), 10, 30, now)
    for c in claims:
        status = DELIVERED if c.destination == "simmer" else FAILED
        await store.settle(c, Settlement(status, status_code=200, attempt=Attempt(
            now, 12.0, status, 200, "ok")), now + 1)
    by_dest = {d.destination: d for d in await store.deliveries()}
    simmer, impact = by_dest["simmer"], by_dest["impact"]

    assert await store.resend([simmer.id, impact.id, 999_999], now + 2) == [simmer.id]
    [row] = await store.deliveries(delivery_id=simmer.id)
    assert (row.status, row.attempts) == (PENDING, 0)
    [failed] = await store.deliveries(delivery_id=impact.id)
    assert failed.status == FAILED  # only delivered ones are resent
    log = await store.attempts(simmer.id)
    assert [a.outcome for a in log] == [DELIVERED, "resend"]
    assert "manual resend" in log[1].detail
    [again] = await store.claim(["simmer"], 10, 30, now + 3)  # a fresh attempt budget
    assert again.attempt == 1 and not again.in_doubt and again.conversion.order_key == "o1"
    await store.settle(again, Settlement(DELIVERED, attempt=Attempt(now + 3, 5.0, DELIVERED, 200)),
                       now + 4)
    assert [a.outcome for a in await store.attempts(simmer.id)] == [DELIVERED, "resend", DELIVERED]
    assert await store.resend([], now) == []


async def test_a_schema_2_ledger_is_upgraded_in_place(store_url: str) -> None:
    first = open_store(store_url)
    await first.open()
    await first.record(EventRecord("stripe", "evt_old", "t", time.time(), b"{}"), [conversion("o")],
                       everywhere)
    await first.close()
    drop = [
        "DROP INDEX events_status",
        "DROP INDEX events_received",
        "ALTER TABLE events DROP COLUMN status",
        "ALTER TABLE events DROP COLUMN reason",
        "ALTER TABLE events DROP COLUMN replayed_at",
        "UPDATE schema_version SET version = 2",
    ]
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
        [old] = await upgraded.events()
        assert (old.event_id, old.status, old.reason) == ("evt_old", ACCEPTED, None)
        await upgraded.record(stored("evt_new", IGNORED, "test-mode event"), [], everywhere)
        assert [r.event_id for r in await upgraded.events([IGNORED])] == ["evt_new"]
    finally:
        await upgraded.close()
