"""SQLite-only behaviour: the group-commit writer thread survives failing writes."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path

import pytest

from relay.errors import StoreError
from relay.store import EventRecord
from relay.store.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.store.test_store import conversion, everywhere

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_disk_full_fails_the_batch_and_the_store_recovers(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'relay.db'}")
    await store.open()
    try:
        pages = await store._call(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0])
        await store._call(lambda conn: conn.execute(f"PRAGMA max_page_count = {pages}"))  # "disk full"
        big = EventRecord("stripe", "evt_big", "t", time.time(), b"x" * 200_000)
        small = EventRecord("stripe", "evt_small", "t", time.time(), b"{}")
        results = await asyncio.gather(
            store.record(big, [conversion("ord_big")], everywhere),
            store.record(small, [conversion("ord_small")], everywhere),
            return_exceptions=True,
        )
        assert isinstance(results[0], StoreError)  # answered, not hung
        # The small one either shared the failed transaction (then it failed too) or
        # committed on its own (then it is really in the file).
        with sqlite3.connect(tmp_path / "relay.db") as conn:
            stored = conn.execute("SELECT count(*) FROM events WHERE event_id = 'evt_small'").fetchone()[0]
        assert stored == (0 if isinstance(results[1], StoreError) else 1)
        await store._call(lambda conn: conn.execute("PRAGMA max_page_count = 1073741823"))
        recorded = await store.record(big, [conversion("ord_big")], everywhere)  # the retry lands
        assert not recorded.duplicate and recorded.deliveries == 2
        await store.ping()
    finally:
        await store.close()


async def test_close_while_a_batch_commits_answers_everyone_and_can_reopen(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'relay.db'}")
    await store.open()
    calls = [asyncio.ensure_future(store.record(
        EventRecord("stripe", f"evt_{i}", "t", time.time(), b"{}"), [conversion(f"ord_{i}")], everywhere))
        for i in range(50)]
    await asyncio.sleep(0)  # queued, batch starting
    closing = asyncio.ensure_future(store.close())
    await asyncio.sleep(0)
    closing.cancel()  # the closer gives up: the batch must still end cleanly
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
    assert all(not isinstance(r, BaseException) or isinstance(r, StoreError) for r in results)
    with contextlib.suppress(asyncio.CancelledError):
        await closing
    await asyncio.sleep(0.2)
    store2 = SQLiteStore(f"sqlite:///{tmp_path / 'relay.db'}")
    await store2.open()  # the write lock was not left behind
    try:
        recorded = await store2.record(EventRecord("stripe", "evt_after", "t", time.time(), b"{}"),
                                       [conversion("ord_after")], everywhere)
        assert not recorded.duplicate
        ok = [r for r in results if not isinstance(r, BaseException)]
        with sqlite3.connect(tmp_path / "relay.db") as conn:  # every success is really stored
            assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == len(ok) + 1
    finally:
        await store2.close()
    await store.open()  # and the first store can be opened again
    await store.ping()
    await store.close()


async def test_a_version_1_ledger_is_upgraded_in_place(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    store = SQLiteStore(f"sqlite:///{db}")
    await store.open()
    await store.record(EventRecord("stripe", "evt_v1", "t", time.time(), b"{}"), [conversion("ord_v1")], everywhere)
    await store.close()
    with sqlite3.connect(db) as conn:  # what a version 1 ledger looked like
        conn.execute("ALTER TABLE deliveries DROP COLUMN in_doubt")
        conn.execute("ALTER TABLE deliveries DROP COLUMN sent_attempt")
        conn.execute("UPDATE schema_version SET version = 1")
    store = SQLiteStore(f"sqlite:///{db}")
    await store.open()
    try:
        claims = await store.claim(["simmer", "impact"], 10, 30, time.time())
        assert len(claims) == 2 and not any(c.in_doubt for c in claims)  # the old rows still work
        await store.mark_sent(claims)
    finally:
        await store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


async def test_a_version_2_ledger_gets_the_destination_states_in_place(tmp_path: Path) -> None:
    """Schema 3 (destinations disabled by a 410) is added to an existing ledger, rows kept."""
    db = tmp_path / "relay.db"
    store = SQLiteStore(f"sqlite:///{db}")
    await store.open()
    await store.record(EventRecord("stripe", "evt_v2", "t", time.time(), b"{}"), [conversion("ord_v2")], everywhere)
    await store.close()
    with sqlite3.connect(db) as conn:  # what a version 2 ledger looked like
        conn.execute("DROP TABLE destination_states")
        conn.execute("UPDATE schema_version SET version = 2")
    store = SQLiteStore(f"sqlite:///{db}")
    await store.open()
    try:
        assert await store.disabled_destinations() == {}
        assert await store.disable_destination("webhook", "HTTP 410", "f1", 1000.0)
        assert list(await store.disabled_destinations()) == ["webhook"]
        assert len(await store.claim(["simmer", "impact"], 10, 30, time.time())) == 2  # old rows still work
    finally:
        await store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
