"""Helpers for the ad-platform destination tests: settings pointed at the stand-ins,
sample conversions carrying browser ids, and a real Worker run that lasts until a
condition holds (a retry delivered, say), not only until the first attempt."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from relay.conversion import Conversion, Customer, Item
from relay.destinations import Destination
from relay.destinations.ga4 import GA4
from relay.destinations.meta import Meta
from relay.settings import GA4Settings, MetaSettings, WorkerSettings
from relay.store import DeliveryRow, EventRecord
from relay.store.sqlite import SQLiteStore
from relay.worker import Worker

PIXEL = "1234567890"
META_TOKEN = "EAAsecret-meta-token-0123456789"
GA4_ID = "G-TEST12345"
GA4_SECRET = "ga4-secret-0123456789"
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/150 Safari/537.36"
QUICK = WorkerSettings(retry_base_seconds=0.2, retry_max_seconds=0.5, poll_seconds=0.1,
                       lease_seconds=10)


def meta(url: str, **kw: Any) -> Meta:
    return Meta(MetaSettings(**{"pixel_id": PIXEL, "access_token": META_TOKEN, "url": url,
                                "max_attempts": 5, **kw}))


def ga4(url: str, **kw: Any) -> GA4:
    return GA4(GA4Settings(**{"measurement_id": GA4_ID, "api_secret": GA4_SECRET, "url": url,
                              "max_attempts": 5, **kw}))


def browser_ids(**extra: str) -> dict[str, str]:
    ids = {
        "fbp": "fb.1.1596403881668.1116446470",
        "fbclid": "IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDGrc",
        "client_user_agent": UA,
        "client_ip_address": "203.0.113.7",
        "event_source_url": "https://shop.example/pricing",
        "ga_client_id": "1187654321.1700000000",
        "ga_session_id": "1700000100",
        "gclid": "Cj0KCQjw-example",
    }
    ids.update(extra)
    return ids


def conversion(kind: str = "purchase", **changes: Any) -> Conversion:
    """A Stripe Checkout purchase with the browser ids relay.js collects."""
    suffix = uuid.uuid4().hex
    conv = Conversion(
        source="stripe",
        kind=kind,
        order_key=f"cs_live_a1{suffix}{suffix[:24]}",
        occurred_at=datetime.now(UTC) - timedelta(minutes=3),
        currency="USD",
        total=Decimal("49.00"),
        subtotal=Decimal("45.00"),
        tax=Decimal("4.00"),
        shipping=Decimal("0"),
        customer=Customer(email="buyer@example.com", id="cus_TestCustomer01", name="Jo Buyer",
                          country="US", postal_code="94103"),
        attribution=browser_ids(),
        items=(Item(quantity=1, price=Decimal("45.00"), sku="price_1Plan", name="Plan"),),
        refs={"payment_intent": f"pi_3{suffix[:23]}", "customer": "cus_TestCustomer01"},
    )
    return conv.replace(**changes) if changes else conv


async def _run(db: Path, destinations: dict[str, Destination], conversions: Sequence[Conversion],
               done: Callable[[list[DeliveryRow]], bool], settings: WorkerSettings,
               timeout: float) -> list[DeliveryRow]:
    store = SQLiteStore(f"sqlite:///{db}")
    await store.open()
    try:
        await store.record(
            EventRecord("stripe", f"evt_{uuid.uuid4().hex}", "test", time.time(), b"{}"),
            conversions,
            lambda c: [n for n, d in destinations.items() if d.accepts(c)],
        )
        worker = Worker(store, destinations, settings)
        task = asyncio.create_task(worker.run())
        deadline = time.time() + timeout
        try:
            while True:
                rows = await store.deliveries(limit=1000)
                if rows and done(rows):
                    return rows
                if time.time() > deadline:
                    raise AssertionError(f"condition not reached: {rows}")
                await asyncio.sleep(0.02)
        finally:
            await worker.stop()
            await asyncio.wait_for(task, 15)
    finally:
        await store.close()


def run_until(db: Path, destinations: dict[str, Destination], conversions: Sequence[Conversion],
              done: Callable[[list[DeliveryRow]], bool], settings: WorkerSettings = QUICK,
              timeout: float = 20.0) -> list[DeliveryRow]:
    return asyncio.run(_run(db, destinations, conversions, done, settings, timeout))


def final(rows: list[DeliveryRow]) -> bool:
    return all(r.status != "pending" for r in rows)


def attempted(rows: list[DeliveryRow]) -> bool:
    return all(r.status != "pending" or r.last_error is not None for r in rows)
