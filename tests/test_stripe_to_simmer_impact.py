"""The core path as a user runs it: signed Stripe webhooks → `relay serve` (real process,
real SQLite file) → the Simmer and impact.com stand-ins, which enforce their documented rules."""

from __future__ import annotations

import concurrent.futures
import hashlib
import time
from datetime import UTC, datetime
from decimal import Decimal

import httpx

from tests.helpers import (
    JPY_FIXTURE,
    body_of,
    checkout_event,
    fixture_bytes,
    sqlite_count,
    stripe_headers,
    wait_until,
)


def delivered(relay, n: int, timeout: float = 20.0) -> list[dict]:
    return wait_until(
        lambda: (rows := relay.deliveries(status="delivered")) and len(rows) >= n and rows,
        timeout, message=f"{n} delivered deliveries",
    )


def test_paid_checkout_reaches_simmer_and_impact_with_attribution(relay, simmer, impact):
    event = checkout_event(
        amount=5840, tax=440, shipping=500, discount=1000, email="Buyer.One@Example.com",
        metadata={"simmer_anonymous_id": "anon-7f3a", "irclickid": "QiiWXOVnrQ3SQHl24jQjyxBGUkmzfJ3i1VHrWM0"},
    )
    response = relay.post_stripe(event)
    assert response.status_code == 200
    answer = response.json()
    assert answer["status"] == "accepted"
    assert answer["event_id"] == event["id"]
    assert answer["deliveries"] == 2
    assert answer["conversions"] == [{
        "kind": "purchase", "order_key": event["data"]["object"]["id"], "total": "58.40", "currency": "USD",
    }]
    delivered(relay, 2)

    body = simmer.accepted[0].parsed
    session = event["data"]["object"]
    assert body == {
        "project_id": "proj_test",
        "order_id": session["id"],
        "email": "Buyer.One@Example.com",
        "total_revenue": Decimal("58.40"),
        "currency": "USD",
        "occurred_at": datetime.fromtimestamp(event["created"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "anonymous_id": "anon-7f3a",
    }
    form = impact.accepted[0].parsed
    assert form["ClickId"] == "QiiWXOVnrQ3SQHl24jQjyxBGUkmzfJ3i1VHrWM0"
    assert form["CampaignId"] == "1000" and form["EventTypeId"] == "9876"
    # A cs_live_ id is 66 characters; impact's OrderId allows 64: the PaymentIntent id is used.
    assert len(session["id"]) > 64
    assert form["OrderId"] == session["payment_intent"]
    assert datetime.fromisoformat(form["EventDate"]).timestamp() == event["created"]
    assert form["CurrencyCode"] == "USD"
    assert form["OrderSubTotalPostDiscount"] == "49.00"  # 58.40 − 4.40 tax − 5.00 shipping
    assert form["OrderTax"] == "4.40" and form["OrderShipping"] == "5.00"
    assert form["CustomerId"] == "cus_TestCustomer01"
    assert form["CustomerEmail"] == hashlib.sha1(b"buyer.one@example.com").hexdigest()
    assert not any(k.startswith("Item") for k in form)
    assert "NOW" not in form.values()


def test_jpy_fixture_is_exact_and_old_conversions_skip_simmer(tmp_path, simmer, impact, relay_factory):
    from tests.conftest import core_env

    env = core_env(tmp_path / "relay.db", simmer.url, impact.url) | {"RELAY_DELIVER_TEST_EVENTS": "true"}
    relay = relay_factory(env)
    raw = fixture_bytes(JPY_FIXTURE)  # real test-mode capture: amount_total 800 means ¥800
    response = relay.post("stripe", raw, stripe_headers(raw))
    assert response.status_code == 200, response.text
    assert response.json()["conversions"][0]["total"] == "800"
    rows = wait_until(lambda: [r for r in relay.deliveries() if r["status"] != "pending"] if len(
        [r for r in relay.deliveries() if r["status"] != "pending"]) == 2 else None, message="settled")
    by_dest = {r["destination"]: r for r in rows}
    # The capture is from July 2025: Simmer only takes the last 7 days, so it is never sent there.
    assert by_dest["simmer"]["status"] == "skipped"
    assert "7-day" in by_dest["simmer"]["last_error"]
    assert simmer.requests == []
    assert by_dest["impact"]["status"] == "delivered"
    form = impact.accepted[0].parsed
    assert form["CurrencyCode"] == "JPY" and form["OrderSubTotalPostDiscount"] == "800.00"
    assert form["CustomerId"] == "cus_SkQpGfARLDMyiS"

    # The same purchase dated now reaches Simmer as ¥800, not ¥8.
    fresh = checkout_event(amount=800, currency="jpy", livemode=False)
    assert relay.post_stripe(fresh).status_code == 200
    wait_until(lambda: simmer.accepted, message="simmer")
    assert simmer.accepted[0].parsed["total_revenue"] == 800
    assert simmer.accepted[0].parsed["currency"] == "JPY"


def test_three_decimal_currency_is_exact(relay, simmer, impact):
    event = checkout_event(amount=12345, currency="kwd", metadata={"irclickid": "c1"})
    assert relay.post_stripe(event).json()["conversions"][0]["total"] == "12.345"
    delivered(relay, 2)
    assert simmer.accepted[0].parsed["total_revenue"] == Decimal("12.345")
    # impact's money fields are DECIMAL(12,2): rounded half-up to its precision.
    assert impact.accepted[0].parsed["OrderSubTotalPostDiscount"] == "12.35"


def test_unknown_currency_is_quarantined_and_never_delivered(relay, tmp_path):
    event = checkout_event(currency="xyz")
    response = relay.post_stripe(event)
    assert response.status_code == 200
    assert response.json() == {"status": "quarantined", "event_id": event["id"],
                               "reason": "unknown currency code 'xyz'"}
    assert sqlite_count(tmp_path / "relay.db", "events") == 1
    assert sqlite_count(tmp_path / "relay.db", "conversions") == 0
    assert relay.deliveries() == []


def test_same_event_three_times_and_same_session_under_new_event_id(relay, simmer, impact, tmp_path):
    event = checkout_event(metadata={"irclickid": "click-dup"})
    answers = [relay.post_stripe(event).json()["status"] for _ in range(3)]
    assert answers == ["accepted", "duplicate", "duplicate"]

    again = dict(event, id="evt_1RedeliveredUnderNewId00")
    second = relay.post_stripe(again).json()
    assert second["status"] == "accepted" and second["deliveries"] == 0
    assert second["already_recorded"][0]["order_key"] == event["data"]["object"]["id"]

    late = dict(event, id="evt_1AsyncSucceededSameSess", type="checkout.session.async_payment_succeeded")
    assert relay.post_stripe(late).json()["deliveries"] == 0

    # The ledger holds one conversion with one delivery per destination, all delivered:
    # nothing is left that could send it again.
    delivered(relay, 2)
    assert sqlite_count(tmp_path / "relay.db", "conversions") == 1
    assert sqlite_count(tmp_path / "relay.db", "deliveries") == 2
    assert len(simmer.accepted) == 1 and len(impact.accepted) == 1


def test_concurrent_duplicates_are_recorded_once(relay, simmer, impact):
    event = checkout_event(metadata={"irclickid": "click-conc"})
    body = body_of(event)
    headers = stripe_headers(body)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda _: relay.post("stripe", body, headers).json()["status"], range(32)))
    assert statuses.count("accepted") == 1
    assert statuses.count("duplicate") == 31
    delivered(relay, 2)
    assert len(relay.deliveries()) == 2  # one per destination: nothing more to send
    assert len(simmer.accepted) == 1 and len(impact.accepted) == 1


def test_unpaid_session_is_ignored_until_async_payment_succeeds(relay, simmer):
    unpaid = checkout_event(payment_status="unpaid")
    answer = relay.post_stripe(unpaid).json()
    assert answer["status"] == "ignored"
    assert "async_payment_succeeded" in answer["reason"]
    assert relay.deliveries() == []

    paid = dict(unpaid, id="evt_1LaterAsyncSuccess000000", type="checkout.session.async_payment_succeeded")
    paid["data"] = {"object": dict(unpaid["data"]["object"], payment_status="paid")}
    assert relay.post_stripe(paid).json()["status"] == "accepted"
    wait_until(lambda: simmer.accepted, message="simmer")
    assert simmer.accepted[0].parsed["order_id"] == unpaid["data"]["object"]["id"]


def test_test_mode_events_are_ignored_by_default(relay):
    answer = relay.post_stripe(checkout_event(livemode=False)).json()
    assert answer["status"] == "ignored"
    assert "RELAY_DELIVER_TEST_EVENTS" in answer["reason"]


def test_other_event_types_are_ignored(relay):
    event = checkout_event(event_type="payment_intent.created")
    answer = relay.post_stripe(event).json()
    assert answer == {"status": "ignored", "reason": "event type 'payment_intent.created' is not relayed"}


def test_bad_signatures_are_400_and_store_nothing(relay, tmp_path):
    event = checkout_event()
    body = body_of(event)
    cases = {
        "wrong secret": stripe_headers(body, secret="whsec_wrong"),
        "stale timestamp": stripe_headers(body, timestamp=int(time.time()) - 301),
        "missing header": {"Content-Type": "application/json"},
        "garbage header": {"Stripe-Signature": "nonsense"},
    }
    for case, headers in cases.items():
        response = relay.post("stripe", body, headers)
        assert response.status_code == 400, case
        error = response.json()["error"]
        assert "whsec_" not in error, case
    tampered = body.replace(b'"amount_total": 4900', b'"amount_total": 9900')
    assert tampered != body
    assert relay.post("stripe", tampered, stripe_headers(body)).status_code == 400
    assert "tolerance" in relay.post("stripe", body, cases["stale timestamp"]).json()["error"]
    assert "missing Stripe-Signature" in relay.post("stripe", body, cases["missing header"]).json()["error"]
    assert sqlite_count(tmp_path / "relay.db", "events") == 0
    assert relay.deliveries() == []


def test_malformed_body_after_valid_signature(relay, tmp_path):
    body = b'{"id": "evt_1", "object": "event"'  # not JSON: 400, stored nowhere
    assert relay.post("stripe", body, stripe_headers(body)).status_code == 400
    assert sqlite_count(tmp_path / "relay.db", "events") == 0
    body = b'{"id": "evt_1", "object": "event", "type": "checkout.session.completed"}'
    response = relay.post("stripe", body, stripe_headers(body))  # a shape relay does not know
    assert response.status_code == 200 and response.json()["status"] == "quarantined"
    assert "data.object" in response.json()["reason"]
    assert sqlite_count(tmp_path / "relay.db", "events") == 1


def test_body_limit_unknown_and_unconfigured_sources(relay):
    big = b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'
    response = relay.post("stripe", big, stripe_headers(big))
    assert response.status_code == 413
    response = relay.post("paddle", b"{}", {})
    assert response.status_code == 404
    assert response.json() == {"error": "source 'paddle' is not configured"}
    assert relay.post("nosuch", b"{}", {}).status_code == 404


def test_healthz_and_metrics(relay, simmer, impact):
    health = httpx.get(relay.url + "/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    relay.post_stripe(checkout_event(metadata={"irclickid": "m"}))
    delivered(relay, 2)
    text = httpx.get(relay.url + "/metrics").text
    assert 'relay_webhooks_total{outcome="accepted",source="stripe"} 1.0' in text
    assert 'relay_deliveries{destination="simmer",status="delivered"} 1.0' in text
    assert "relay_oldest_pending_age_seconds" in text
    assert 'relay_delivery_latency_seconds_count{destination="impact"} 1.0' in text
