"""The reconcile bookkeeping of the Store, on SQLite and PostgreSQL: the high-water mark,
the last outcome, and the lease that lets only one process reconcile a source at a time."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from relay.store import EventRecord, Store, open_store
from tests.pgdb import pg_databases  # noqa: F401 - fixture
from tests.store import test_store as contract
from tests.store.test_store import conversion, everywhere

# The backends and the store fixtures of the Store contract tests.
anyio_backend = contract.anyio_backend
store_url = contract.store_url
opener = contract.opener
store = contract.store

pytestmark = pytest.mark.anyio


async def test_mark_moves_forward_only_and_failures_keep_it(store: Store) -> None:
    now = time.time()
    state = await store.reconcile_lease("stripe", "w1", now, now + 60)
    assert state is not None and state.mark is None and state.runs == 0
    assert await store.reconcile_progress("stripe", "w1", now - 100, now + 60)
    assert await store.reconcile_progress("stripe", "w1", now - 500, now + 60)  # never back
    await store.reconcile_done("stripe", "w1", now, now - 50, None)
    [row] = await store.reconcile_states()
    assert row.mark == pytest.approx(now - 50) and row.runs == 1 and not row.failing
    assert row.lease_owner is None and row.last_success_at == pytest.approx(now)

    later = now + 10
    assert await store.reconcile_lease("stripe", "w1", later, later + 60) is not None
    assert await store.reconcile_progress("stripe", "w1", now - 20, later + 60)
    await store.reconcile_done("stripe", "w1", later, now + 5, "Stripe GET /v1/events answered 401")
    [row] = await store.reconcile_states()
    # The failed run keeps what it checkpointed, not the end it aimed at.
    assert row.mark == pytest.approx(now - 20) and row.failing and row.failures == 1
    assert row.last_error == "Stripe GET /v1/events answered 401"
    assert row.last_error_at == pytest.approx(later) and row.runs == 1


async def test_only_one_owner_holds_the_lease(opener: Callable[[], Awaitable[Store]]) -> None:
    first, second = await opener(), await opener()  # two processes on one ledger
    now = time.time()
    results = await asyncio.gather(
        *[s.reconcile_lease("paddle", name, now, now + 30)
          for s, name in [(first, "a"), (second, "b")] * 5]
    )
    owners = {name for (s, name), r in zip([(first, "a"), (second, "b")] * 5, results, strict=True) if r}
    assert len(owners) == 1  # never both
    [holder] = owners
    other = second if holder == "a" else first
    other_name = "b" if holder == "a" else "a"
    assert await other.reconcile_lease("paddle", other_name, now + 1, now + 31) is None
    assert not await other.reconcile_progress("paddle", other_name, now, now + 31)
    # A dead owner's lease runs out, and the other one takes over.
    taken = await other.reconcile_lease("paddle", other_name, now + 31, now + 61)
    assert taken is not None and taken.lease_owner == other_name
    # The old owner's late bookkeeping changes nothing.
    await (first if holder == "a" else second).reconcile_done("paddle", holder, now + 32, now + 99, None)
    [row] = await other.reconcile_states()
    assert row.mark is None and row.runs == 0 and row.lease_owner == other_name


async def test_existing_tells_which_conversions_the_ledger_has(store: Store) -> None:
    await store.record(EventRecord("stripe", "evt_1", "t", time.time(), b"{}"),
                       [conversion("cs_1")], everywhere)
    found = await store.existing("stripe", [("purchase", "cs_1"), ("purchase", "cs_2"),
                                            ("refund", "cs_1")])
    assert found == {("purchase", "cs_1")}
    assert await store.existing("paddle", [("purchase", "cs_1")]) == set()


async def test_a_ledger_from_before_reconcile_gains_its_table_sqlite(tmp_path: Path) -> None:
    from relay.store.sqlite import SCHEMA_VERSION

    db = tmp_path / "v2.db"
    store = open_store(f"sqlite:///{db}")
    await store.open()
    await store.record(EventRecord("stripe", "evt_v2", "t", time.time(), b"{}"),
                       [conversion("ord_v2")], everywhere)
    await store.close()
    with sqlite3.connect(db) as conn:  # what the ledger looked like one version earlier
        conn.execute("DROP TABLE reconcile_state")
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION - 1,))
    store = open_store(f"sqlite:///{db}")
    await store.open()
    try:
        assert await store.existing("stripe", [("purchase", "ord_v2")])  # old rows kept
        assert await store.reconcile_lease("stripe", "w", 1.0, 2.0) is not None
    finally:
        await store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


@pytest.mark.postgres
async def test_a_ledger_from_before_reconcile_gains_its_table_postgres(pg_databases) -> None:  # noqa: F811
    import psycopg

    from relay.store.postgres import SCHEMA_VERSION

    name, url = pg_databases.create()
    try:
        store = open_store(url)
        await store.open()
        await store.record(EventRecord("stripe", "evt_v2", "t", time.time(), b"{}"),
                           [conversion("ord_v2")], everywhere)
        await store.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TABLE reconcile_state")
            conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION - 1,))
        store = open_store(url)
        await store.open()
        try:
            assert await store.existing("stripe", [("purchase", "ord_v2")])
            assert await store.reconcile_lease("stripe", "w", 1.0, 2.0) is not None
        finally:
            await store.close()
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    finally:
        pg_databases.drop(name)
