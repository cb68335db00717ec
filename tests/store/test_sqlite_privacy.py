"""SQLite and personal data: a new ledger file (and its -wal, -shm) is readable by its
owner only, and what retention and `relay forget` erase is gone from the bytes of the
file and of its WAL, not only from query results."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest

from relay.store import DELIVERED, Settlement
from relay.store.sqlite import SQLiteStore
from tests.store.ledger import DAY, body_for, buyer, stored_event

pytestmark = pytest.mark.anyio
EMAIL = "zebulon.quixotic@example.org"
NAME = "Zebulon Quixotic"
CUSTOMER = "cus_ZebQuix0001"
PHONE = "+44 20 7946 0958"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def file_bytes(db: Path) -> bytes:
    """The ledger as a disk image would show it: the file, its WAL and shared memory."""
    return b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists())


def traces(db: Path, kept: tuple[str, ...] = ()) -> list[str]:
    data = file_bytes(db)
    return [s for s in (EMAIL, NAME, CUSTOMER, PHONE) if s not in kept and s.encode() in data]


async def fill(store: SQLiteStore, days_ago: float = 0.0) -> None:
    """The buyer's event and conversion among many others' (so pages split and move)."""
    others = [
        store.record(stored_event(f"evt_o{i}", body_for(f"other{i}@example.com", extra='"pad": "' + "x" * 900 + '"'),
                                  days_ago=days_ago),
                     [buyer(f"ord_o{i}", email=f"other{i}@example.com", name="Other Person", days_ago=days_ago)],
                     lambda c: ["simmer"])
        for i in range(300)
    ]
    body = body_for(EMAIL, CUSTOMER, f'"name": "{NAME}", "phone": "{PHONE}", "pad": "{"y" * 5000}"')
    mine = store.record(stored_event("evt_zeb", body, days_ago=days_ago),
                        [buyer("ord_zeb", email=EMAIL, customer_id=CUSTOMER, name=NAME, phone=PHONE,
                               days_ago=days_ago)],
                        lambda c: ["simmer"])
    await asyncio.gather(*others[:150], mine, *others[150:])


async def test_forget_removes_the_bytes_from_the_file_and_the_wal(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    store = SQLiteStore(f"sqlite:///{db}")
    await store.open()
    try:
        await fill(store)
        assert set(traces(db)) == {EMAIL, NAME, CUSTOMER, PHONE}  # the test can see them
        forgotten = await store.forget(email=EMAIL, now=time.time())
        assert forgotten.conversions == 1 and forgotten.events == 1
        assert traces(db) == []
        assert (await store.record(stored_event("evt_after", b"{}"), [buyer("ord_after")], lambda c: [])).conversions
    finally:
        await store.close()
    assert traces(db) == []
    assert b"other7@example.com" in file_bytes(db)  # the others are still there


async def test_retention_then_compact_removes_the_bytes(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    store = SQLiteStore(f"sqlite:///{db}")
    await store.open()
    try:
        await fill(store, days_ago=40)
        for claim in await store.claim(["simmer"], 1000, 30, time.time()):
            await store.settle(claim, Settlement(DELIVERED, status_code=200), time.time())
        assert traces(db)
        now, cursor = time.time(), None
        while True:
            batch = await store.retain(now - 30 * DAY, now, cursor, 100)
            cursor = batch.cursor
            if batch.done:
                break
        await store.compact()
        # the customer id stays as the customer key (new-customer detection); nothing else
        assert traces(db, kept=(CUSTOMER,)) == []
        assert file_bytes(db).count(CUSTOMER.encode()) <= 2  # the key in its row and its index
        assert b"other7@example.com" not in file_bytes(db)
    finally:
        await store.close()


async def test_a_new_ledger_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask: files would be world-readable
    try:
        db = tmp_path / "sub" / "relay.db"
        store = SQLiteStore(f"sqlite:///{db}")
        await store.open()
        try:
            await store.record(stored_event("evt_1", b"{}"), [buyer("ord_1")], lambda c: ["simmer"])
            files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
            assert all(p.exists() for p in files)
            for path in files:
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        finally:
            await store.close()
        # an existing file keeps the mode its owner gave it
        os.chmod(db, 0o640)
        store = SQLiteStore(f"sqlite:///{db}")
        await store.open()
        await store.close()
        assert stat.S_IMODE(db.stat().st_mode) == 0o640
    finally:
        os.umask(old)
