"""No console page reads more of the ledger as the ledger grows.

SQLite counts the virtual-machine instructions a connection runs
(`set_progress_handler`), whatever the machine's load: each page is loaded on a ledger
of 2,000 conversions and again on one of 20,000, and its count must stay about the
same (a page that scanned a table would run ten times as many). The overview's own
reads are measured the same way; `store.stats()`, which it also calls, is the
`/metrics` figure another change makes O(1), and is measured apart.
"""

from __future__ import annotations

import re
import sqlite3
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from relay.conversion import Conversion, Customer
from relay.store import email_hash
from relay.tally import hour_of
from tests.console.conftest import Console
from tests.helpers import SIMMER_KEY

DESTINATIONS = ("simmer", "impact")
STEP = 1  # instructions per progress-handler call: every one


SPACING = 10.0  # seconds between webhooks: 40,000 of them cover four and a half days


def grow(db: Path, count: int, start: float) -> None:
    """`count` more webhooks as the webhook path records them (event, conversion with
    its email hash, one delivery per destination: mostly delivered, some failed,
    skipped or pending, each with an attempt), SPACING apart from `start`, one in ten
    a quarantined or ignored event."""
    with sqlite3.connect(db) as conn:
        base = conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
        events, conversions, deliveries, attempts = [], [], [], []
        next_delivery = conn.execute("SELECT coalesce(max(id), 0) FROM deliveries").fetchone()[0]
        for n in range(count):
            row = base + n + 1
            at = start + n * SPACING
            status = "accepted" if n % 10 else ("quarantined" if n % 20 else "ignored")
            events.append((row, "stripe", f"evt_{uuid.uuid4().hex}", "checkout.session.completed",
                           at, b'{"id": "evt"}', status, None if status == "accepted" else "why"))
            if status != "accepted":
                continue
            email = f"buyer{row}@example.com"
            conversion = Conversion(source="stripe", kind="purchase", order_key=f"cs_{row}",
                                    occurred_at=datetime.fromtimestamp(at, UTC), currency="USD",
                                    total=Decimal("49.00"), customer=Customer(email=email))
            conversions.append((row, "stripe", "purchase", f"cs_{row}", row, None, at, at,
                                conversion.to_json(), email_hash(email)))
            for destination in DESTINATIONS:
                next_delivery += 1
                state = ("failed" if n % 7 == 0 else "skipped" if n % 11 == 0
                         else "pending" if n % 13 == 0 else "delivered")
                deliveries.append((next_delivery, row, destination, state, 1, at, at, at,
                                   400 if state == "failed" else 200,
                                   "HTTP 400: refused" if state == "failed" else None))
                attempts.append((next_delivery, 1, at, 10.0, state, 200, "ok"))
        conn.executemany("INSERT INTO events (id, source, event_id, event_type, received_at, body,"
                         " status, reason) VALUES (?,?,?,?,?,?,?,?)", events)
        conn.executemany("INSERT INTO conversions (id, source, kind, order_key, event_row,"
                         " customer_key, occurred_at, created_at, data, email_hash)"
                         " VALUES (?,?,?,?,?,?,?,?,?,?)", conversions)
        conn.executemany("INSERT INTO deliveries (id, conversion_id, destination, status, attempts,"
                         " next_attempt_at, created_at, updated_at, last_status_code, last_error)"
                         " VALUES (?,?,?,?,?,?,?,?,?,?)", deliveries)
        conn.executemany("INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms,"
                         " outcome, status_code, detail) VALUES (?,?,?,?,?,?,?)", attempts)


def counter(console: Console) -> Callable[[Callable[[], object]], int]:
    conn = console.client.app.state.relay.store._conn  # type: ignore[union-attr]
    steps = [0]

    def tick() -> int:
        steps[0] += STEP
        return 0

    conn.set_progress_handler(tick, STEP)

    def measure(action: Callable[[], object]) -> int:
        steps[0] = 0
        action()
        return steps[0]

    return measure


def pages(middle_row: int, first_day: float) -> list[str]:
    day = time.strftime("%Y-%m-%d", time.gmtime(first_day))
    return [
        "/console/deliveries",
        "/console/deliveries?status=failed&destination=simmer",
        "/console/deliveries?status=any",
        f"/console/deliveries?status=skipped&destination=impact&before={first_day + 9000!r}:3000",
        f"/console/deliveries?status=any&since={day}&until={day}",
        f"/console/search?q=buyer{middle_row}@example.com",
        f"/console/search?q=cs_{middle_row}",
        "/console/search?q=evt_nothing",
        f"/console/conversions/{middle_row}",
        "/console/events",
        "/console/events?status=ignored",
        f"/console/events/{middle_row}",
    ]


def test_pages_cost_the_same_on_a_ten_times_larger_ledger(make_console) -> None:
    console: Console = make_console(None, run_worker=False, simmer={
        "secret_key": SIMMER_KEY, "project_id": "p", "url": "http://127.0.0.1:9/api/conversion"})
    assert console.sign_in().status_code == 303
    first_day = (time.time() // 86400 - 6) * 86400  # a ledger of the last days
    start = first_day + 3600
    grow(console.db, 2_000, start)
    measure = counter(console)
    row = 1_002  # a conversion (and its event) in both ledgers
    urls = pages(row, first_day)

    def load(url: str) -> Callable[[], object]:
        def get() -> None:
            page = console.client.get(url)
            assert page.status_code == 200, (url, page.text)
        return get

    small = {url: measure(load(url)) for url in urls}
    grow(console.db, 18_000, start + 2_000 * SPACING)
    large = {url: measure(load(url)) for url in urls}
    for url in urls:
        assert large[url] <= small[url] * 1.25 + 500, (url, small[url], large[url])
    # the date filter found rows in the middle of the ledger, by the id range
    dated = console.client.get(urls[4]).text
    assert len(re.findall(r'data-label="ID"', dated)) == 50

    store = console.client.app.state.relay.store  # type: ignore[union-attr]
    portal = console.client.portal  # type: ignore[union-attr]
    reads = {
        "tallies": lambda: portal.call(store.tallies, hour_of(time.time()) - 23 * 3600),
        "errors": lambda: portal.call(store.destination_errors),
        "oldest": lambda: portal.call(store.oldest_pending, DESTINATIONS),
    }
    before = {name: measure(read) for name, read in reads.items()}
    grow(console.db, 20_000, start + 20_000 * SPACING)
    for name, read in reads.items():
        after = measure(read)
        assert after <= before[name] * 1.25 + 500, (name, before[name], after)
