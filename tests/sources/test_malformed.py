"""Bodies that verify but cannot be read exactly: quarantined (stored with the reason,
answered 200, never delivered), never a 500; bodies that are not a JSON object at all
stay a 400 with nothing stored. Each is a real signed webhook posted through the app."""

from __future__ import annotations

import copy
import hashlib
import sqlite3
from datetime import UTC, datetime

import pytest

from tests.helpers import body_of, checkout_event, fixture, stripe_headers
from tests.sources.util import basic, dumps, ls_headers, paddle_headers

HUGE_TIMESTAMPS = [10**12, -(10**12), 2**62, -(2**62)]  # ValueError, OverflowError, OSError
BAD_AMOUNTS = ["Infinity", "-Infinity", "NaN", "sNaN", "1e999999999", "9" * 19]


def stored(app) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(app.db) as conn:
        return conn.execute("SELECT event_id, status, reason FROM events ORDER BY id").fetchall()


def assert_quarantined(app, r, *words: str, event_id: str | None = None) -> dict:
    """200 quarantined with a reason naming the problem; stored as such; nothing else."""
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["status"] == "quarantined", answer
    assert all(w in answer["reason"] for w in words), answer
    if event_id is not None:
        assert answer["event_id"] == event_id
    assert (answer["event_id"], "quarantined", answer["reason"]) in stored(app)
    assert app.count("conversions") == 0 and app.count("deliveries") == 0
    return answer


def paddle_txn(**totals) -> dict:
    data = fixture("paddle/transaction.completed.data-entity.paddle-python-sdk.json")
    data["details"]["totals"].update(totals)
    return {"event_id": "evt_bad", "event_type": "transaction.completed",
            "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"), "data": data}


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
def test_paddle_non_finite_or_huge_amount(app, amount):
    body = dumps(paddle_txn(total=amount))
    assert_quarantined(app, app.post("paddle", body, paddle_headers(body)), "amount", event_id="evt_bad")


@pytest.mark.parametrize("occurred", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
def test_paddle_timestamp_out_of_utc_range(app, occurred):
    doc = paddle_txn()
    doc["occurred_at"] = occurred
    body = dumps(doc)
    assert_quarantined(app, app.post("paddle", body, paddle_headers(body)), "occurred_at")


@pytest.mark.parametrize("stamp", HUGE_TIMESTAMPS)
def test_chargebee_huge_timestamps(make_app, stamp):
    app = make_app()
    doc = fixture("chargebee/payment_succeeded.json")
    doc["occurred_at"] = stamp
    body = dumps(doc)
    assert_quarantined(app, app.post("chargebee", body, basic()), "occurred_at", event_id=doc["id"])
    app = make_app()
    paid = fixture("chargebee/payment_succeeded.json")
    paid["content"]["invoice"]["paid_at"] = stamp
    body = dumps(paid)
    assert_quarantined(app, app.post("chargebee", body, basic()), "paid_at")


@pytest.mark.parametrize("amount", ["1e999999999", "sNaN", 10**18])
def test_chargebee_huge_amount(app, amount):
    doc = fixture("chargebee/payment_succeeded.json")
    doc["content"]["invoice"]["total"] = amount
    body = dumps(doc)
    assert_quarantined(app, app.post("chargebee", body, basic()), "amount")


@pytest.mark.parametrize("stamp", HUGE_TIMESTAMPS)
def test_stripe_huge_timestamps(make_app, stamp):
    app = make_app()
    event = checkout_event(event_id="evt_huge")
    event["created"] = stamp
    body = body_of(event)
    assert_quarantined(app, app.post("stripe", body, stripe_headers(body)), "created")
    app = make_app()
    invoice = copy.deepcopy(fixture("stripe/invoice.paid.api-2023-10-16.alimehndi.json"))
    invoice["data"]["object"].update(billing_reason="subscription_cycle",
                                     status_transitions={"paid_at": stamp})
    body = body_of(invoice)
    assert_quarantined(app, app.post("stripe", body, stripe_headers(body)), "paid_at",
                       event_id=invoice["id"])


@pytest.mark.parametrize("amount", ["1e999999999", "sNaN", 10**18])
def test_stripe_huge_amount(app, amount):
    event = checkout_event(event_id="evt_huge_amount")
    event["data"]["object"]["amount_total"] = amount
    body = body_of(event)
    assert_quarantined(app, app.post("stripe", body, stripe_headers(body)), "amount",
                       event_id="evt_huge_amount")


@pytest.mark.parametrize("amount", ["1e999999999", "sNaN", 10**18])
def test_lemonsqueezy_huge_amount(app, amount):
    doc = fixture("lemonsqueezy/order_created.pay-rails.json")
    doc["data"]["attributes"]["total"] = amount
    body = dumps(doc)
    assert_quarantined(app, app.post("lemonsqueezy", body, ls_headers(body)), "amount")


def test_lemonsqueezy_timestamp_out_of_range(app):
    doc = fixture("lemonsqueezy/order_created.pay-rails.json")
    doc["data"]["attributes"]["created_at"] = "9999-12-31T23:59:59-14:00"
    body = dumps(doc)
    assert_quarantined(app, app.post("lemonsqueezy", body, ls_headers(body)), "created_at")


# ------------------------------------------------ the four causes, in every source


def _stripe(change):
    event = checkout_event(event_id="evt_q")
    change(event, event["data"]["object"])
    body = body_of(event)
    return "stripe", body, stripe_headers(body)


def _paddle(change):
    doc = paddle_txn()
    change(doc, doc["data"]["details"]["totals"])
    body = dumps(doc)
    return "paddle", body, paddle_headers(body)


def _lemonsqueezy(change):
    doc = fixture("lemonsqueezy/order_created.pay-rails.json")
    change(doc, doc["data"]["attributes"])
    body = dumps(doc)
    return "lemonsqueezy", body, ls_headers(body)


def _chargebee(change):
    doc = fixture("chargebee/payment_succeeded.json")
    change(doc, doc["content"]["invoice"])
    body = dumps(doc)
    return "chargebee", body, basic()


def _set(key, value):
    return lambda doc, obj: obj.__setitem__(key, value)


def _drop(key):
    return lambda doc, obj: obj.pop(key)


CAUSES = {
    # source: (unknown currency, a shape the parser does not know, missing amount, negative total)
    "stripe": (_stripe, _set("currency", "xyz"), lambda doc, obj: doc.pop("data"),
               _drop("amount_total"), _set("amount_total", -4900)),
    "paddle": (_paddle, _set("currency_code", "XYZ"), lambda doc, obj: doc.update(data=[1]),
               _drop("total"), _set("total", "-4900")),
    "lemonsqueezy": (_lemonsqueezy, _set("currency", "XYZ"), lambda doc, obj: doc.pop("data"),
                     _drop("total"), _set("total", -4900)),
    "chargebee": (_chargebee, _set("currency_code", "XYZ"), lambda doc, obj: doc.pop("content"),
                  _drop("total"), _set("total", -4900)),
}


@pytest.mark.parametrize("source", sorted(CAUSES))
@pytest.mark.parametrize(("cause", "words"), [
    (1, ("currency",)), (2, ()), (3, ("total",)), (4, ("negative",))])
def test_each_source_quarantines_each_cause(make_app, source, cause, words):
    app = make_app()
    build, *changes = CAUSES[source]
    name, body, headers = build(changes[cause - 1])
    answer = assert_quarantined(app, app.post(name, body, headers), *words)
    assert answer["reason"]  # a reason a person can act on, never empty
    again = app.post(name, body, headers)  # the processor's retry of the same bytes
    assert again.json() == {"status": "duplicate", "event_id": answer["event_id"]}
    assert len(stored(app)) == 1


def test_a_body_without_a_readable_id_gets_a_stable_synthetic_one(app):
    body = b'{"object": "event", "note": "no id, no type"}'
    answer = assert_quarantined(app, app.post("stripe", body, stripe_headers(body)), "Stripe")
    assert answer["event_id"] == "sha256:" + hashlib.sha256(body).hexdigest()
    assert app.post("stripe", body, stripe_headers(body)).json()["status"] == "duplicate"
    assert len(stored(app)) == 1


@pytest.mark.parametrize("body", [
    b'{"id": "evt_1", "object": "event"',  # not JSON
    b'[{"id": "evt_1"}]',  # an array
    b'"just a string"',
    b'{"a":' * 2000 + b"1" + b"}" * 2000,  # nesting beyond the parser's limit
])
def test_a_body_that_is_not_a_json_object_is_400_and_stored_nowhere(app, body):
    r = app.post("stripe", body, stripe_headers(body))
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    assert app.count("events") == 0


def test_quarantined_webhooks_are_counted_on_metrics(app):
    body = body_of(checkout_event(currency="xyz"))
    assert app.post("stripe", body, stripe_headers(body)).json()["status"] == "quarantined"
    metrics = app.client.get("/metrics").text
    assert 'relay_webhooks_total{outcome="quarantined",source="stripe"} 1.0' in metrics
