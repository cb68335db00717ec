"""GA4 Measurement Protocol: the body GA4 documents, every request valid at the strict
stand-in (which, like GA4, answers 204 either way), skips with reasons, retries
keeping transaction_id, and the API secret never shown."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from relay.conversion import Conversion, Customer, Item
from relay.destinations import Skip, redact
from relay.destinations.ga4 import client_id
from tests.destinations.adruns import (
    GA4_ID,
    GA4_SECRET,
    browser_ids,
    conversion,
    final,
    ga4,
    run_until,
)
from tests.emulators.ga4 import GA4Emulator

NOW = datetime.now(UTC)


@pytest.fixture(autouse=True)
def _now_is_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """NOW is the time each test starts, not the time the module was imported (the
    sample conversions are dated a few minutes before the moment they are built)."""
    monkeypatch.setattr(sys.modules[__name__], "NOW", datetime.now(UTC))


@pytest.fixture(scope="module")
def emu() -> Iterator[GA4Emulator]:
    with GA4Emulator(GA4_ID, GA4_SECRET) as server:
        yield server  # type: ignore[misc]


@pytest.fixture(autouse=True)
def clean(emu: GA4Emulator) -> None:
    emu._faults.clear()
    emu.requests.clear()
    emu.accepted.clear()
    emu.rejected.clear()
    emu.hits.clear()


def body(request: httpx.Request) -> dict:
    return json.loads(request.content, parse_float=Decimal)


def test_request_shape():
    conv = conversion(promo_code="SPRING", new_customer=True)
    req = ga4("http://127.0.0.1:1").build(conv, NOW)
    assert req.url.path == "/mp/collect"
    assert dict(req.url.params) == {"measurement_id": GA4_ID, "api_secret": GA4_SECRET}
    sent = body(req)
    assert sent["client_id"] == "1187654321.1700000000"
    micros = int(conv.occurred_at.timestamp()) * 1_000_000 + conv.occurred_at.microsecond
    assert sent["timestamp_micros"] == micros
    [event] = sent["events"]
    assert event["name"] == "purchase"
    p = event["params"]
    assert p["transaction_id"] == conv.refs["payment_intent"]
    assert p["value"] == Decimal("45.00")  # price × quantity, no tax or shipping
    assert p["currency"] == "USD" and p["tax"] == Decimal("4.00") and p["shipping"] == Decimal("0")
    assert p["coupon"] == "SPRING" and p["customer_type"] == "new"
    assert p["session_id"] == "1700000100"
    assert p["items"] == [{"item_id": "price_1Plan", "item_name": "Plan", "price": Decimal("45.00"),
                           "quantity": 1}]
    assert b'"value":45.00' in req.content


def test_client_id_from_the_cookie_never_invented():
    assert client_id("GA1.1.1187654321.1700000000") == "1187654321.1700000000"
    assert client_id("GA1.2.99.1700000000") == "99.1700000000"
    assert client_id("1187654321.1700000000") == "1187654321.1700000000"
    assert client_id("") is None and client_id(None) is None and client_id("a b") is None
    g = ga4("http://127.0.0.1:1")
    skip = g.build(conversion(attribution={"fbp": "x"}), NOW)
    assert isinstance(skip, Skip) and skip.reason.startswith("no GA client id")


def test_no_line_items_one_item_stands_for_the_order():
    conv = conversion(items=(), total=Decimal("49.00"), tax=Decimal("4.00"))
    [event] = body(ga4("http://127.0.0.1:1").build(conv, NOW))["events"]
    assert event["params"]["items"] == [{"item_name": "Order", "price": Decimal("45.00"), "quantity": 1}]
    nameless = conversion(items=(Item(quantity=1, price=Decimal("45.00")),))
    [event] = body(ga4("http://127.0.0.1:1").build(nameless, NOW))["events"]
    assert event["params"]["items"][0]["item_name"] == "Order"


@pytest.mark.parametrize(("currency", "total", "tax", "items", "value_text"), [
    ("JPY", "800", None, (Item(quantity=2, price=Decimal("400"), sku="jp"),), b'"value":800,'),
    ("BHD", "12.345", "0.345", (Item(quantity=3, subtotal=Decimal("12.000"), sku="d"),), b'"value":12.000,'),
    ("KWD", "1.005", None, (), b'"value":1.005,'),
])
def test_zero_and_three_decimal_currencies(currency, total, tax, items, value_text, emu):
    conv = conversion(currency=currency, total=Decimal(total), tax=None if tax is None else Decimal(tax),
                      shipping=None, items=items)
    req = ga4(emu.url).build(conv, NOW)
    assert value_text in req.content, req.content
    if currency == "BHD":
        assert body(req)["events"][0]["params"]["items"][0]["price"] == Decimal("4.000")
    assert httpx.Client().send(req).status_code == 204
    assert emu.rejected == [] and len(emu.hits) == 1


def test_refund_names_the_purchase(emu):
    purchase = conversion()
    refund = Conversion(source="stripe", kind="refund", order_key="re_3Test", currency="USD",
                        occurred_at=NOW - timedelta(minutes=1), total=Decimal("10.00"),
                        attribution=browser_ids(), refs={"payment_intent": purchase.refs["payment_intent"],
                                                         "charge": "ch_1"})
    g = ga4(emu.url)
    [event] = body(g.build(refund, NOW))["events"]
    assert event["name"] == "refund"
    bought = body(g.build(purchase, NOW))["events"][0]["params"]["transaction_id"]
    assert event["params"]["transaction_id"] == bought
    assert event["params"]["value"] == Decimal("10.00")
    for source, refs, expected in (
        ("lemonsqueezy", {"cumulative_refund_of": "order-77"}, "order-77"),
        ("paddle", {"transaction_id": "txn_01abc"}, "txn_01abc"),
        ("chargebee", {"invoice_id": "42"}, "invoice-42"),
    ):
        other = refund.replace(source=source, refs=refs)
        assert body(g.build(other, NOW))["events"][0]["params"]["transaction_id"] == expected
    assert "does not say" in g.build(refund.replace(source="chargebee", refs={}), NOW).reason
    assert httpx.Client().send(g.build(refund, NOW)).status_code == 204
    assert emu.rejected == []


def test_skips_say_why():
    g = ga4("http://127.0.0.1:1")
    assert g.build(conversion(occurred_at=NOW - timedelta(hours=72, minutes=1)), NOW).reason.startswith(
        "older than 72 hours")
    assert not isinstance(g.build(conversion(occurred_at=NOW - timedelta(hours=71)), NOW), Skip)
    assert "no event for subscription_started" in g.build(conversion("subscription_started"), NOW).reason
    assert "no order amount" in g.build(conversion(total=None, currency=None), NOW).reason
    ahead = body(g.build(conversion(occurred_at=NOW + timedelta(minutes=5)), NOW))
    assert "timestamp_micros" not in ahead  # a processor clock ahead of ours: GA4 uses its own


VARIANTS = {
    "usd": {},
    "renewal": {"kind": "subscription_renewed", "order_key": "in_1Renewal", "refs": {}},
    "no-session": {"attribution": {"ga_client_id": "GA1.1.5.1700000000"}},
    "long-key": {"order_key": "x" * 300, "refs": {}},
    "long-name": {"items": (Item(quantity=1, price=Decimal("45.00"), name="N" * 300),)},
    "zero": {"total": Decimal("0.00"), "tax": Decimal("0"), "items": ()},
    "discounted": {"discount": Decimal("5.00"), "total": Decimal("44.00"), "promo_code": "C" * 150},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_is_valid_for_ga4(variant, emu):
    conv = conversion(**{k: v for k, v in VARIANTS[variant].items() if k != "kind"})
    if "kind" in VARIANTS[variant]:
        conv = conv.replace(kind=VARIANTS[variant]["kind"])
    req = ga4(emu.url).build(conv, NOW)
    assert not isinstance(req, Skip), req
    debug = httpx.post(f"{emu.url}/debug/mp/collect", content=req.content)
    assert debug.json() == {"validationMessages": []}
    assert httpx.Client().send(req).status_code == 204
    assert emu.rejected == [], emu.rejected


def test_stand_in_answers_204_but_drops_invalid_hits(emu):
    """Like GA4: a 2xx tells nothing; the debug endpoint says what is wrong."""
    bad = {"client_id": "1.2", "events": [{"name": "purchase", "params": {"value": 5}}]}
    url = f"{emu.url}/mp/collect?measurement_id={GA4_ID}&api_secret={GA4_SECRET}"
    assert httpx.post(url, json=bad).status_code == 204
    assert emu.hits == [] and len(emu.rejected) == 1
    codes = {m["validationCode"] for m in httpx.post(f"{emu.url}/debug/mp/collect", json=bad).json()[
        "validationMessages"]}
    assert codes == {"VALUE_REQUIRED"}  # transaction_id, currency and items
    wrong = f"{emu.url}/mp/collect?measurement_id={GA4_ID}&api_secret=nope"
    good = body(ga4(emu.url).build(conversion(), NOW))
    assert httpx.post(wrong, json=json.loads(json.dumps(good, default=str))).status_code == 204
    assert emu.hits == []


def test_retry_keeps_the_transaction_id(tmp_path: Path, emu):
    emu.fail_next(2, 503, body={"error": "backend unavailable"})
    conv = conversion()
    [row] = run_until(tmp_path / "g.db", {"ga4": ga4(emu.url)}, [conv], final)
    assert row.status == "delivered" and row.attempts == 3
    ids = [json.loads(s.body)["events"][0]["params"]["transaction_id"] for s in emu.requests]
    assert ids == [conv.refs["payment_intent"]] * 3
    assert list(emu.purchases()) == [conv.refs["payment_intent"]]


def test_secret_never_shown(tmp_path: Path, emu):
    emu.fail_next(1, 400, body={"error": f"bad request to /mp/collect?api_secret={GA4_SECRET}"})
    [row] = run_until(tmp_path / "s.db", {"ga4": ga4(emu.url)}, [conversion()], final)
    assert row.status == "failed" and GA4_SECRET not in (row.last_error or "")
    assert redact(f"POST https://x/mp/collect?measurement_id=G-1&api_secret={GA4_SECRET}") == \
        "POST https://x/mp/collect?measurement_id=G-1&api_secret=********"


def test_customer_data_never_sent():
    """GA4 forbids personal data in hits: no email, name or processor customer id."""
    conv = conversion(customer=Customer(email="buyer@example.com", name="Jo Buyer", id="cus_9"))
    raw = ga4("http://127.0.0.1:1").build(conv, NOW).content.decode()
    for value in ("buyer@example.com", "Jo Buyer", "cus_9"):
        assert value not in raw
