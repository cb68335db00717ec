from __future__ import annotations

import copy
import time
from decimal import Decimal

import pytest

from relay.errors import SignatureError
from relay.settings import LemonSqueezySettings
from relay.sources.lemonsqueezy import LemonSqueezySource
from tests.helpers import FIXTURES, fixture, fixture_bytes
from tests.sources.util import dumps, ls_headers

ORDER = "lemonsqueezy/order_created.pay-rails.json"
SUB_CREATED = "lemonsqueezy/subscription_created.pay-rails.json"
PAYMENT = "lemonsqueezy/subscription_payment_success.pay-rails.json"
REAL = "lemonsqueezy/subscription_payment_success.real-capture.hypertrophy-ai.json"


def test_derived_vectors_verify():
    vectors = fixture("vectors/signature_vectors.json")["lemon_squeezy"]["cases"]
    for case in vectors:
        source = LemonSqueezySource(LemonSqueezySettings(signing_secret=case["secret"]))
        if "raw_body_file" in case:
            body = (FIXTURES / "vectors" / case["raw_body_file"].split(" ")[0]).read_bytes()
        else:
            body = case["raw_body"].encode()
        source.verify(body, {"x-signature": case["x_signature"]}, time.time())
        with pytest.raises(SignatureError):
            source.verify(body + b" ", {"x-signature": case["x_signature"]}, time.time())


def test_order_created_is_a_purchase_once(app):
    body = fixture_bytes(ORDER)
    r = app.post("lemonsqueezy", body, ls_headers(body))
    assert r.status_code == 200, r.text
    assert r.json()["event_id"] == "order_created:orders:1"
    assert r.json()["conversions"] == [
        {"kind": "purchase", "order_key": "order-1", "total": "58.99", "currency": "USD"}
    ]
    again = app.post("lemonsqueezy", body, ls_headers(body))
    assert again.json()["status"] == "duplicate"  # replay protection is the ledger
    [conv] = app.conversions()
    assert conv.customer.email == "dan@lemonsqueezy.com"
    assert conv.items[0].name == "Product One" and conv.items[0].price == Decimal("9.99")


def test_first_payment_pair_is_one_purchase(app):
    order = fixture(ORDER)
    order["meta"]["custom_data"] = {"simmer_anonymous_id": "anon-ls", "irclickid": "click-ls"}
    body = dumps(order)
    assert app.post("lemonsqueezy", body, ls_headers(body)).json()["status"] == "accepted"
    initial = fixture_bytes(PAYMENT)  # billing_reason "initial": the same money
    r = app.post("lemonsqueezy", initial, ls_headers(initial))
    assert r.json() == {"status": "ignored",
                        "reason": "initial subscription payment is counted on order_created"}
    [conv] = app.conversions()
    assert conv.kind == "purchase"
    assert conv.attribution == {"simmer_anonymous_id": "anon-ls", "irclickid": "click-ls"}


def test_every_kind(app):
    renewal = fixture(PAYMENT)
    renewal["data"]["id"] = "77"
    renewal["data"]["attributes"]["billing_reason"] = "renewal"
    cancelled = fixture(SUB_CREATED)
    cancelled["meta"]["event_name"] = "subscription_cancelled"
    refunded = fixture(ORDER)
    refunded["meta"]["event_name"] = "order_refunded"
    refunded["data"]["attributes"].update(status="partial_refund", refunded=True,
                                          refunded_amount=1000,
                                          refunded_at="2023-01-20T10:00:00.000000Z")
    second = copy.deepcopy(refunded)
    second["data"]["attributes"].update(refunded_amount=2500, refunded_at="2023-01-21T10:00:00Z")
    for doc in (fixture(ORDER), fixture(SUB_CREATED), renewal, cancelled, refunded, second):
        body = dumps(doc)
        r = app.post("lemonsqueezy", body, ls_headers(body))
        assert r.json()["status"] == "accepted", r.text
    got = [(c.kind, c.order_key, c.total) for c in app.conversions()]
    assert got == [
        ("purchase", "order-1", Decimal("58.99")),
        ("subscription_started", "subscription-1", None),
        ("subscription_renewed", "subscription-invoice-77", Decimal("9.99")),
        ("subscription_cancelled", "subscription-1", None),
        # Cumulative refunded amounts: the store records the differences (relay/refunds.py).
        ("refund", "order-1:refund:1000", Decimal("10.00")),
        ("refund", "order-1:refund:2500", Decimal("15.00")),  # second partial refund: 25 − 10
    ]


def test_order_keys_name_the_object_type(app):
    """Order 5 and subscription invoice 5 are different objects: different keys (finding 6)."""
    order = fixture(ORDER)
    order["data"]["id"] = "5"
    renewal = fixture(PAYMENT)
    renewal["data"]["id"] = "5"
    renewal["data"]["attributes"]["billing_reason"] = "renewal"
    sub = fixture(SUB_CREATED)
    sub["data"]["id"] = "5"
    keys = []
    for doc in (order, renewal, sub):
        body = dumps(doc)
        keys += [c["order_key"] for c in app.post("lemonsqueezy", body, ls_headers(body)).json()[
            "conversions"]]
    assert keys == ["order-5", "subscription-invoice-5", "subscription-5"]


def _refund(doc: dict, event: str, cumulative: int, at: str) -> bytes:
    doc = copy.deepcopy(doc)
    doc["meta"]["event_name"] = event
    doc["data"]["attributes"].update(refunded=True, refunded_amount=cumulative, refunded_at=at,
                                     status="partial_refund")
    return dumps(doc)


def test_partial_refunds_are_recorded_as_differences(app):
    """Refunds of 10 then 5 arrive as cumulative 10 then 15 and must total 15, not 25 (finding 3)."""
    bodies = [_refund(fixture(ORDER), "order_refunded", 1000, "2023-01-20T10:00:00Z"),
              _refund(fixture(ORDER), "order_refunded", 1500, "2023-01-21T10:00:00Z")]
    for body in (*bodies, bodies[0]):  # the replay is a duplicate
        assert app.post("lemonsqueezy", body, ls_headers(body)).status_code == 200
    stored = app.conversions()  # the store recorded what each event newly refunded
    assert [(c.order_key, c.total, c.refs["cumulative_refund_of"]) for c in stored] == [
        ("order-1:refund:1000", Decimal("10.00"), "order-1"),
        ("order-1:refund:1500", Decimal("5.00"), "order-1"),
    ]
    assert sum(c.total for c in stored) == Decimal("15.00")
    assert stored[1].refs["cumulative_refunded"] == "15.00"


def test_first_payment_refund_counts_once(app):
    """order_refunded and subscription_payment_refunded(initial) are one refund of one payment."""
    order = _refund(fixture(ORDER), "order_refunded", 999, "2023-01-18T12:16:24Z")
    invoice = fixture_bytes("lemonsqueezy/subscription_payment_refunded.pay-rails.json")
    assert app.post("lemonsqueezy", order, ls_headers(order)).json()["status"] == "accepted"
    r = app.post("lemonsqueezy", invoice, ls_headers(invoice))
    assert r.json() == {"status": "ignored", "reason": "a refund of the initial subscription "
                        "payment is counted on order_refunded"}
    renewal = fixture("lemonsqueezy/subscription_payment_refunded.pay-rails.json")
    renewal["data"]["id"] = "88"
    renewal["data"]["attributes"]["billing_reason"] = "renewal"
    body = dumps(renewal)
    assert app.post("lemonsqueezy", body, ls_headers(body)).json()["conversions"] == [
        {"kind": "refund", "order_key": "subscription-invoice-88:refund:999", "total": "9.99",
         "currency": "USD"}]
    assert [(c.order_key, c.refs["cumulative_refund_of"]) for c in app.conversions()] == [
        ("order-1:refund:999", "order-1"),
        ("subscription-invoice-88:refund:999", "subscription-invoice-88"),
    ]


def test_tnd_three_decimals_and_test_mode(make_app):
    doc = fixture(REAL)  # a real test-mode capture in TND
    doc["data"]["attributes"].update(billing_reason="renewal", total=12345, subtotal=12345)
    body = dumps(doc)
    plain = make_app()
    r = plain.post("lemonsqueezy", body, ls_headers(body))
    assert r.json()["status"] == "ignored" and "test-mode" in r.json()["reason"]
    assert plain.count("events") == 1 and plain.count("conversions") == 0  # kept, as ignored
    forwarding = make_app(deliver_test_events=True)
    r = forwarding.post("lemonsqueezy", body, ls_headers(body))
    assert r.json()["conversions"][0]["total"] == "12.345"
    [conv] = forwarding.conversions()
    assert conv.currency == "TND" and conv.livemode is False
    assert conv.metadata == {"user_id": "9104e76a-a73e-412b-b8d6-03064ce37347"}


def test_jpy_zero_decimals(app):
    doc = fixture(ORDER)
    doc["data"]["attributes"].update(currency="JPY", total=800, subtotal=800)
    body = dumps(doc)
    assert app.post("lemonsqueezy", body, ls_headers(body)).json()["conversions"][0]["total"] == "800"


def test_unpaid_order_ignored(app):
    doc = fixture(ORDER)
    doc["data"]["attributes"]["status"] = "pending"
    body = dumps(doc)
    assert app.post("lemonsqueezy", body, ls_headers(body)).json()["status"] == "ignored"


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing X-Signature header"),
        ({"X-Signature": "zz"}, "X-Signature is not a hex HMAC-SHA256 digest"),
        ({"X-Signature": "0" * 64}, "X-Signature does not match any configured signing secret"),
    ],
)
def test_bad_signature_is_400_and_nothing_stored(app, headers, message):
    body = fixture_bytes(ORDER)
    r = app.post("lemonsqueezy", body, headers)
    assert r.status_code == 400 and r.json() == {"error": message}
    assert app.count("events") == 0 and app.count("conversions") == 0


def test_rotated_secret_and_tampered_body(app):
    body = fixture_bytes(ORDER)
    assert app.post("lemonsqueezy", body, ls_headers(body, "old-secret-rotated")).status_code == 200
    tampered = body.replace(b"5899", b"5898")
    r = app.post("lemonsqueezy", tampered, ls_headers(body))
    assert r.status_code == 400 and "secret" not in r.text.replace("signing secret", "")
    assert app.count("events") == 1


def test_unreadable_after_valid_signature_is_quarantined(app):
    body = b'{"meta": {"event_name": "order_created"}}'
    r = app.post("lemonsqueezy", body, ls_headers(body))
    assert r.status_code == 200 and r.json()["status"] == "quarantined"
    assert "data" in r.json()["reason"]
    body = dumps({**fixture(ORDER), "data": {**fixture(ORDER)["data"], "attributes": {
        **fixture(ORDER)["data"]["attributes"], "currency": "XXQ"}}})
    r = app.post("lemonsqueezy", body, ls_headers(body))
    assert r.status_code == 200 and r.json()["status"] == "quarantined"
    assert "currency" in r.json()["reason"]
    assert app.count("events") == 2 and app.count("conversions") == 0
