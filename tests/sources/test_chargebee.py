from __future__ import annotations

import base64
import copy
from decimal import Decimal

import pytest

from tests.helpers import fixture, fixture_bytes
from tests.sources.util import basic, dumps

SUCCEEDED = "chargebee/payment_succeeded.json"


def post(app, doc: dict | bytes, headers: dict | None = None):
    body = doc if isinstance(doc, bytes) else dumps(doc)
    return app.post("chargebee", body, basic() if headers is None else headers)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing HTTP Basic credentials"),
        ({"Authorization": "Bearer abc"}, "Authorization is not HTTP Basic"),
        ({"Authorization": "Basic !!!"}, "Authorization Basic value is not base64"),
        (basic(password="wrong"), "wrong HTTP Basic credentials"),
        (basic(user="other"), "wrong HTTP Basic credentials"),
        ({"Authorization": "Basic " + base64.b64encode(b"relay-hook").decode()},
         "wrong HTTP Basic credentials"),
    ],
)
def test_auth_failures_are_401_and_nothing_stored(app, headers, message):
    r = post(app, fixture_bytes(SUCCEEDED), headers)
    assert r.status_code == 401 and r.json() == {"error": message}
    assert r.headers["www-authenticate"].startswith("Basic")
    assert "cb-hook-password-1" not in r.text
    assert app.count("events") == 0 and app.count("conversions") == 0


def test_payment_succeeded_first_invoice_is_purchase(app):
    r = post(app, fixture_bytes(SUCCEEDED))
    assert r.status_code == 200, r.text
    assert r.json()["conversions"] == [
        {"kind": "purchase", "order_key": "invoice-22", "total": "4500.00", "currency": "USD"}]
    assert post(app, fixture_bytes(SUCCEEDED)).json()["status"] == "duplicate"  # same ev_ id
    [conv] = app.conversions()
    assert conv.customer.email == "taxes@test.com" and conv.customer.name == "Tax Customer"
    assert [(i.quantity, i.subtotal) for i in conv.items] == [
        (1, Decimal("1500.00")), (6, Decimal("3000.00"))]


def test_subscription_events_and_payment_count_once(app):
    """subscription_created + subscription_renewed + payment_succeeded: one money conversion."""
    created = fixture("chargebee/subscription_created.json")
    renewed = fixture("chargebee/subscription_renewed.json")
    assert post(app, created).json()["conversions"][0]["kind"] == "subscription_started"
    r = post(app, renewed)
    assert r.json()["status"] == "ignored" and "payment_succeeded" in r.json()["reason"]
    assert post(app, fixture(SUCCEEDED)).json()["conversions"][0]["kind"] == "purchase"
    kinds = [c.kind for c in app.conversions()]
    assert kinds == ["subscription_started", "purchase"]


def test_recurring_payment_is_renewal_and_refund_and_cancel(app):
    renewal = fixture(SUCCEEDED)
    renewal["id"] = "ev_renewal_1"
    renewal["content"]["invoice"].update(id="23", first_invoice=False)
    docs = [renewal, fixture("chargebee/payment_refunded.json"),
            fixture("chargebee/subscription_cancelled.json")]
    assert [post(app, d).json()["status"] for d in docs] == ["accepted"] * 3
    got = [(c.kind, c.order_key, c.total) for c in app.conversions()]
    assert got == [
        ("subscription_renewed", "invoice-23", Decimal("4500.00")),
        ("refund", "txn_3Nl7oGgQqGG07E3V", Decimal("0.02")),
        ("subscription_cancelled", "subscription-AzqgumSAxXl3xAxW", None),
    ]


def test_cf_fields_and_meta_data_attribution(app):
    doc = fixture(SUCCEEDED)
    doc["content"]["customer"]["cf_irclickid"] = "click-cb"
    doc["content"]["subscription"]["meta_data"] = {"simmer_anonymous_id": "anon-cb"}
    post(app, doc)
    [conv] = app.conversions()
    assert conv.attribution == {"irclickid": "click-cb", "simmer_anonymous_id": "anon-cb"}


def test_jpy_not_scaled(app):
    doc = copy.deepcopy(fixture(SUCCEEDED))
    doc["id"] = "ev_jpy"
    doc["content"]["invoice"].update(id="jpy-1", currency_code="JPY", total=800, sub_total=800,
                                     line_items=[])
    doc["content"]["transaction"]["currency_code"] = "JPY"
    assert post(app, doc).json()["conversions"][0]["total"] == "800"


def test_sandbox_marks_test(make_app):
    app = make_app(chargebee={"username": "relay-hook", "password": "cb-hook-password-1",
                              "sandbox": True})
    r = post(app, fixture_bytes(SUCCEEDED))
    assert r.json()["status"] == "ignored" and "test-mode" in r.json()["reason"]


def test_malformed_after_auth(app):
    r = post(app, b"[1, 2]")
    assert r.status_code == 400 and r.json() == {"error": "body is not a JSON object"}
    assert app.count("events") == 0


def test_order_keys_name_the_object_type(app):
    """Plain Chargebee ids get their type ("invoice-123" never meets Lemon Squeezy's
    "order-123"); txn_ ids are already typed (finding 6)."""
    paid = fixture(SUCCEEDED)
    paid["content"]["invoice"]["id"] = "123"
    no_invoice = copy.deepcopy(fixture(SUCCEEDED))
    no_invoice["id"] = "ev_no_invoice"
    del no_invoice["content"]["invoice"]
    no_invoice["content"]["transaction"]["id"] = "9001"  # a plain id
    created = fixture("chargebee/subscription_created.json")
    created["content"]["subscription"]["id"] = "123"
    keys = [c["order_key"] for doc in (paid, no_invoice, created)
            for c in post(app, doc).json()["conversions"]]
    assert keys == ["invoice-123", "transaction-9001", "subscription-123"]
