"""An error inside relay while handling a delivery (building its request, a bug in a
destination) spends an attempt like any failure: it follows the retry policy, ends in the
dead letter after max_attempts with a reason a person can act on, never shows a secret,
and logs one line per attempt (no traceback above DEBUG). And a conversion whose
personal data was erased is never sent."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from relay.destinations import Skip
from relay.destinations.simmer import Simmer
from relay.settings import SimmerSettings, WorkerSettings
from relay.store import FAILED, EventRecord
from relay.store.sqlite import SQLiteStore
from relay.worker import Worker
from tests.emulators.simmer import SimmerEmulator
from tests.helpers import SIMMER_KEY, SIMMER_PROJECT
from tests.store.ledger import buyer

FAST = WorkerSettings(retry_base_seconds=0.05, retry_max_seconds=0.1, poll_seconds=0.1, lease_seconds=30)
PASTED = "simmer_sk_live_…"  # a key copied from docs with its ellipsis


def simmer_settings(url: str, key: str, max_attempts: int = 3) -> SimmerSettings:
    # model_construct: the key a user pasted, whatever `relay check` would say about it
    return SimmerSettings.model_construct(secret_key=SecretStr(key), project_id=SIMMER_PROJECT,
                                          url=url + "/api/conversion", max_attempts=max_attempts,
                                          rate_limit_per_minute=0)


async def drain(store: SQLiteStore, worker: Worker, until_status: str, within: float = 20.0) -> list:
    task = asyncio.create_task(worker.run())
    deadline = time.time() + within
    try:
        while True:
            rows = await store.deliveries(limit=100)
            if rows and all(r.status == until_status for r in rows):
                return rows
            assert time.time() < deadline, rows
            await asyncio.sleep(0.05)
    finally:
        await worker.stop()
        await asyncio.wait_for(task, 15)


def run_with(tmp_path: Path, dest, caplog, until: str = FAILED) -> tuple[list, list, list[logging.LogRecord]]:
    async def go() -> tuple[list, list]:
        store = SQLiteStore(f"sqlite:///{tmp_path / 'relay.db'}")
        await store.open()
        try:
            await store.record(EventRecord("stripe", f"evt_{uuid.uuid4().hex}", "t", time.time(), b"{}"),
                               [buyer("ord_1", days_ago=0.01)], lambda c: ["simmer"])
            rows = await drain(store, Worker(store, {"simmer": dest}, FAST), until)
            return rows, await store.attempts(rows[0].id)
        finally:
            await store.close()

    caplog.set_level(logging.DEBUG, logger="relay")
    rows, attempts = asyncio.run(go())
    lines = [r for r in caplog.records if r.name == "relay.worker" and r.levelno >= logging.WARNING]
    return rows, attempts, lines


def test_a_key_headers_cannot_carry_is_dead_lettered_with_a_readable_reason(tmp_path: Path, caplog):
    with SimmerEmulator(SIMMER_KEY, SIMMER_PROJECT) as simmer:
        rows, attempts, lines = run_with(tmp_path, Simmer(simmer_settings(simmer.url, PASTED)), caplog)
        assert simmer.requests == []  # nothing could be sent
    [row] = rows
    assert row.status == FAILED and row.attempts == 3  # the tries show, and it stopped
    assert row.last_error.startswith("gave up after 3 attempts: internal error: the secret key contains"
                                     " a character HTTP headers cannot carry ('…' U+2026)")
    assert "check RELAY_SIMMER__SECRET_KEY" in row.last_error
    assert [a.outcome for a in attempts] == ["error", "error", "error"]
    assert all("RELAY_SIMMER__SECRET_KEY" in a.detail for a in attempts)
    # one line per attempt, no traceback, no secret
    assert len(lines) == 3, [r.getMessage() for r in lines]
    assert [r.getMessage().split()[0] for r in lines] == ["retry", "retry", "failed"]
    assert all(r.exc_info is None for r in lines)
    everything = caplog.text + row.last_error + "".join(a.detail for a in attempts)
    assert "simmer_sk_live" not in everything and "'ascii' codec" not in row.last_error


class Broken(Simmer):
    """Simmer with a bug in its request building, whose message holds the key."""

    def build(self, conversion, now: datetime) -> httpx.Request | Skip:
        raise KeyError(f"no such field in {self.settings.secret_key.get_secret_value()}")


def test_any_error_in_a_destination_spends_attempts_and_hides_secrets(tmp_path: Path, caplog):
    with SimmerEmulator(SIMMER_KEY, SIMMER_PROJECT) as simmer:
        rows, attempts, lines = run_with(tmp_path, Broken(simmer_settings(simmer.url, SIMMER_KEY, 2)), caplog)
    [row] = rows
    assert (row.status, row.attempts, len(attempts), len(lines)) == (FAILED, 2, 2, 2)
    assert row.last_error.startswith("gave up after 2 attempts: internal error: KeyError:")
    assert SIMMER_KEY not in row.last_error and "********" in row.last_error
    assert SIMMER_KEY not in caplog.text


def test_the_same_delivery_goes_out_once_the_key_is_fixed(tmp_path: Path, caplog):
    """What a user does next: fix the variable, `relay retry` — and it is delivered."""
    with SimmerEmulator(SIMMER_KEY, SIMMER_PROJECT) as simmer:
        rows, _, _ = run_with(tmp_path, Simmer(simmer_settings(simmer.url, PASTED)), caplog)

        async def again() -> list:
            store = SQLiteStore(f"sqlite:///{tmp_path / 'relay.db'}")
            await store.open()
            try:
                assert await store.requeue([rows[0].id], now=time.time()) == 1
                fixed = Simmer(simmer_settings(simmer.url, SIMMER_KEY))
                return await drain(store, Worker(store, {"simmer": fixed}, FAST), "delivered")
            finally:
                await store.close()

        [row] = asyncio.run(again())
        assert len(simmer.accepted) == 1
    assert row.last_error is None  # delivered: the old error is in the history, not on the row


@pytest.mark.parametrize("erased", ["retention", "forget"])
def test_an_erased_conversion_is_never_sent(tmp_path: Path, erased: str):
    async def go() -> tuple[list, int]:
        store = SQLiteStore(f"sqlite:///{tmp_path / 'relay.db'}")
        await store.open()
        try:
            await store.record(EventRecord("stripe", "evt_1", "t", time.time(), b"{}"),
                               [buyer("ord_1", days_ago=0.01)], lambda c: ["simmer"])
            # erased while a delivery was about to go (a requeue racing retention)
            assert store._conn is not None
            store._conn.execute("UPDATE conversions SET erased_at = 1, erased_by = ?", (erased,))
            rows = await drain(store, Worker(store, {"simmer": Simmer(simmer_settings(simmer.url, SIMMER_KEY))},
                                             FAST), FAILED)
            return rows, len(simmer.requests)
        finally:
            await store.close()

    with SimmerEmulator(SIMMER_KEY, SIMMER_PROJECT) as simmer:
        [row], sent = asyncio.run(go())
    assert sent == 0
    assert row.last_error.startswith("not sent: the buyer's personal data was")
    assert ("relay forget" if erased == "forget" else "retention") in row.last_error
