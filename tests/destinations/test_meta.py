"""Meta Conversions API: Meta's own hashing examples, every request through the strict
stand-in, the skips, and the worker through Meta's error codes, retries and batches."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

from relay.conversion import Customer, Item
from relay.destinations import Skip
from relay.destinations.meta import norm_phone, user_data
from tests.destinations.adruns import (
    META_TOKEN,
    PIXEL,
    QUICK,
    attempted,
    browser_ids,
    conversion,
    final,
    meta,
    run_until,
)
from tests.emulators.meta import MetaEmulator

NOW = datetime.now(UTC)


@pytest.fixture(autouse=True)
def _now_is_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """NOW is the time each test starts, not the time the module was imported (the
    sample conversions are dated a few minutes before the moment they are built)."""
    monkeypatch.setattr(sys.modules[__name__], "NOW", datetime.now(UTC))


@pytest.fixture(scope="module")
def emu() -> Iterator[MetaEmulator]:
    with MetaEmulator(PIXEL, META_TOKEN) as server:
        yield server  # type: ignore[misc]


@pytest.fixture(autouse=True)
def clean(emu: MetaEmulator) -> None:
    emu._faults.clear()
    emu.poison.clear()
    emu.requests.clear()
    emu.accepted.clear()
    emu.rejected.clear()
    emu.events.clear()
    emu.test_event_codes.clear()


def form(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.content.decode()).items()}


def events(request: httpx.Request) -> list[dict]:
    return json.loads(form(request)["data"], parse_float=Decimal)


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# ------------------------------------------------------------ Meta's documented examples


def test_hashing_reproduces_metas_documented_examples():
    conv = conversion(customer=Customer(email="  John_Smith@gmail.com ", name="Mary Valéry",
                                        phone="(650)555-1212", country="US", city="Menlo Park",
                                        state="CA", postal_code="94025-1234", id="Cus_42"))
    data = user_data(conv)
    # the expected outputs printed in Meta's customer information parameters page
    assert data["em"] == ["62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"]
    assert data["ph"] == ["e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"]
    assert data["fn"] == ["6915771be1c5aa0c886870b6951b03d7eafc121fea0e80a5ea83beb7c449f4ec"]
    assert data["ln"] == ["08e1996b5dd49e62a4b4c010d44e4345592a863bb9f8e3976219bac29417149c"]
    korean = user_data(conversion(customer=Customer(name="정 Kim")))
    assert korean["fn"] == ["8fa8cd9c440be61d0151429310034083132b35975c4bea67fdd74158eb51db14"]
    # the normalizations Meta describes for the other fields
    assert data["ct"] == [sha("menlopark")]
    assert data["st"] == [sha("ca")]
    assert data["zp"] == [sha("94025")]
    assert data["country"] == [sha("us")]
    assert data["external_id"] == [sha("cus_42")]
    # never hashed
    assert data["client_user_agent"] == browser_ids()["client_user_agent"]
    assert data["client_ip_address"] == "203.0.113.7"
    assert data["fbp"] == "fb.1.1596403881668.1116446470"
    assert "buyer@example.com" not in json.dumps(data)


def test_phone_needs_a_country_code():
    assert norm_phone("+44 20 7946 0018", None) == "442079460018"
    assert norm_phone("0044 20 7946 0018", "FR") == "442079460018"
    assert norm_phone("020 7946 0018", "GB") == "442079460018"  # national number, buyer's country
    assert norm_phone("(650)555-1212", None) is None  # no country: Meta could not match it
    assert norm_phone("not a phone", "US") is None


def test_fbc_formed_from_fbclid_with_the_time_relay_first_saw_it():
    conv = conversion()
    millis = int(conv.occurred_at.timestamp()) * 1000 + conv.occurred_at.microsecond // 1000
    assert user_data(conv)["fbc"] == f"fb.1.{millis}.{browser_ids()['fbclid']}"
    cookie = "fb.1.1554763741205.AbCdEfGhIjKlMnOpQrStUvWxYz1234567890"
    assert user_data(conversion(attribution=browser_ids(fbc=cookie)))["fbc"] == cookie
    assert "fbc" not in user_data(conversion(attribution={"fbp": browser_ids()["fbp"]}))


# ------------------------------------------------------------ the request itself


def test_request_shape_and_token_only_in_the_body():
    conv = conversion(promo_code="SPRING")
    req = meta("http://127.0.0.1:1", test_event_code="TEST123").build(conv, NOW)
    assert str(req.url) == f"http://127.0.0.1:1/v25.0/{PIXEL}/events"
    assert META_TOKEN not in str(req.url)
    assert req.headers["content-type"] == "application/x-www-form-urlencoded"
    body = form(req)
    assert body["access_token"] == META_TOKEN and body["test_event_code"] == "TEST123"
    [event] = events(req)
    assert event["event_name"] == "Purchase"
    assert event["event_time"] == int(conv.occurred_at.timestamp())
    assert event["event_id"] == conv.refs["payment_intent"]  # the id the pixel gets too
    assert event["action_source"] == "website"
    assert event["event_source_url"] == "https://shop.example/pricing"
    custom = event["custom_data"]
    assert custom["currency"] == "USD" and custom["value"] == Decimal("49.00")
    assert custom["order_id"] == conv.refs["payment_intent"]
    assert custom["contents"] == [{"id": "price_1Plan", "quantity": 1, "item_price": Decimal("45.00")}]
    assert '"value":49.00' in body["data"]  # exact text, no float rounding


def test_event_id_is_the_same_on_every_build():
    conv = conversion()
    m = meta("http://127.0.0.1:1")
    first = events(m.build(conv, NOW))[0]["event_id"]
    later = events(m.build(conv, NOW + timedelta(hours=5)))[0]["event_id"]
    assert first == later == conv.refs["payment_intent"]
    session_only = conversion(refs={})
    assert events(m.build(session_only, NOW))[0]["event_id"] == session_only.order_key


@pytest.mark.parametrize(("kind", "name", "source"), [
    ("purchase", "Purchase", "website"),
    ("subscription_started", "Subscribe", "website"),
    ("subscription_renewed", "RecurringSubscriptionPayment", "system_generated"),
    ("subscription_cancelled", "CancelSubscription", "system_generated"),
])
def test_kinds_and_action_sources(kind, name, source, emu):
    conv = conversion(kind, order_key="sub_1Test" if kind != "purchase" else conversion().order_key,
                      refs={"subscription": "sub_1Test"})
    req = meta(emu.url).build(conv, NOW)
    [event] = events(req)
    assert event["event_name"] == name and event["action_source"] == source
    if kind != "purchase":
        assert event["user_data"]["subscription_id"] == "sub_1Test"
    if source != "website":
        assert "event_source_url" not in event
    assert httpx.Client().send(req).status_code == 200, emu.rejected[-1:]


def test_without_browser_fields_the_source_is_other(emu):
    no_ua = conversion(attribution={"fbp": browser_ids()["fbp"], "event_source_url": "https://x.example/"})
    [event] = events(meta(emu.url).build(no_ua, NOW))
    assert event["action_source"] == "other" and "event_source_url" not in event
    no_url = conversion(attribution={"client_user_agent": "UA/1", "client_ip_address": "203.0.113.7"})
    assert events(meta(emu.url).build(no_url, NOW))[0]["action_source"] == "other"


VARIANTS = {
    "usd": {},
    "jpy": {"currency": "JPY", "total": Decimal("800"), "tax": None, "subtotal": Decimal("800"),
            "items": (Item(quantity=2, price=Decimal("400"), sku="jp-1"),)},
    "bhd": {"currency": "BHD", "total": Decimal("12.345"), "tax": Decimal("0.345"),
            "items": (Item(quantity=3, subtotal=Decimal("12.000"), name="Dates box"),)},
    "no-items": {"items": ()},
    "paddle": {"source": "paddle", "order_key": "txn_01h8bxhhe7", "refs": {}},
    "only-email": {"attribution": {}, "customer": Customer(email="a@b.example")},
    "ip-and-ua": {"attribution": {"client_ip_address": "2001:db8::1", "client_user_agent": "UA/1"},
                  "customer": Customer()},
    "zero": {"total": Decimal("0.00"), "tax": Decimal("0"), "items": ()},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_passes_the_stand_in(variant, emu):
    req = meta(emu.url).build(conversion(**VARIANTS[variant]), NOW)
    assert not isinstance(req, Skip), req
    r = httpx.Client().send(req)
    assert r.status_code == 200, (r.text, emu.rejected[-1:])
    assert r.json()["events_received"] == 1


def test_exact_money_on_the_wire():
    m = meta("http://127.0.0.1:1")
    assert '"value":800,' in form(m.build(conversion(**VARIANTS["jpy"]), NOW))["data"]
    assert '"value":12.345,' in form(m.build(conversion(**VARIANTS["bhd"]), NOW))["data"]
    bhd = events(m.build(conversion(**VARIANTS["bhd"]), NOW))[0]
    assert bhd["custom_data"]["contents"][0]["item_price"] == Decimal("4.000")


def test_event_time_never_after_the_request(emu):
    ahead = conversion(occurred_at=datetime.now(UTC) + timedelta(minutes=10))
    now = datetime.now(UTC)
    req = meta(emu.url).build(ahead, now)
    assert events(req)[0]["event_time"] == int(now.timestamp())
    assert httpx.Client().send(req).status_code == 200


def test_skips_say_why():
    m = meta("http://127.0.0.1:1")
    assert "no refund event" in m.build(conversion("refund"), NOW).reason
    old = conversion(occurred_at=NOW - timedelta(days=7, minutes=1))
    assert m.build(old, NOW).reason.startswith("older than 7 days")
    assert not isinstance(m.build(conversion(occurred_at=NOW - timedelta(days=6, hours=23)), NOW), Skip)
    nobody = conversion(attribution={"client_user_agent": "UA/1"}, customer=Customer())
    assert "no customer information" in m.build(nobody, NOW).reason
    assert "no order amount" in m.build(conversion(total=None, currency=None), NOW).reason
    assert "negative value" in m.build(conversion(total=Decimal("-1")), NOW).reason


def test_stand_in_rejects_what_meta_rejects(emu):
    """The stand-in is strict: plain contact data, a stale event_time, a website event
    without its URL are refused with Meta's error envelope."""
    good = events(meta(emu.url).build(conversion(), NOW))[0]
    cases = {
        "plain email": {**good, "user_data": {**good["user_data"], "em": ["buyer@example.com"]}},
        "eight days old": {**good, "event_time": int(time.time()) - 8 * 86400},
        "website without url": {k: v for k, v in good.items() if k != "event_source_url"},
        "value as text": {**good, "custom_data": {**good["custom_data"], "value": "49.00"}},
    }
    for label, event in cases.items():
        r = httpx.post(f"{emu.url}/v25.0/{PIXEL}/events",
                       data={"data": json.dumps([event], default=str), "access_token": META_TOKEN})
        assert r.status_code == 400, label
        error = r.json()["error"]
        assert error["code"] == 100 and error["fbtrace_id"], label
    r = httpx.post(f"{emu.url}/v25.0/{PIXEL}/events", data={"data": "[]", "access_token": "wrong"})
    assert r.json()["error"]["code"] == 190


# ------------------------------------------------------------ the worker against Meta's answers


def test_delivered_and_test_event_code_reaches_meta(tmp_path: Path, emu):
    [row] = run_until(tmp_path / "m.db", {"meta": meta(emu.url, test_event_code="TEST4242")},
                      [conversion()], final)
    assert row.status == "delivered"
    assert emu.test_event_codes == ["TEST4242"]
    assert emu.rejected == []


@pytest.mark.parametrize(("code", "expect"), [(1, "pending"), (2, "pending"), (4, "throttled"),
                                              (17, "throttled"), (32, "throttled"),
                                              (613, "throttled"), (190, "failed"), (100, "failed")])
def test_meta_error_codes(code, expect, tmp_path: Path, emu):
    emu.fail_with(code)
    started = time.time()
    slow = QUICK.model_copy(update={"retry_base_seconds": 60, "retry_max_seconds": 120})
    [row] = run_until(tmp_path / "c.db", {"meta": meta(emu.url)}, [conversion()], attempted, slow)
    error = row.last_error or ""
    assert META_TOKEN not in error
    assert f"Meta error {code}" in error, error
    if expect == "pending":
        assert row.status == "pending" and row.next_attempt_at > started
    elif expect == "throttled":
        assert row.status == "pending" and error.startswith("throttled")
        assert row.next_attempt_at >= started + 300 - 1  # retried later, not in the backoff
    else:
        assert row.status == "failed"
    if code == 190:
        assert "RELAY_META__ACCESS_TOKEN" in error
    if code == 100:
        assert "Invalid parameter" in error


def test_retry_keeps_the_event_id(tmp_path: Path, emu):
    emu.fail_with(2, count=2)
    conv = conversion()
    [row] = run_until(tmp_path / "r.db", {"meta": meta(emu.url)}, [conv], final)
    assert row.status == "delivered" and row.attempts == 3
    ids = [json.loads(parse_qs(s.body.decode())["data"][0])[0]["event_id"] for s in emu.requests]
    assert ids == [conv.refs["payment_intent"]] * 3
    assert emu.unique() == {("Purchase", conv.refs["payment_intent"])}


def test_one_bad_event_does_not_sink_the_batch(tmp_path: Path, emu):
    convs = [conversion() for _ in range(4)]
    bad = convs[2].refs["payment_intent"]
    emu.poison.add(bad)
    rows = run_until(tmp_path / "b.db", {"meta": meta(emu.url)}, convs, final)
    by_order = {r.order_key: r for r in rows}
    for conv in convs:
        row = by_order[conv.order_key]
        if conv.refs["payment_intent"] == bad:
            assert row.status == "failed" and "verified domain" in (row.last_error or "")
        else:
            assert row.status == "delivered", row
    sizes = [len(json.loads(parse_qs(s.body.decode())["data"][0])) for s in emu.requests]
    assert sizes == [4, 1, 1, 1, 1]  # one batch refused whole, then each on its own
    assert {e["event_id"] for e in emu.events} == {c.refs["payment_intent"] for c in convs} - {bad}


def test_token_never_in_errors_even_when_meta_echoes_it(tmp_path: Path, emu):
    emu.fail_next(1, 400, body={"error": {"message": f"bad token {META_TOKEN}", "code": 190,
                                          "type": "OAuthException", "fbtrace_id": "X"}})
    [row] = run_until(tmp_path / "t.db", {"meta": meta(emu.url)}, [conversion()], final)
    assert row.status == "failed" and META_TOKEN not in (row.last_error or "")
    assert "********" in (row.last_error or "")
