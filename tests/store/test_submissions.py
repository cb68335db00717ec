"""Followed submissions, refund targets and attribution memory (schema 4), on every
backend: SQLite (a file) and PostgreSQL (RELAY_TEST_POSTGRES_URL)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from relay.conversion import Conversion, Customer
from relay.store import (
    DELIVERED,
    FAILED,
    FOLLOW_UP,
    PENDING,
    Attempt,
    EventRecord,
    FollowUp,
    Settlement,
    Store,
    SubmissionResult,
    open_store,
)
from tests.pgdb import pg_databases  # noqa: F401 - fixture
from tests.store import test_store as contract

anyio_backend = contract.anyio_backend
store_url = contract.store_url
opener = contract.opener
store = contract.store

pytestmark = pytest.mark.anyio

URI = "/Advertisers/IRsid/APISubmissions/A-1"


def sale(order: str, *, kind: str = "purchase", pi: str | None = None, total: str = "40.00",
         customer: str | None = "cus_1", attribution: dict[str, str] | None = None,
         source: str = "stripe", refs: dict[str, str] | None = None, days_ago: float = 0) -> Conversion:
    extra = dict(refs or {})
    if pi:
        extra["payment_intent"] = pi
    when = datetime.now(UTC) - timedelta(days=days_ago)
    return Conversion(
        source=source, kind=kind, order_key=order, occurred_at=when, currency="USD",
        total=Decimal(total), customer=Customer(id=customer), attribution=attribution or {},
        refs=extra,
    )


async def record(store: Store, *conversions: Conversion, dests: tuple[str, ...] = ("impact",)) -> None:
    event = EventRecord("stripe", f"evt_{time.time_ns()}", "t", time.time(), b"{}")
    await store.record(event, list(conversions), lambda _: dests)


async def deliver(store: Store, uri: str | None = URI, first_look: float = 0.0) -> int:
    """Claim the one due impact delivery and settle it delivered, following `uri`."""
    [claim] = await store.claim(["impact"], 1, 30, time.time())
    now = time.time()
    await store.settle(claim, Settlement(
        DELIVERED, status_code=200, attempt=Attempt(now, 5.0, DELIVERED, 200, "queued"),
        follow_up=FollowUp(uri, now + first_look)), now)
    return claim.delivery_id


def look(state: str, detail: str, **kw) -> SubmissionResult:
    return SubmissionResult(state, detail, Attempt(time.time(), 3.0, FOLLOW_UP, 200, detail), **kw)


async def test_a_followed_submission_is_looked_at_when_due_until_rejected(store: Store) -> None:
    await record(store, sale("cs_1", pi="pi_1"))
    delivery = await deliver(store, first_look=60)
    assert await store.claim_submissions(["impact"], 10, 30, time.time()) == []  # not due yet
    due = await store.next_submission_due(["impact"])
    assert due is not None and 55 < due - time.time() <= 60
    [row] = await store.deliveries(delivery_id=delivery)
    assert (row.status, row.confirmation) == (DELIVERED, "following")
    assert (await store.submission_stats())["following"] == {"impact": 1}

    [claim] = await store.claim_submissions(["impact"], 10, 30, time.time() + 61)
    assert (claim.delivery_id, claim.uri, claim.checks, claim.order_key) == (delivery, URI, 0, "cs_1")
    # Leased: nobody else gets it meanwhile.
    assert await store.claim_submissions(["impact"], 10, 30, time.time() + 61) == []
    assert await store.settle_submission(
        claim, look("following", "impact: In Progress", next_check_at=time.time() + 120), time.time())
    [claim] = await store.claim_submissions(["impact"], 10, 30, time.time() + 121)
    assert claim.checks == 1
    reason = "impact rejected the conversion: Contract Error: CONTRACT_NOT_FOUND"
    assert await store.settle_submission(claim, look(
        "rejected", reason, error_type="Contract Error", error_reason="CONTRACT_NOT_FOUND X",
        delivery_error=reason + "; submission A-1"), time.time())
    assert not await store.settle_submission(claim, look("accepted", "again"), time.time())  # settled

    [row] = await store.deliveries(delivery_id=delivery)
    assert row.status == FAILED and row.last_error == reason + "; submission A-1"
    assert (row.confirmation, row.confirmation_detail) == ("rejected", reason)
    assert [a.outcome for a in await store.attempts(delivery)] == [DELIVERED, FOLLOW_UP, FOLLOW_UP]
    stats = await store.submission_stats()
    assert stats["following"] == {"impact": 0}
    assert stats["outcomes"] == {("impact", "rejected", "Contract Error", "CONTRACT_NOT_FOUND"): 1}
    assert await store.next_submission_due(["impact"]) is None


async def test_a_resend_replaces_the_submission_and_the_old_look_is_refused(store: Store) -> None:
    await record(store, sale("cs_2", pi="pi_2"))
    delivery = await deliver(store)
    [old] = await store.claim_submissions(["impact"], 10, 30, time.time())
    assert await store.resend([delivery], time.time()) == [delivery]
    await deliver(store, "/Advertisers/IRsid/APISubmissions/A-2")
    # The look at the first submission comes back after it was replaced: it changes nothing.
    assert not await store.settle_submission(old, look("rejected", "late", delivery_error="late"),
                                             time.time())
    [row] = await store.deliveries(delivery_id=delivery)
    assert (row.status, row.confirmation) == (DELIVERED, "following")
    [new] = await store.claim_submissions(["impact"], 10, 30, time.time())
    assert new.uri.endswith("/A-2")
    assert (await store.submission_stats())["following"] == {"impact": 1}
    # An answer with nothing to follow forgets the submission.
    assert await store.settle_submission(new, look("accepted", "impact: complete"), time.time())
    assert await store.resend([delivery], time.time()) == [delivery]
    await deliver(store, None)
    [row] = await store.deliveries(delivery_id=delivery)
    assert row.confirmation is None


async def test_two_processes_never_hold_the_same_submission(opener) -> None:
    a, b = await opener(), await opener()
    for n in range(12):
        await record(a, sale(f"cs_c{n}", pi=f"pi_c{n}"))
    for _ in range(12):
        await deliver(a)
    now = time.time()
    got = await asyncio.gather(*(s.claim_submissions(["impact"], 3, 30, now) for s in (a, b, a, b)))
    ids = [c.id for claims in got for c in claims]
    assert len(ids) == 12 and len(set(ids)) == 12


async def test_a_hold_keeps_every_look_back(store: Store) -> None:
    await record(store, sale("cs_h", pi="pi_h"))
    await deliver(store)
    until = time.time() + 300
    assert await store.hold_submissions("impact", until) == 1
    assert await store.claim_submissions(["impact"], 10, 30, time.time()) == []
    assert await store.next_submission_due(["impact"]) == pytest.approx(until)
    assert len(await store.claim_submissions(["impact"], 10, 30, until + 1)) == 1


async def test_a_refund_finds_its_purchase_and_the_refunds_before_it(store: Store) -> None:
    await record(store, sale("cs_r", pi="pi_r", total="100.00"))
    purchase_delivery = await deliver(store)
    await record(store, sale("re_1", kind="refund", pi="pi_r", total="30.00"))
    await record(store, sale("re_2", kind="refund", pi="pi_r", total="20.00"))
    await record(store, sale("re_x", kind="refund", pi="pi_other", total="5.00"))
    rows = {r.order_key: r for r in await store.deliveries(destination="impact")}
    target = await store.refund_target(_conversion_id(store, "re_2"), "impact")
    assert target.link == "pi_r"
    assert target.purchase is not None and target.purchase.order_key == "cs_r"
    assert (target.delivery_status, target.confirmation) == (DELIVERED, "following")
    assert [(r.total, r.delivery_status) for r in target.refunds] == [
        (Decimal("30.00"), PENDING), (Decimal("20.00"), PENDING)]
    assert rows["cs_r"].id == purchase_delivery
    lonely = await store.refund_target(_conversion_id(store, "re_x"), "impact")
    assert lonely.link == "pi_other" and lonely.purchase is None
    # Simmer never had a delivery of the purchase: the target says so.
    other = await store.refund_target(_conversion_id(store, "re_1"), "simmer")
    assert other.purchase is not None and other.delivery_status is None


def _conversion_id(store: Store, order_key: str) -> int:
    """The conversion row id, read straight from the backend."""
    if store.url.startswith("sqlite"):
        with sqlite3.connect(store.url.split("sqlite:///", 1)[1]) as conn:
            return int(conn.execute("SELECT id FROM conversions WHERE order_key = ?",
                                    (order_key,)).fetchone()[0])
    import psycopg

    with psycopg.connect(store.url) as conn:
        row = conn.execute("SELECT id FROM conversions WHERE order_key = %s", (order_key,)).fetchone()
        assert row is not None
        return int(row[0])


# ---------------------------------------------------------------- attribution memory


async def test_memory_first_applies_the_first_ids_to_renewals_cancellations_refunds(store: Store) -> None:
    await record(store, sale("cs_m", pi="pi_m", attribution={"irclickid": "click-1"}))
    await record(store, sale("in_2", kind="purchase", attribution={"irclickid": "click-2"}))
    await record(store, sale("in_r1", kind="subscription_renewed"),
                 sale("sub_1", kind="subscription_cancelled"),
                 sale("re_m", kind="refund", pi="pi_m"))
    await record(store, sale("in_own", kind="subscription_renewed", attribution={"gclid": "g"}))
    await record(store, sale("in_other", kind="subscription_renewed", customer="cus_2"))
    found = await store.conversions_by_key([
        ("stripe", kind, key) for kind, key in (
            ("subscription_renewed", "in_r1"), ("subscription_cancelled", "sub_1"), ("refund", "re_m"),
            ("subscription_renewed", "in_own"), ("subscription_renewed", "in_other"))])
    ids = {key[2]: c.attribution for key, c in found.items()}
    assert ids == {"in_r1": {"irclickid": "click-1"}, "sub_1": {"irclickid": "click-1"},
                   "re_m": {"irclickid": "click-1"}, "in_own": {"gclid": "g"}, "in_other": {}}
    assert found[("stripe", "subscription_renewed", "in_r1")].refs["attribution_memory"] == "first"


@pytest.mark.parametrize("memory, expected", [("last", {"irclickid": "click-2"}), ("off", {})])
async def test_memory_last_and_off(store: Store, memory: str, expected: dict[str, str]) -> None:
    store.attribution_memory = memory
    await record(store, sale("cs_l1", attribution={"irclickid": "click-1"}))
    await record(store, sale("cs_l2", attribution={"irclickid": "click-2"}))
    await record(store, sale("in_l", kind="subscription_renewed"))
    found = await store.conversions_by_key([("stripe", "subscription_renewed", "in_l")])
    assert found[("stripe", "subscription_renewed", "in_l")].attribution == expected


async def test_memory_within_one_batch_of_concurrent_webhooks(store: Store) -> None:
    """Webhooks arriving together share a transaction (PostgreSQL's batch path): a renewal
    recorded after the purchase of the same batch still gets its ids."""
    async def one(conversion: Conversion, n: int) -> None:
        await store.record(EventRecord("stripe", f"evt_b{n}", "t", time.time(), b"{}"), [conversion],
                           lambda _: ())
    await asyncio.gather(
        one(sale("cs_b", customer="cus_b", attribution={"irclickid": "click-b"}), 0),
        *(one(sale(f"in_b{n}", kind="subscription_renewed", customer="cus_b"), n + 1) for n in range(3)),
    )
    found = await store.conversions_by_key([("stripe", "subscription_renewed", f"in_b{n}") for n in range(3)])
    assert [c.attribution for c in found.values()] == [{"irclickid": "click-b"}] * 3


async def test_retention_keeps_a_memory_in_use_and_removes_one_gone_quiet(store: Store) -> None:
    await record(store, sale("cs_old", customer="cus_old", attribution={"irclickid": "old"}, days_ago=40))
    await record(store, sale("cs_kept", customer="cus_kept", attribution={"irclickid": "kept"},
                             days_ago=40))
    # cus_kept renewed 10 days ago with the remembered ids: the memory is in use.
    await record(store, sale("in_kept", kind="subscription_renewed", customer="cus_kept", days_ago=10))
    now, cursor, removed = time.time(), None, 0
    for claim in await store.claim(["impact"], 100, 30, now):  # settled: retention may take them
        await store.settle(claim, Settlement(DELIVERED, status_code=200), now)
    while True:
        batch = await store.retain(now - 30 * 86400, now, cursor, 1)
        removed += batch.memories
        if batch.done:
            break
        cursor = batch.cursor
    assert removed == 1
    await record(store, sale("in_old", kind="subscription_renewed", customer="cus_old"),
                 sale("in_kept2", kind="subscription_renewed", customer="cus_kept"))
    found = await store.conversions_by_key([("stripe", "subscription_renewed", k) for k in ("in_old", "in_kept2")])
    assert {k[2]: c.attribution for k, c in found.items()} == {"in_old": {}, "in_kept2": {"irclickid": "kept"}}


async def test_forget_removes_the_buyers_remembered_ids(store: Store) -> None:
    await record(store, sale("cs_f", customer="cus_forget", attribution={"irclickid": "theirs"}))
    await record(store, sale("cs_g", customer="cus_other", attribution={"irclickid": "others"}))
    forgotten = await store.forget(customer_id="cus_forget", now=time.time())
    assert forgotten.memories == 1 and forgotten.conversions == 1
    await record(store, sale("in_f", kind="subscription_renewed", customer="cus_forget"),
                 sale("in_g", kind="subscription_renewed", customer="cus_other"))
    found = await store.conversions_by_key([("stripe", "subscription_renewed", k) for k in ("in_f", "in_g")])
    assert {k[2]: c.attribution for k, c in found.items()} == {"in_f": {}, "in_g": {"irclickid": "others"}}


async def test_an_older_ledger_is_upgraded_in_place_and_old_purchases_are_found(store_url: str) -> None:
    first = open_store(store_url)
    await first.open()
    await record(first, sale("cs_old", pi="pi_old", attribution={"irclickid": "c"}))
    await first.close()
    drop = [
        "DROP TABLE submissions",
        "DROP TABLE submission_counts",
        "DROP TABLE attribution_memory",
        "DROP INDEX conversions_link",
        "ALTER TABLE conversions DROP COLUMN link_ref",
        "UPDATE schema_version SET version = 5",
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
        await record(upgraded, sale("re_new", kind="refund", pi="pi_old"))
        target = await upgraded.refund_target(_conversion_id(upgraded, "re_new"), "impact")
        assert target.purchase is not None and target.purchase.order_key == "cs_old"
        assert (await upgraded.submission_stats()) == {"following": {}, "outcomes": {}}
    finally:
        await upgraded.close()
