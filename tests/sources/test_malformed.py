"""Bodies that verify but cannot be read exactly: 400 with nothing stored, never a 500
(finding 15). Each is a real signed webhook posted through the app."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest

from tests.helpers import body_of, checkout_event, fixture, stripe_headers
from tests.sources.util import basic, dumps, ls_headers, paddle_headers

HUGE_TIMESTAMPS = [10**12, -(10**12), 2**62, -(2**62)]  # ValueError, OverflowError, OSError
BAD_AMOUNTS = ["Infinity", "-Infinity", "NaN", "sNaN", "1e999999999", "9" * 19]


def assert_rejected(app, r, *words: str) -> None:
    assert r.status_code == 400, r.text
    assert all(w in r.json()["error"] for w in words), r.json()
    assert app.count("events") == 0 and app.count("conversions") == 0


def paddle_txn(**totals) -> dict:
    data = fixture("paddle/transaction.completed.data-entity.paddle-python-sdk.json")
    data["details"]["totals"].update(totals)
    return {"event_id": "evt_bad", "event_type": "transaction.completed",
            "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"), "data": data}


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
def test_paddle_non_finite_or_huge_amount(app, amount):
    body = dumps(paddle_txn(total=amount))
    assert_rejected(app, app.post("paddle", body, paddle_headers(body)), "amount")


@pytest.mark.parametrize("occurred", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
def test_paddle_timestamp_out_of_utc_range(app, occurred):
    doc = paddle_txn()
    doc["occurred_at"] = occurred
    body = dumps(doc)
    assert_rejected(app, app.post("paddle", body, paddle_headers(body)), "occurred_at")


@pytest.mark.parametrize("stamp", HUGE_TIMESTAMPS)
def test_chargebee_huge_timestamps(app, stamp):
    doc = fixture("chargebee/payment_succeeded.json")
    doc["occurred_at"] = stamp
    body = dumps(doc)
    assert_rejected(app, app.post("chargebee", body, basic()), "occurred_at")
    paid = fixture("chargebee/payment_succeeded.json")
    paid["content"]["invoice"]["paid_at"] = stamp
    body = dumps(paid)
    assert_rejected(app, app.post("chargebee", body, basic()), "paid_at")


@pytest.mark.parametrize("amount", ["1e999999999", "sNaN", 10**18])
def test_chargebee_huge_amount(app, amount):
    doc = fixture("chargebee/payment_succeeded.json")
    doc["content"]["invoice"]["total"] = amount
    body = dumps(doc)
    assert_rejected(app, app.post("chargebee", body, basic()), "amount")


@pytest.mark.parametrize("stamp", HUGE_TIMESTAMPS)
def test_stripe_huge_timestamps(app, stamp):
    event = checkout_event(event_id="evt_huge")
    event["created"] = stamp
    body = body_of(event)
    assert_rejected(app, app.post("stripe", body, stripe_headers(body)), "created")
    invoice = copy.deepcopy(fixture("stripe/invoice.paid.api-2023-10-16.alimehndi.json"))
    invoice["data"]["object"].update(billing_reason="subscription_cycle",
                                     status_transitions={"paid_at": stamp})
    body = body_of(invoice)
    assert_rejected(app, app.post("stripe", body, stripe_headers(body)), "paid_at")


@pytest.mark.parametrize("amount", ["1e999999999", "sNaN", 10**18])
def test_stripe_huge_amount(app, amount):
    event = checkout_event(event_id="evt_huge_amount")
    event["data"]["object"]["amount_total"] = amount
    body = body_of(event)
    assert_rejected(app, app.post("stripe", body, stripe_headers(body)), "amount")


@pytest.mark.parametrize("amount", ["1e999999999", "sNaN", 10**18])
def test_lemonsqueezy_huge_amount(app, amount):
    doc = fixture("lemonsqueezy/order_created.pay-rails.json")
    doc["data"]["attributes"]["total"] = amount
    body = dumps(doc)
    assert_rejected(app, app.post("lemonsqueezy", body, ls_headers(body)), "amount")


def test_lemonsqueezy_timestamp_out_of_range(app):
    doc = fixture("lemonsqueezy/order_created.pay-rails.json")
    doc["data"]["attributes"]["created_at"] = "9999-12-31T23:59:59-14:00"
    body = dumps(doc)
    assert_rejected(app, app.post("lemonsqueezy", body, ls_headers(body)), "created_at")
