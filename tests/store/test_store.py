"""The Store contract, run against every backend: SQLite (a file) and PostgreSQL.

PostgreSQL cases need RELAY_TEST_POSTGRES_URL (set by ci-postgres.sh in CI); they
are skipped only when it is unset.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from relay.conversion import Conversion, Customer
from relay.errors import StoreError
from relay.store import (
    DELIVERED,
    FAILED,
    PENDING,
    Attempt,
    EventRecord,
    Settlement,
    Store,
    open_store,
)
from tests.pgdb import Databases, pg_databases, pg_url  # noqa: F401 - fixtures

pytestmark = pytest.mark.anyio

DESTS = ("simmer", "impact")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'relay.db'}"
        return
    dbs: Databases = request.getfixturevalue("pg_databases")
    name, url = dbs.create()
    yield url
    dbs.drop(name)


@pytest.fixture
async def opener(store_url: str) -> AsyncIterator[Callable[[], Awaitable[Store]]]:
    """Opens stores on the same database (several = several processes)."""
    opened: list[Store] = []

    async def open_one() -> Store:
        store = open_store(store_url)
        await store.open()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


@pytest.fixture
async def store(opener: Callable[[], Awaitable[Store]]) -> Store:
    return await opener()


def conversion(order: str, *, kind: str = "purchase", email: str | None = "a@example.com",
               customer_id: str | None = None) -> Conversion:
    return Conversion(
        source="stripe", kind=kind, order_key=order, occurred_at=datetime.now(UTC),
        currency="USD", total=Decimal("49.00"), customer=Customer(email=email, id=customer_id),
    )


def event(event_id: str, received_at: float | None = None) -> EventRecord:
    return EventRecord("stripe", event_id, "checkout.session.completed",
                       time.time() if received_at is None else received_at, b'{"id": "x"}')


def everywhere(_: Conversion) -> tuple[str, ...]:
    return DESTS


async def test_record_dedupes_events_and_conversions(store: Store) -> None:
    first = await store.record(event("evt_1"), [conversion("cs_1")], everywhere)
    assert not first.duplicate and len(first.conversions) == 1 and first.deliveries == 2
    again = await store.record(event("evt_1"), [conversion("cs_1")], everywhere)
    assert again.duplicate and again.deliveries == 0
    # the same purchase through a new event id: one conversion, no new deliveries
    other = await store.record(event("evt_2"), [conversion("cs_1")], everywhere)
    assert not other.duplicate and not other.conversions and len(other.known) == 1
    assert other.deliveries == 0
    # another kind for the same order is another conversion
    refund = await store.record(event("evt_3"), [conversion("cs_1", kind="refund")], everywhere)
    assert len(refund.conversions) == 1
    rows = await store.deliveries(limit=100)
    assert sorted((r.kind, r.destination) for r in rows) == [
        ("purchase", "impact"), ("purchase", "simmer"), ("refund", "impact"), ("refund", "simmer")
    ]
    assert {r.status for r in rows} == {PENDING}


async def test_new_customer_derived_from_customer_key(store: Store) -> None:
    now = time.time()
    first = await store.record(event("e1", now), [conversion("o1", customer_id="cus_1")], everywhere)
    second = await store.record(event("e2", now), [conversion("o2", customer_id="cus_1")], everywhere)
    by_email = await store.record(event("e3", now), [conversion("o3", email="B@Example.com ")],
                                  everywhere)
    again = await store.record(event("e4", now), [conversion("o4", email="b@example.com")],
                               everywhere)
    assert first.conversions[0].new_customer is True
    assert second.conversions[0].new_customer is False
    assert by_email.conversions[0].new_customer is True
    assert again.conversions[0].new_customer is False
    claims = await store.claim(["simmer"], 10, 30, now + 1)
    stored = {c.conversion.order_key: c.conversion.new_customer for c in claims}
    assert stored == {"o1": True, "o2": False, "o3": True, "o4": False}


async def test_claim_lease_expiry_and_recovery(store: Store) -> None:
    now = time.time()
    await store.record(event("e1", now), [conversion("o1")], everywhere)
    claims = await store.claim(["simmer"], 10, 5.0, now)
    assert [(c.destination, c.attempt, c.recovered) for c in claims] == [("simmer", 1, False)]
    assert claims[0].conversion.order_key == "o1"
    assert claims[0].created_at == pytest.approx(now)
    assert await store.claim(["simmer"], 10, 5.0, now + 1) == []  # leased
    assert await store.next_due(["simmer"]) == pytest.approx(now + 5.0)
    # the worker died: the lease runs out and another claim takes it over
    again = await store.claim(["simmer"], 10, 5.0, now + 6)
    assert [(c.delivery_id, c.attempt, c.recovered) for c in again] == [
        (claims[0].delivery_id, 2, True)
    ]
    # the first worker's late result is refused: it lost the lease
    assert not await store.settle(claims[0], Settlement(DELIVERED, status_code=200), now + 7)
    assert await store.settle(again[0], Settlement(
        DELIVERED, status_code=201, attempt=Attempt(now + 6, 12.5, "delivered", 201)), now + 7)
    [row] = await store.deliveries(destination="simmer")
    assert (row.status, row.attempts, row.last_status_code, row.next_attempt_at) == (
        DELIVERED, 2, 201, None)
    # settled twice? no: the lease is gone
    assert not await store.settle(again[0], Settlement(FAILED, error="late"), now + 8)


async def test_settle_retry_and_deferral(store: Store) -> None:
    now = time.time()
    await store.record(event("e1", now), [conversion("o1")], everywhere)
    [c] = await store.claim(["impact"], 10, 30, now)
    assert await store.settle(c, Settlement(
        PENDING, next_attempt_at=now + 100, error="HTTP 503", status_code=503,
        attempt=Attempt(now, 3.0, "retry", 503, "busy")), now + 1)
    [row] = await store.deliveries(destination="impact")
    assert (row.status, row.attempts, row.last_error, row.last_status_code) == (
        PENDING, 1, "HTTP 503", 503)
    assert row.next_attempt_at == pytest.approx(now + 100)
    assert await store.claim(["impact"], 10, 30, now + 50) == []
    assert await store.next_due(["impact"]) == pytest.approx(now + 100)
    [c2] = await store.claim(["impact"], 10, 30, now + 100)
    assert (c2.attempt, c2.recovered) == (2, False)
    # a rate-limit deferral does not spend an attempt
    assert await store.settle(c2, Settlement(
        PENDING, next_attempt_at=now + 130, count_attempt=False), now + 101)
    [row] = await store.deliveries(destination="impact")
    assert row.attempts == 1 and row.last_error == "HTTP 503"
    [c3] = await store.claim(["impact"], 10, 30, now + 130)
    assert c3.attempt == 2


async def test_next_due_is_earliest_claimable(store: Store) -> None:
    assert await store.next_due(["simmer"]) is None
    assert await store.next_due([]) is None
    now = time.time()
    await store.record(event("e1", now), [conversion("o1")], everywhere)
    await store.record(event("e2", now + 2), [conversion("o2")], everywhere)
    assert await store.next_due(["simmer", "impact"]) == pytest.approx(now)
    assert await store.next_due(["nowhere"]) is None
    await store.claim(["simmer"], 1, 10, now + 3)  # leases o1 until now + 13
    assert await store.next_due(["simmer"]) == pytest.approx(now + 2)


async def test_requeue_failed(store: Store) -> None:
    now = time.time()
    await store.record(event("e1", now), [conversion("o1"), conversion("o2")], everywhere)
    claims = await store.claim(list(DESTS), 10, 30, now)
    assert len(claims) == 4
    for c in claims:
        status = FAILED if c.destination == "impact" else DELIVERED
        assert await store.settle(c, Settlement(status, error="HTTP 400: bad"), now + 1)
    failed = await store.deliveries(status=FAILED)
    assert len(failed) == 2 and all(r.last_error == "HTTP 400: bad" for r in failed)
    assert await store.requeue([failed[0].id], now=now + 2) == 1
    assert await store.requeue(destination="simmer", now=now + 2) == 0  # delivered stays
    assert await store.requeue(now=now + 3) == 1
    rows = await store.deliveries(destination="impact")
    assert [(r.status, r.attempts) for r in rows] == [(PENDING, 0), (PENDING, 0)]
    again = await store.claim(["impact"], 10, 30, now + 3)
    assert sorted(c.attempt for c in again) == [1, 1]


async def test_stats(store: Store) -> None:
    now = time.time()
    assert await store.stats(now) == {"by_status": {}, "oldest_pending_age": 0.0}
    await store.record(event("e1", now - 30), [conversion("o1")], everywhere)
    await store.record(event("e2", now - 10), [conversion("o2")], everywhere)
    [c] = await store.claim(["simmer"], 1, 30, now)
    await store.settle(c, Settlement(DELIVERED, status_code=200), now)
    stats = await store.stats(now)
    assert stats["by_status"] == {("simmer", DELIVERED): 1, ("simmer", PENDING): 1,
                                  ("impact", PENDING): 2}
    assert stats["oldest_pending_age"] == pytest.approx(30, abs=0.01)


async def test_rate_limit_is_shared_between_instances(opener) -> None:
    one, two = await opener(), await opener()
    now = time.time()
    granted = [await (one if i % 2 else two).rate_acquire("simmer", 5, now + i * 0.1)
               for i in range(5)]
    assert granted == [0.0] * 5
    wait = await one.rate_acquire("simmer", 5, now + 1)
    assert wait == pytest.approx(59.0, abs=0.01)  # the first slot frees at now + 60
    assert await two.rate_acquire("simmer", 5, now + 1) == pytest.approx(59.0, abs=0.01)
    assert await two.rate_acquire("impact", 5, now + 1) == 0.0  # keys are separate
    assert await two.rate_acquire("simmer", 5, now + 60.05) == 0.0  # sliding window
    # the limit lowered: wait for the surplus to age out
    # log now: +0.2, +0.3, +0.4, +60.05; the 2nd newest beyond the limit frees at +60.4
    assert await one.rate_acquire("simmer", 2, now + 60.15) == pytest.approx(0.25, abs=0.01)


async def test_rate_limit_holds_under_concurrency(opener) -> None:
    one, two = await opener(), await opener()
    now = time.time()
    results = await asyncio.gather(
        *[(one if i % 2 else two).rate_acquire("simmer", 10, now) for i in range(40)]
    )
    assert sum(1 for r in results if r == 0.0) == 10


async def test_concurrent_claims_never_overlap(opener) -> None:
    one, two = await opener(), await opener()
    now = time.time()
    for i in range(60):
        await one.record(event(f"e{i}", now), [conversion(f"o{i}")], everywhere)

    async def drain(store: Store) -> list[int]:
        got: list[int] = []
        while True:
            claims = await store.claim(list(DESTS), 7, 60, now)
            if not claims:
                return got
            got.extend(c.delivery_id for c in claims)

    results = await asyncio.gather(*[drain(s) for s in (one, two, one, two)])
    ids = [i for r in results for i in r]
    assert len(ids) == 120 and len(set(ids)) == 120


@pytest.mark.postgres
async def test_postgres_unavailable_raises_store_error() -> None:
    from relay.store.postgres import PostgresStore
    from tests.emulators.base import reserve_port

    down = reserve_port()  # held, not listening: connections are refused
    store = PostgresStore(f"postgres://relay:s3cret-pw@127.0.0.1:{down.getsockname()[1]}/relay")
    with pytest.raises(StoreError) as info:
        await store.open()
    assert "s3cret-pw" not in str(info.value)
    with pytest.raises(StoreError):
        await store.ping()
    with pytest.raises(StoreError):
        await store.claim(["simmer"], 1, 1, time.time())
    down.close()


@pytest.mark.postgres
async def test_postgres_schema_created_by_many_processes_at_once(pg_databases) -> None:  # noqa: F811
    from relay.store.postgres import PostgresStore

    name, url = pg_databases.create(empty=True)
    stores = [PostgresStore(url) for _ in range(6)]
    try:
        await asyncio.gather(*[s.open() for s in stores])
        for s in stores:
            await s.ping()
        await stores[0].record(event("e1"), [conversion("o1")], everywhere)
        assert len(await stores[1].deliveries()) == 2
    finally:
        for s in stores:
            await s.close()
        pg_databases.drop(name)


@pytest.mark.postgres
async def test_postgres_watch_wakes_other_instances(pg_databases) -> None:  # noqa: F811
    from relay.store.postgres import PostgresStore

    name, url = pg_databases.create()
    web, worker = PostgresStore(url), PostgresStore(url)
    woke = asyncio.Event()
    try:
        await web.open()
        await worker.open()
        await worker.watch(woke.set)
        await asyncio.sleep(0.05)
        woke.clear()
        await web.record(event("e1"), [conversion("o1")], everywhere)
        await asyncio.wait_for(woke.wait(), 5)
    finally:
        await web.close()
        await worker.close()
        pg_databases.drop(name)


async def test_heartbeat_extends_a_live_lease_only(opener) -> None:
    a = await opener()
    b = await opener()
    await a.record(event("evt_hb"), [conversion("ord_hb")], everywhere)
    now = time.time()
    claims = await a.claim(["simmer"], 10, 1.0, now)
    assert len(claims) == 1
    await a.extend(claims, now + 60)  # the worker is still busy with it
    assert await b.claim(["simmer"], 10, 1.0, now + 5) == []  # not taken over
    taken = await b.claim(["simmer"], 10, 1.0, now + 61)  # its worker died: lease ran out
    assert len(taken) == 1 and taken[0].recovered
    await a.extend(claims, now + 500)  # the old token no longer extends anything
    assert await b.settle(taken[0], Settlement(DELIVERED), now + 62)


async def test_requeue_skipped_only_when_asked(store: Store) -> None:
    from relay.store import SKIPPED

    await store.record(event("evt_sk"), [conversion("ord_sk")], everywhere)
    now = time.time()
    for claim in await store.claim(list(DESTS), 10, 30, now):
        await store.settle(claim, Settlement(SKIPPED, error="no buyer email"), now)
    assert await store.requeue(now=now) == 0  # failed only, by default
    assert await store.requeue(destination="simmer", now=now, statuses=(SKIPPED,)) == 1
    [claim] = await store.claim(list(DESTS), 10, 30, now + 1)
    assert claim.destination == "simmer" and claim.attempt == 1


def cumulative_refund(cumulative_cents: int) -> Conversion:
    from relay import refunds

    return Conversion(
        source="lemonsqueezy", kind="refund",
        order_key=refunds.cumulative_key("order-1", cumulative_cents),
        occurred_at=datetime.now(UTC), currency="USD",
        total=Decimal(cumulative_cents).scaleb(-2),
        refs={refunds.CUMULATIVE_REF: "order-1"},
    )


async def test_cumulative_refunds_are_recorded_as_deltas(store: Store) -> None:
    first = await store.record(event("evt_r1"), [cumulative_refund(1000)], everywhere)
    assert [c.total for c in first.conversions] == [Decimal("10.00")]
    second = await store.record(event("evt_r2"), [cumulative_refund(1500)], everywhere)
    assert [c.total for c in second.conversions] == [Decimal("5.00")]  # not 15.00
    assert second.deliveries == 2
    late = await store.record(event("evt_r0"), [cumulative_refund(1000)], everywhere)  # replayed
    assert late.conversions == [] and late.deliveries == 0
    smaller = await store.record(event("evt_r3"), [cumulative_refund(1200)], everywhere)  # out of order
    assert smaller.conversions == [] and smaller.deliveries == 0
    [claim, *_] = await store.claim(["simmer"], 10, 30, time.time())
    assert claim.conversion.total in (Decimal("10.00"), Decimal("5.00"))


async def test_concurrent_cumulative_refunds_never_double_count(opener) -> None:
    stores = [await opener() for _ in range(2)]
    results = await asyncio.gather(
        stores[0].record(event("evt_c1"), [cumulative_refund(1000)], everywhere),
        stores[1].record(event("evt_c2"), [cumulative_refund(1500)], everywhere),
    )
    recorded = sum((r.conversions for r in results), [])
    assert sum(c.total for c in recorded) == Decimal("15.00")


async def test_concurrent_records_across_instances_recorded_exactly_once(opener) -> None:
    """Batches of two stores (two processes) racing on the same events and orders."""
    stores = [await opener() for _ in range(2)]
    now = time.time()
    calls = [
        stores[i % 2].record(event(f"evt_m{i % 150}", now),
                             [conversion(f"ord_m{i % 120}", customer_id=f"cus_{i % 7}")],
                             everywhere)
        for i in range(300)
    ]
    results = await asyncio.gather(*calls)
    fresh = [r for r in results if not r.duplicate]
    assert len(fresh) == 150  # each event id accepted once, whichever store got it first
    recorded = [c.order_key for r in fresh for c in r.conversions]
    assert sorted(recorded) == sorted(f"ord_m{i}" for i in range(120))  # each order once
    assert sum(len(r.known) for r in fresh) == 30
    assert sum(r.deliveries for r in results) == 240
    rows = await stores[0].deliveries(limit=1000)
    assert len(rows) == 240 and len({(r.order_key, r.destination) for r in rows}) == 240


async def test_one_malformed_call_in_a_batch_fails_alone(store: Store) -> None:
    bad = cumulative_refund(1000).replace(total=None)  # a cumulative refund needs its total
    calls = [store.record(event(f"evt_ok{i}"), [conversion(f"ord_ok{i}")], everywhere)
             for i in range(10)]
    calls.insert(5, store.record(event("evt_bad"), [bad], everywhere))
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[5], StoreError)
    ok = results[:5] + results[6:]
    assert all(not isinstance(r, BaseException) and r.deliveries == 2 for r in ok), ok
    assert len(await store.deliveries(limit=100)) == 20
    # the failed call left nothing behind: its retry (fixed) is not a duplicate
    again = await store.record(event("evt_bad"), [cumulative_refund(1000)], everywhere)
    assert not again.duplicate and again.deliveries == 2


async def test_one_batch_sees_its_earlier_calls(store: Store) -> None:
    """Calls sharing a transaction behave as if recorded one after the other."""
    now = time.time()
    results = await asyncio.gather(
        store.record(event("evt_b1", now), [conversion("ord_b1", customer_id="cus_b")], everywhere),
        store.record(event("evt_b2", now), [conversion("ord_b2", customer_id="cus_b")], everywhere),
        store.record(event("evt_b3", now), [conversion("ord_b1", customer_id="cus_b")], everywhere),
        store.record(event("evt_b1", now), [conversion("ord_b9")], everywhere),
        store.record(event("evt_b4", now), [cumulative_refund(1000)], everywhere),
        store.record(event("evt_b5", now), [cumulative_refund(2500)], everywhere),
        store.record(event("evt_b6", now), [cumulative_refund(2500)], everywhere),
    )
    assert [c.new_customer for r in results[:2] for c in r.conversions] == [True, False]
    assert not results[2].conversions and [c.order_key for c in results[2].known] == ["ord_b1"]
    assert results[3].duplicate and results[3].deliveries == 0
    refunded = [c.total for r in results[4:] for c in r.conversions]
    assert refunded == [Decimal("10.00"), Decimal("15.00")] and not results[6].conversions
    assert len(await store.deliveries(limit=100)) == 8


@pytest.mark.postgres
async def test_postgres_group_commit_and_refund_locks_across_instances(pg_databases) -> None:  # noqa: F811
    """Concurrent records share transactions; batches of two instances holding refund locks
    of several objects in opposite orders neither deadlock nor count a refund twice."""
    import psycopg

    from relay import refunds
    from relay.store.postgres import PostgresStore

    def refund(obj: str, cents: int) -> Conversion:
        return cumulative_refund(cents).replace(
            order_key=refunds.cumulative_key(obj, cents), refs={refunds.CUMULATIVE_REF: obj})

    name, url = pg_databases.create()
    stores = [PostgresStore(url), PostgresStore(url)]
    try:
        for s in stores:
            await s.open()
        objects = [f"order-{i}" for i in range(8)]
        calls = []
        for step in range(1, 6):
            for i, obj in enumerate(objects):
                for k, s in enumerate(stores):  # the other instance walks the objects backwards
                    o = obj if k == 0 else objects[-1 - i]
                    calls.append(s.record(event(f"evt_{k}_{o}_{step}"), [refund(o, step * 100)],
                                          everywhere))
        results = await asyncio.wait_for(asyncio.gather(*calls), 30)
        totals: dict[str, Decimal] = {}
        for r in results:
            for c in r.conversions:
                obj = c.refs[refunds.CUMULATIVE_REF]
                totals[obj] = totals.get(obj, Decimal(0)) + c.total
        assert totals == {obj: Decimal("5.00") for obj in objects}
        with psycopg.connect(url) as conn:
            n, transactions = conn.execute(
                "SELECT count(*), count(DISTINCT xmin::text) FROM events").fetchone()
        assert n == len(calls) and transactions < n / 4  # group commit
    finally:
        for s in stores:
            await s.close()
        pg_databases.drop(name)


@pytest.mark.postgres
async def test_postgres_statement_error_fails_its_call_only(pg_url) -> None:  # noqa: F811
    from relay.store.postgres import PostgresStore

    store = PostgresStore(pg_url)
    await store.open()
    try:
        calls = [store.record(event(f"evt_s{i}"), [conversion(f"ord_s{i}")], everywhere)
                 for i in range(6)]
        calls.insert(3, store.record(event("evt_\x00nul"), [conversion("ord_nul")], everywhere))
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[3], StoreError)
        assert all(not isinstance(r, BaseException) and r.deliveries == 2
                   for r in results[:3] + results[4:])
        assert len(await store.deliveries(limit=100)) == 12
        await store.ping()
    finally:
        await store.close()


async def test_batch_without_destinations_or_customer(store: Store) -> None:
    nowhere = lambda _: ()  # noqa: E731
    results = await asyncio.gather(*[
        store.record(event(f"evt_n{i}"), [conversion(f"ord_n{i}", email=None)], nowhere)
        for i in range(5)
    ])
    assert all(len(r.conversions) == 1 and r.deliveries == 0 for r in results)
    assert [c.new_customer for r in results for c in r.conversions] == [None] * 5
    assert await store.deliveries() == []


async def test_in_doubt_only_when_the_dead_claim_had_marked_its_send(opener) -> None:
    a = await opener()
    await a.record(event("evt_doubt"), [conversion("ord_d1"), conversion("ord_d2")], everywhere)
    now = time.time()
    claims = await a.claim(["simmer"], 10, 1.0, now)
    assert len(claims) == 2
    await a.mark_sent(claims[:1])  # the worker sent the first request, then died
    again = await a.claim(["simmer"], 10, 1.0, now + 5)  # leases ran out
    doubt = {c.conversion.order_key: (c.recovered, c.in_doubt) for c in again}
    sent_key = claims[0].conversion.order_key
    unsent_key = claims[1].conversion.order_key
    assert doubt == {sent_key: (True, True), unsent_key: (True, False)}
    for c in again:  # a settled attempt clears the doubt for the next one
        await a.settle(c, Settlement(PENDING, next_attempt_at=now + 6), now + 5)
    third = await a.claim(["simmer"], 10, 30, now + 7)
    assert [c.in_doubt for c in third] == [False, False]


@pytest.mark.postgres
async def test_postgres_a_row_locked_elsewhere_stalls_only_its_own_call(pg_url) -> None:  # noqa: F811
    import psycopg

    from relay.store.postgres import PostgresStore

    store = PostgresStore(pg_url)
    await store.open()
    holder = await psycopg.AsyncConnection.connect(pg_url)
    try:
        await holder.execute(  # another process is stuck mid-transaction on event "hot"
            "INSERT INTO events (source, event_id, event_type, received_at, body)"
            " VALUES ('stripe', 'evt_hot', 't', 0, '')")
        started = time.monotonic()
        calls = [store.record(event("evt_hot"), [conversion("ord_hot")], everywhere)]
        calls += [store.record(event(f"evt_cold{i}"), [conversion(f"ord_cold{i}")], everywhere)
                  for i in range(20)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[0], StoreError)  # 503: Stripe retries it later
        assert all(not isinstance(r, BaseException) and r.deliveries == 2 for r in results[1:])
        assert time.monotonic() - started < 20
    finally:
        await holder.rollback()
        await holder.close()
        await store.close()


@pytest.mark.postgres
async def test_postgres_refund_lock_keys_never_see_processor_text(pg_url) -> None:  # noqa: F811
    from relay import refunds
    from relay.store.postgres import PostgresStore

    store = PostgresStore(pg_url)
    await store.open()
    try:
        bad = cumulative_refund(500).replace(refs={refunds.CUMULATIVE_REF: "order-\x00"},
                                             order_key=refunds.cumulative_key("order-\x00", 500))
        calls = [store.record(event(f"evt_ok{i}"), [conversion(f"ord_ok{i}")], everywhere) for i in range(5)]
        calls.append(store.record(event("evt_badref"), [bad], everywhere))
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(not isinstance(r, BaseException) for r in results[:5])  # the others still land
        assert isinstance(results[5], StoreError)
    finally:
        await store.close()


async def test_a_429_blocks_the_shared_window_for_every_instance(opener) -> None:
    a = await opener()
    b = await opener()
    now = time.time()
    assert await b.rate_acquire("simmer", 50, now) == 0.0
    await a.rate_block("simmer", 50, now + 30)  # Simmer said Retry-After: 30 to one worker
    wait = await b.rate_acquire("simmer", 50, now + 1)  # another worker asks for a slot
    assert 28 <= wait <= 30
    assert await b.rate_acquire("simmer", 50, now + 31) == 0.0  # free again afterwards


# ------------------------------------------------------------------ disabled destinations (schema 3)


async def test_a_destination_disabled_by_its_endpoint(opener) -> None:
    a = await opener()
    assert await a.disabled_destinations() == {}
    assert await a.disable_destination("webhook", "HTTP 410: endpoint gone", "fp-1", 1_700_000_000.0)
    # a second 410 (another worker, a delivery in flight) keeps the first time and reason
    assert not await a.disable_destination("webhook", "HTTP 410: again", "fp-2", 1_700_000_100.0)
    b = await opener()  # another process sees it
    [state] = (await b.disabled_destinations()).values()
    assert (state.destination, state.since, state.reason, state.fingerprint) == (
        "webhook", 1_700_000_000.0, "HTTP 410: endpoint gone", "fp-1")
    enabled = await b.enable_destination("webhook")
    assert enabled is not None and enabled.since == 1_700_000_000.0
    assert await a.disabled_destinations() == {}
    assert await a.enable_destination("webhook") is None  # not disabled (any more)
    assert await a.disable_destination("webhook", "HTTP 410: gone again", None, 1_700_000_200.0)
    assert (await b.disabled_destinations())["webhook"].fingerprint is None


async def test_disabling_changes_no_delivery(opener) -> None:
    """Deliveries of a disabled destination keep their state: they wait, the worker skips them."""
    store = await opener()
    await store.record(event("e1"), [conversion("o1")], everywhere)
    await store.disable_destination("simmer", "HTTP 410", None, time.time())
    rows = {r.destination: r for r in await store.deliveries()}
    assert rows["simmer"].status == PENDING and rows["impact"].status == PENDING
    assert len(await store.claim(["simmer"], 10, 30, time.time())) == 1  # the worker decides, not claim


@pytest.mark.postgres
async def test_postgres_a_version_2_ledger_gets_the_destination_states_in_place(pg_url) -> None:  # noqa: F811
    import psycopg

    from relay.store.postgres import SCHEMA_VERSION, PostgresStore

    store = PostgresStore(pg_url)
    await store.open()
    await store.record(event("e_v2"), [conversion("o_v2")], everywhere)
    await store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:  # what a version 2 ledger looked like
        conn.execute("DROP TABLE destination_states")
        conn.execute("UPDATE schema_version SET version = 2")
    store = PostgresStore(pg_url)
    await store.open()
    try:
        assert await store.disabled_destinations() == {}
        assert await store.disable_destination("webhook", "HTTP 410", "f", 1.0)
        assert len(await store.claim(["simmer", "impact"], 10, 30, time.time())) == 2
    finally:
        await store.close()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
