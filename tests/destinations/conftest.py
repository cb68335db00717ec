"""Shared fixtures for destination tests: emulators, sample conversions, an in-process worker run."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import tests.helpers as helpers
from relay.conversion import Conversion, Customer, Item
from relay.destinations import Destination
from relay.settings import WorkerSettings
from relay.store import DeliveryRow, EventRecord
from relay.store.sqlite import SQLiteStore
from relay.worker import Worker
from tests.emulators.base import Emulator
from tests.emulators.converge import ConvergeEmulator
from tests.emulators.pagent import PagentEmulator
from tests.emulators.topmail import TopmailEmulator
from tests.emulators.webhook import WebhookReceiver

# The shared fixtures live next to the main checkout; a worktree sits one level deeper.
if not helpers.FIXTURES.is_dir():
    for parent in helpers.REPO.parents:
        if (parent / "shared" / "fixtures").is_dir():
            helpers.SHARED = parent / "shared"
            helpers.FIXTURES = helpers.SHARED / "fixtures"
            break

PAGENT_KEY = "pagent-api-key-0123"
TOPMAIL_KEY = "tm_test_0123456789abcdef"
CONVERGE_PATH = "/api/webhooks/src_9f8e7d6c"
CONVERGE_TOKEN = "cvg-token-abc"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CAMPAIGN = "3f2b8c1e-7d4a-4e2b-9c1a-0a1b2c3d4e5f"


# One server per stand-in for the whole session (starting uvicorn costs ~0.2 s); each
# test gets it reset, so no request, fault, delay or recorded conversion leaks from one
# test into the next.


@pytest.fixture(scope="session")
def pagent_server() -> Iterator[PagentEmulator]:
    with PagentEmulator(PAGENT_KEY) as emu:
        yield emu  # type: ignore[misc]


@pytest.fixture(scope="session")
def topmail_server() -> Iterator[TopmailEmulator]:
    with TopmailEmulator(TOPMAIL_KEY) as emu:
        yield emu  # type: ignore[misc]


@pytest.fixture(scope="session")
def converge_server() -> Iterator[ConvergeEmulator]:
    with ConvergeEmulator(CONVERGE_PATH, CONVERGE_TOKEN) as emu:
        yield emu  # type: ignore[misc]


@pytest.fixture(scope="session")
def webhook_server() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(WEBHOOK_SECRET) as emu:
        yield emu  # type: ignore[misc]


def _fresh(emu: Emulator) -> Iterator[Emulator]:
    emu.reset()
    yield emu
    emu.reset()


@pytest.fixture
def pagent_emu(pagent_server: PagentEmulator) -> Iterator[PagentEmulator]:
    yield from _fresh(pagent_server)  # type: ignore[misc]


@pytest.fixture
def topmail_emu(topmail_server: TopmailEmulator) -> Iterator[TopmailEmulator]:
    yield from _fresh(topmail_server)  # type: ignore[misc]


@pytest.fixture
def converge_emu(converge_server: ConvergeEmulator) -> Iterator[ConvergeEmulator]:
    yield from _fresh(converge_server)  # type: ignore[misc]


@pytest.fixture
def webhook_emu(webhook_server: WebhookReceiver) -> Iterator[WebhookReceiver]:
    yield from _fresh(webhook_server)  # type: ignore[misc]


def sample(kind: str = "purchase", **changes: Any) -> Conversion:
    """A fully attributed conversion, unique order key, ready for every destination."""
    conv = Conversion(
        source="stripe",
        kind=kind,
        order_key=f"cs_live_a1{uuid.uuid4().hex}{uuid.uuid4().hex[:24]}",
        occurred_at=datetime.now(UTC) - timedelta(minutes=3),
        currency="USD",
        total=Decimal("49.00"),
        subtotal=Decimal("45.00"),
        tax=Decimal("4.00"),
        shipping=Decimal("0"),
        customer=Customer(email="buyer@example.com", id="cus_TestCustomer01", name="Jo Buyer",
                          country="US"),
        attribution={
            "simmer_anonymous_id": "anon-1",
            "irclickid": "click-1",
            "pagent_session_id": "sess-1",
            "pagent_user_id": "user-1",
            "pagent_conversion_id": "goal-uuid-1",
            "pagent_visit_id": "visit-1",
            "topmail_campaign_id": CAMPAIGN,
        },
        items=(Item(quantity=1, price=Decimal("45.00"), sku="SKU-1", name="Plan"),),
        refs={"payment_intent": "pi_3Test"},
    )
    return conv.replace(**changes) if changes else conv


FAST = WorkerSettings(retry_base_seconds=30, retry_max_seconds=60, poll_seconds=0.2, lease_seconds=30)


def settled(row: DeliveryRow) -> bool:
    return row.status != "pending" or row.last_error is not None or row.last_status_code is not None


async def run_worker(
    db: Path,
    destinations: dict[str, Destination],
    conversions: Sequence[Conversion],
    worker_settings: WorkerSettings = FAST,
    timeout: float = 60.0,  # a wait for the event, not a bound: a loaded machine is slow
) -> list[DeliveryRow]:
    """Record the conversions, run a real Worker until each delivery settled once, return rows."""
    store = SQLiteStore(f"sqlite:///{db}")
    await store.open()
    try:
        await store.record(
            EventRecord("stripe", f"evt_{uuid.uuid4().hex}", "test", time.time(), b"{}"),
            conversions,
            lambda c: [n for n, d in destinations.items() if d.accepts(c)],
        )
        worker = Worker(store, destinations, worker_settings)
        task = asyncio.create_task(worker.run())
        deadline = time.time() + timeout
        try:
            while True:
                rows = await store.deliveries(limit=1000)
                if rows and all(settled(r) for r in rows):
                    return rows
                if time.time() > deadline:
                    raise AssertionError(f"deliveries did not settle: {rows}")
                await asyncio.sleep(0.02)
        finally:
            await worker.stop()
            await asyncio.wait_for(task, 15)
    finally:
        await store.close()


def deliver(db: Path, destinations: dict[str, Destination], conversions: Sequence[Conversion],
            **kw: Any) -> list[DeliveryRow]:
    return asyncio.run(run_worker(db, destinations, conversions, **kw))


class WorkerRun:
    """A real Worker on a real SQLite ledger, driven step by step from a test's event loop:

        async with WorkerRun(db, {"converge": dest}, settings) as run:
            await run.record(sample())
            [row] = await run.until(lambda rows: rows[0].status == "failed", "dead letter")
    """

    def __init__(self, db: Path, destinations: dict[str, Destination],
                 worker_settings: WorkerSettings = FAST) -> None:
        self.store = SQLiteStore(f"sqlite:///{db}")
        self.destinations = destinations
        self.settings = worker_settings
        self.worker: Worker | None = None
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WorkerRun:
        await self.store.open()
        self.start()
        return self

    def start(self) -> None:
        self.worker = Worker(self.store, self.destinations, self.settings)
        self.task = asyncio.create_task(self.worker.run())

    async def stop(self) -> float:
        """Stop the worker as SIGTERM does; the seconds it took to return."""
        assert self.worker is not None and self.task is not None
        started = time.monotonic()
        await self.worker.stop()
        await asyncio.wait_for(self.task, 60)
        self.worker = self.task = None
        return time.monotonic() - started

    async def __aexit__(self, *exc: Any) -> None:
        try:
            if self.worker is not None:
                await self.stop()
        finally:
            await self.store.close()

    async def record(self, *conversions: Conversion, received_at: float | None = None) -> None:
        await self.store.record(
            EventRecord("stripe", f"evt_{uuid.uuid4().hex}", "test",
                        time.time() if received_at is None else received_at, b"{}"),
            conversions, lambda c: [n for n, d in self.destinations.items() if d.accepts(c)])
        if self.worker is not None:
            self.worker.wake()

    async def rows(self) -> list[DeliveryRow]:
        return sorted(await self.store.deliveries(limit=1000), key=lambda r: r.id)

    async def until(self, predicate: Any, message: str, timeout: float = 60.0) -> list[DeliveryRow]:
        """Wait until `predicate(rows)` holds (rows oldest first); the rows then."""
        deadline = time.time() + timeout
        while True:
            rows = await self.rows()
            if rows and predicate(rows):
                return rows
            if time.time() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {message}: {rows}")
            await asyncio.sleep(0.02)
