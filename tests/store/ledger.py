"""Helpers for the store tests that look at the ledger itself: raw SQL on either backend
(what an operator's `sqlite3`/`psql` would show) and conversions carrying a buyer."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from relay.conversion import Conversion, Customer
from relay.store import EventRecord

DAY = 86400.0


def raw(store_url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the store's database with its own connection ('?' marks)."""
    if store_url.startswith("sqlite:"):
        path = store_url[len("sqlite:///"):]
        with sqlite3.connect(path) as conn:
            return conn.execute(query, params).fetchall()
    import psycopg

    with psycopg.connect(store_url, autocommit=True) as conn:
        cur = conn.execute(query.replace("?", "%s").encode(), params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def real_counts(store_url: str) -> dict[tuple[str, str], int]:
    """What `stats()["by_status"]` must say, counted the slow way."""
    return {
        (dest, status): int(n)
        for dest, status, n in raw(
            store_url, "SELECT destination, status, count(*) FROM deliveries GROUP BY destination, status"
        )
    }


def real_oldest_age(store_url: str, now: float) -> float:
    oldest = raw(store_url, "SELECT min(created_at) FROM deliveries WHERE status = 'pending'")[0][0]
    return 0.0 if oldest is None else max(0.0, now - oldest)


def buyer(order: str, *, email: str | None = "ann.buyer@example.com", customer_id: str | None = None,
          days_ago: float = 0.0, kind: str = "purchase", name: str | None = "Ann Buyer",
          phone: str = "+33 6 12 34 56 78") -> Conversion:
    return Conversion(
        source="stripe", kind=kind, order_key=order,
        occurred_at=datetime.now(UTC) - timedelta(days=days_ago),
        currency="EUR", total=Decimal("49.00"),
        customer=Customer(email=email, id=customer_id, name=name, phone=phone,
                          city="Lyon", country="FR", postal_code="69001"),
        attribution={"irclickid": f"click-{order}"},
        metadata={"note": f"gift for {name}"},
        refs={"payment_intent": f"pi_{order}", **({"customer": customer_id} if customer_id else {})},
    )


def body_for(email: str | None, customer_id: str | None = None, extra: str = "") -> bytes:
    parts = [f'"email": "{email}"' if email else '"email": null']
    if customer_id:
        parts.append(f'"customer": "{customer_id}"')
    if extra:
        parts.append(extra)
    return ("{" + ", ".join(parts) + "}").encode()


def stored_event(event_id: str, body: bytes, days_ago: float = 0.0) -> EventRecord:
    return EventRecord("stripe", event_id, "checkout.session.completed", time.time() - days_ago * DAY, body)
