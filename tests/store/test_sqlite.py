"""SQLite-only behaviour: the group-commit writer thread survives failing writes."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from relay.errors import StoreError
from relay.store import EventRecord
from relay.store.sqlite import SQLiteStore
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
