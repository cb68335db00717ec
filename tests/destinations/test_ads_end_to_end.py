"""From a signed webhook of each processor, through a real `relay serve`, to the Meta and
GA4 stand-ins: the browser ids from checkout metadata arrive where each API wants them,
with the ids the merchant gives the pixel and gtag, exact money, and no secret, token
or email in relay's log."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from urllib.parse import parse_qs

import pytest

from relay import samples
from tests.destinations.adruns import GA4_ID, GA4_SECRET, META_TOKEN, PIXEL, browser_ids
from tests.emulators.ga4 import GA4Emulator
from tests.emulators.meta import MetaEmulator
from tests.helpers import STRIPE_SECRET, body_of, checkout_event, wait_until
from tests.sources.conftest import CB_PASSWORD, CB_USER, LS_SECRET, PADDLE_SECRET


@pytest.fixture(scope="module")
def meta_emu() -> Iterator[MetaEmulator]:
    with MetaEmulator(PIXEL, META_TOKEN) as emu:
        yield emu  # type: ignore[misc]


@pytest.fixture(scope="module")
def ga4_emu() -> Iterator[GA4Emulator]:
    with GA4Emulator(GA4_ID, GA4_SECRET) as emu:
        yield emu  # type: ignore[misc]


@pytest.fixture
def relay(tmp_path, relay_factory, meta_emu, ga4_emu):
    for emu in (meta_emu, ga4_emu):
        emu.requests.clear()
        emu.accepted.clear()
        emu.rejected.clear()
    meta_emu.events.clear()
    ga4_emu.hits.clear()
    return relay_factory({
        "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",
        "RELAY_STRIPE__WEBHOOK_SECRETS": STRIPE_SECRET,
        "RELAY_LEMONSQUEEZY__SIGNING_SECRET": LS_SECRET,
        "RELAY_PADDLE__WEBHOOK_SECRETS": PADDLE_SECRET,
        "RELAY_CHARGEBEE__USERNAME": CB_USER,
        "RELAY_CHARGEBEE__PASSWORD": CB_PASSWORD,
        "RELAY_DELIVER_TEST_EVENTS": "true",  # the Lemon Squeezy/Paddle/Chargebee samples are test mode
        "RELAY_META__PIXEL_ID": PIXEL,
        "RELAY_META__ACCESS_TOKEN": META_TOKEN,
        "RELAY_META__URL": meta_emu.url,
        "RELAY_META__KINDS": "purchase,subscription_started,subscription_renewed,refund",
        "RELAY_GA4__MEASUREMENT_ID": GA4_ID,
        "RELAY_GA4__API_SECRET": GA4_SECRET,
        "RELAY_GA4__URL": ga4_emu.url,
        "RELAY_WORKER__RETRY_BASE_SECONDS": "0.2",
        "RELAY_WORKER__RETRY_MAX_SECONDS": "1",
        "RELAY_WORKER__POLL_SECONDS": "0.3",
    })


def meta_events(emu: MetaEmulator) -> list[dict]:
    return [e for s in emu.accepted for e in json.loads(parse_qs(s.body.decode())["data"][0])]


def ga4_events(emu: GA4Emulator) -> list[dict]:
    return [e for s in emu.accepted for e in json.loads(s.body)["events"]]


def settled(relay, count: int) -> list[dict]:
    def done():
        rows = relay.deliveries()
        return rows if len(rows) == count and all(r["status"] != "pending" for r in rows) else None
    return wait_until(done, timeout=30, message=f"{count} settled deliveries: {relay.deliveries()}")


def post(relay, source: str, event: dict) -> None:
    body = json.dumps(event).encode()
    headers = {
        "lemonsqueezy": lambda: samples.sign_lemonsqueezy(body, LS_SECRET),
        "paddle": lambda: samples.sign_paddle(body, PADDLE_SECRET),
        "chargebee": lambda: samples.chargebee_headers(CB_USER, CB_PASSWORD),
    }[source]()
    r = relay.post(source, body, headers)
    assert r.status_code == 200 and r.json()["status"] == "accepted", r.text


def test_stripe_purchase_and_refund(relay, meta_emu, ga4_emu):
    ids = browser_ids()
    event = checkout_event(amount=4900, tax=400, metadata=ids, email="Buyer@Example.com")
    session = event["data"]["object"]
    pi = session["payment_intent"]
    r = relay.post_stripe(event)
    assert r.status_code == 200 and r.json()["deliveries"] == 2, r.text
    settled(relay, 2)

    [m] = meta_events(meta_emu)
    assert m["event_name"] == "Purchase" and m["event_id"] == pi  # what the pixel's eventID must be
    assert m["action_source"] == "website" and m["event_source_url"] == ids["event_source_url"]
    user = m["user_data"]
    assert user["em"] == [hashlib.sha256(b"buyer@example.com").hexdigest()]
    assert user["fbp"] == ids["fbp"] and user["fbc"].endswith("." + ids["fbclid"])
    assert user["fbc"].split(".")[2] == str(event["created"] * 1000)  # the time relay first saw it
    assert user["client_ip_address"] == ids["client_ip_address"]
    assert user["client_user_agent"] == ids["client_user_agent"]
    assert '"value":49.00,' in parse_qs(meta_emu.accepted[0].body.decode())["data"][0]
    assert m["custom_data"]["currency"] == "USD"
    [g] = ga4_events(ga4_emu)
    assert g["name"] == "purchase" and g["params"]["transaction_id"] == pi
    assert json.loads(ga4_emu.accepted[0].body)["client_id"] == ids["ga_client_id"]
    assert g["params"]["session_id"] == ids["ga_session_id"]

    refund = {
        "id": f"evt_1{uuid.uuid4().hex[:23]}", "object": "event", "type": "refund.created",
        "created": int(time.time()) - 5, "livemode": True, "api_version": "2025-06-30.basil",
        "data": {"object": {"id": f"re_3{uuid.uuid4().hex[:23]}", "object": "refund", "amount": 1000,
                            "currency": session["currency"], "payment_intent": pi,
                            "charge": f"ch_3{uuid.uuid4().hex[:23]}", "status": "succeeded",
                            "metadata": {"ga_client_id": ids["ga_client_id"]}}},
    }
    assert relay.post_stripe(refund).status_code == 200
    rows = settled(relay, 4)
    refunds = {r["destination"]: r for r in rows if r["kind"] == "refund"}
    assert refunds["meta"]["status"] == "skipped" and "no refund event" in refunds["meta"]["last_error"]
    assert refunds["ga4"]["status"] == "delivered"
    [_, back] = ga4_events(ga4_emu)
    assert back["name"] == "refund" and back["params"]["transaction_id"] == pi  # the purchase's own id

    logs = relay.logs()
    for secret in (META_TOKEN, GA4_SECRET, "buyer@example.com", "Buyer@Example.com"):
        assert secret not in logs
    listing = relay.cli("deliveries").stdout + json.dumps(relay.deliveries())
    assert META_TOKEN not in listing and GA4_SECRET not in listing
    assert meta_emu.rejected == [] and ga4_emu.rejected == []


def test_stripe_zero_decimal_currency(relay, meta_emu, ga4_emu):
    event = checkout_event(amount=800, currency="jpy", metadata=browser_ids())
    assert relay.post_stripe(body_of(event)).status_code == 200
    settled(relay, 2)
    raw_meta = parse_qs(meta_emu.accepted[0].body.decode())["data"][0]
    assert '"value":800,' in raw_meta and '"currency":"JPY"' in raw_meta
    assert b'"value":800,' in ga4_emu.accepted[0].body
    assert meta_emu.rejected == [] and ga4_emu.rejected == []


@pytest.mark.parametrize("source", ["lemonsqueezy", "paddle", "chargebee"])
def test_other_processors(source, relay, meta_emu, ga4_emu):
    ids = browser_ids()
    build = {"lemonsqueezy": samples.lemonsqueezy_event, "paddle": samples.paddle_event,
             "chargebee": samples.chargebee_event}[source]
    currency = "KWD" if source == "paddle" else "USD"
    amount = 12345 if source == "paddle" else 4900
    event = build(metadata=ids, currency=currency, amount=amount)
    post(relay, source, event)
    rows = settled(relay, 2)
    assert {r["status"] for r in rows} == {"delivered"}, rows
    order_key = rows[0]["order_key"]
    [m] = meta_events(meta_emu)
    assert m["event_name"] == "Purchase" and m["event_id"] == order_key
    assert m["user_data"]["fbp"] == ids["fbp"] and m["action_source"] == "website"
    [g] = ga4_events(ga4_emu)
    assert g["params"]["transaction_id"] == order_key
    expected = Decimal("12.345") if source == "paddle" else Decimal("49.00")
    assert json.loads(ga4_emu.accepted[0].body, parse_float=Decimal)["events"][0]["params"]["value"] == expected
    assert json.loads(parse_qs(meta_emu.accepted[0].body.decode())["data"][0],
                      parse_float=Decimal)[0]["custom_data"]["value"] == expected
    assert meta_emu.rejected == [] and ga4_emu.rejected == []
