"""Worker edge cases around a destination without an idempotency key (pagent): an answered
request is never sent again, and the one-by-one fallback of a refused batch keeps the
rate limit."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from relay.destinations.pagent import Pagent
from relay.settings import PagentSettings, WorkerSettings
from relay.store import EventRecord
from relay.store.sqlite import SQLiteStore
from relay.worker import Worker
from tests.destinations.conftest import FAST, PAGENT_KEY, deliver, pagent_emu, sample  # noqa: F401
from tests.helpers import wait_async


def test_a_2xx_with_an_unreadable_body_is_delivered_once(tmp_path: Path, pagent_emu):  # noqa: F811
    pagent_emu.requests.clear()
    dest = Pagent(PagentSettings(api_key=PAGENT_KEY, url=pagent_emu.url))
    # 200, but the body claims gzip and is not: the status is the answer.
    pagent_emu.fail_next(1, 200, {"Content-Encoding": "gzip"}, {"accepted": 1})
    rows = deliver(tmp_path / "a.db", {"pagent": dest}, [sample()])  # returns once the worker stopped
    assert [r.status for r in rows] == ["delivered"]
    assert len(pagent_emu.requests) == 1


def test_one_by_one_fallback_takes_a_rate_slot_per_request(tmp_path: Path, pagent_emu):  # noqa: F811
    pagent_emu.requests.clear()
    dest = Pagent(PagentSettings(api_key=PAGENT_KEY, url=pagent_emu.url, rate_limit_per_minute=2))
    pagent_emu.fail_next(1, 400, body={"error": "events[3]: invalid"})

    async def run() -> list:
        store = SQLiteStore(f"sqlite:///{tmp_path / 'b.db'}")
        await store.open()
        try:
            await store.record(EventRecord("stripe", f"evt_{uuid.uuid4().hex}", "t", time.time(), b"{}"),
                               [sample() for _ in range(4)], lambda c: ["pagent"])
            worker = Worker(store, {"pagent": dest}, WorkerSettings(
                retry_base_seconds=30, poll_seconds=0.2, lease_seconds=30))
            task = asyncio.create_task(worker.run())

            async def deferred() -> bool:
                # the bulk request answered, one single sent, the rest waiting for a slot
                # (~60 s away at 2 per minute): nothing else can happen for a long while
                rows = await store.deliveries(limit=10)
                later = [r for r in rows if r.status == "pending" and r.next_attempt_at > time.time() + 30]
                return len(later) == 3 and any(r.status == "delivered" for r in rows)

            await wait_async(deferred, message="one delivered, three deferred")
            await worker.stop()
            await asyncio.wait_for(task, 15)
            return await store.deliveries(limit=10)
        finally:
            await store.close()

    rows = asyncio.run(run())
    paths = [s.path for s in pagent_emu.requests]
    assert paths == ["/v2/conversions/bulk", "/v2/conversions"]  # 2 per minute: bulk + one single
    assert sorted(r.status for r in rows) == ["delivered", "pending", "pending", "pending"]
    assert all(r.attempts == 0 for r in rows if r.status == "pending")  # waiting is not an attempt


def test_pagent_claim_is_resent_only_when_its_dead_worker_had_not_sent_it(tmp_path: Path, pagent_emu):  # noqa: F811
    pagent_emu.requests.clear()
    dest = Pagent(PagentSettings(api_key=PAGENT_KEY, url=pagent_emu.url))

    async def run() -> list:
        store = SQLiteStore(f"sqlite:///{tmp_path / 'c.db'}")
        await store.open()
        try:
            recorded_at = time.time() - 60
            await store.record(EventRecord("stripe", f"evt_{uuid.uuid4().hex}", "t", recorded_at, b"{}"),
                               [sample(), sample()], lambda c: ["pagent"])
            # A worker claimed both 30 s ago with a 10 s lease, sent the first one only, and
            # died: both leases have run out by now.
            dead = await store.claim(["pagent"], 10, 10, time.time() - 30)
            await store.mark_sent(dead[:1])
            worker = Worker(store, {"pagent": dest}, WorkerSettings(
                retry_base_seconds=30, poll_seconds=0.2, lease_seconds=30))
            task = asyncio.create_task(worker.run())

            async def both_settled() -> bool:
                return all(r.status != "pending" for r in await store.deliveries(limit=10))

            await wait_async(both_settled, message="both settled")
            await worker.stop()
            await asyncio.wait_for(task, 15)
            rows = {r.order_key: r for r in await store.deliveries(limit=10)}
            return [rows[c.conversion.order_key] for c in dead]
        finally:
            await store.close()

    sent_before, never_sent = asyncio.run(run())
    assert sent_before.status == "failed" and sent_before.last_error.startswith("ambiguous")
    assert never_sent.status == "delivered"
    assert len(pagent_emu.requests) == 1  # only the one that had not gone out
