"""A delivery's last error is the error of its current state: once delivered, the error
of an earlier failed attempt is gone from the row (`relay deliveries`) and stays in its
attempt history (`relay deliveries --id N`)."""

from __future__ import annotations

import time

import pytest

from relay.store import DELIVERED, PENDING, Attempt, Settlement, Store
from tests.store.ledger import buyer, stored_event

pytestmark = pytest.mark.anyio


async def test_a_delivered_delivery_shows_no_earlier_error(store: Store) -> None:
    now = time.time() + 1
    await store.record(stored_event("evt_1", b"{}"), [buyer("ord_1")], lambda c: ["simmer"])
    [first] = await store.claim(["simmer"], 1, 30, now)
    await store.settle(first, Settlement(PENDING, next_attempt_at=now, status_code=502, error="HTTP 502: bad gateway",
                                         attempt=Attempt(now, 3.0, "retry", 502, "HTTP 502: bad gateway")), now)
    [row] = await store.deliveries()
    assert row.last_error == "HTTP 502: bad gateway"  # while it waits, the reason shows
    [second] = await store.claim(["simmer"], 1, 30, now)
    await store.settle(second, Settlement(DELIVERED, status_code=200,
                                          attempt=Attempt(now, 2.0, "delivered", 200, "ok")), now)
    [row] = await store.deliveries()
    assert (row.status, row.last_status_code, row.last_error) == (DELIVERED, 200, None)
    history = await store.attempts(row.id)
    assert [(a.outcome, a.status_code, a.detail) for a in history] == [
        ("retry", 502, "HTTP 502: bad gateway"), ("delivered", 200, "ok")]
