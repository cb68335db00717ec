"""Stripe kinds beyond Checkout purchases, and the optional line-item enrichment."""

from __future__ import annotations

import asyncio
import copy
from decimal import Decimal

from relay.enrich import build_enricher
from relay.settings import Settings
from tests.conftest import core_env
from tests.emulators.stripe_api import line_item
from tests.helpers import body_of, checkout_event, fixture, stripe_headers, wait_until
from tests.sources.conftest import STRIPE_API_KEY

INVOICE = "stripe/invoice.paid.api-2023-10-16.alimehndi.json"
SUB_CREATED = "stripe/customer.subscription.created.api-2023-10-16.alimehndi.json"


def post(app, event: dict):
    body = body_of(event)
    return app.post("stripe", body, stripe_headers(body))


def envelope(fragment: str, event_type: str, event_id: str, previous: dict | None = None) -> dict:
    data = copy.deepcopy(fixture(fragment))
    if "type" in data:  # already a full event
        data = {"object": data["data"]["object"]}
    if previous is not None:
        data["previous_attributes"] = previous
    return {"id": event_id, "object": "event", "type": event_type, "created": 1714549347,
            "livemode": True, "data": data}


def test_checkout_subscription_and_first_invoice_is_one_purchase(app):
    checkout = envelope("stripe/checkout.session.completed.subscription.data-fragment.pay-rails.json",
                        "checkout.session.completed", "evt_checkout_sub")
    assert post(app, checkout).json()["conversions"][0]["kind"] == "purchase"
    invoice = fixture(INVOICE)  # billing_reason subscription_create: the same money
    invoice["livemode"] = True
    r = post(app, invoice)
    assert r.json()["status"] == "ignored" and "same money" in r.json()["reason"]
    assert [c.kind for c in app.conversions()] == ["purchase"]


def test_renewal_pre_basil_and_basil_shapes(app):
    old = fixture(INVOICE)
    old.update(id="evt_renew_old", livemode=True)
    inv = old["data"]["object"]
    inv.update(id="in_old", billing_reason="subscription_cycle",
               subscription_details={"metadata": {"irclickid": "click-old"}})
    basil = copy.deepcopy(old)
    basil["id"] = "evt_renew_basil"
    b = basil["data"]["object"]
    for gone in ("subscription", "subscription_details", "charge", "paid", "payment_intent", "tax"):
        b.pop(gone, None)
    b.update(id="in_basil", total_taxes=[{"amount": 700}, {"amount": 300}],
             parent={"type": "subscription_details", "subscription_details": {
                 "subscription": "sub_basil", "metadata": {"simmer_anonymous_id": "anon-basil"}}})
    assert post(app, old).json()["conversions"][0]["kind"] == "subscription_renewed"
    assert post(app, basil).json()["conversions"][0]["total"] == "700.00"
    first, second = app.conversions()
    assert first.attribution == {"irclickid": "click-old"}
    assert first.refs["subscription"] == "sub_1PBXo5RxqlZt79sD3kdxoDVi"
    assert first.customer.email == "test12@email.com"
    assert second.attribution == {"simmer_anonymous_id": "anon-basil"}
    assert second.refs["subscription"] == "sub_basil" and second.tax == Decimal("10.00")


def test_subscription_start_counted_once_after_incomplete(app):
    created = fixture(SUB_CREATED)
    created["livemode"] = True
    r = post(app, created)
    assert r.json()["status"] == "ignored" and "incomplete" in r.json()["reason"]
    updated = copy.deepcopy(created)
    updated.update(id="evt_sub_updated", type="customer.subscription.updated")
    updated["data"]["object"]["status"] = "active"
    updated["data"]["previous_attributes"] = {"status": "incomplete"}
    assert post(app, updated).json()["conversions"][0]["kind"] == "subscription_started"
    other_update = copy.deepcopy(updated)
    other_update["id"] = "evt_sub_updated_2"
    other_update["data"]["previous_attributes"] = {"cancel_at_period_end": True}
    assert post(app, other_update).json()["status"] == "ignored"
    deleted = envelope("stripe/customer.subscription.deleted.data-fragment.pay-rails.json",
                       "customer.subscription.deleted", "evt_deleted")
    assert post(app, deleted).json()["conversions"][0]["kind"] == "subscription_cancelled"
    assert [c.kind for c in app.conversions()] == ["subscription_started", "subscription_cancelled"]


def test_refund_created_and_charge_refunded_dedupe(app):
    charge_event = envelope("stripe/charge.refunded.data-fragment.pay-rails.json",
                            "charge.refunded", "evt_charge_refunded")
    refund = copy.deepcopy(charge_event["data"]["object"]["refunds"]["data"][0])
    refund_event = {"id": "evt_refund_created", "object": "event", "type": "refund.created",
                    "created": 1658982465, "livemode": True, "data": {"object": refund}}
    assert post(app, refund_event).json()["conversions"] == [
        {"kind": "refund", "order_key": "re_3LQOJoKXBGcbgpbZ10i9Mg75", "total": "5.00",
         "currency": "USD"}]
    r = post(app, charge_event)
    assert r.json()["conversions"] == [] and len(r.json()["already_recorded"]) == 1


def test_one_refund_is_counted_once_without_the_refunds_list(app):
    """API >= 2022-11-15: charge.refunded has no refunds list. It used to add a second refund
    keyed on "ch_…:cumulative" next to refund.created's re_ key (finding 2)."""
    charge_event = envelope("stripe/charge.refunded.data-fragment.pay-rails.json",
                            "charge.refunded", "evt_charge_refunded",
                            previous={"amount_refunded": 0, "refunded": False})
    refund = copy.deepcopy(charge_event["data"]["object"]["refunds"]["data"][0])
    del charge_event["data"]["object"]["refunds"]
    refund_event = {"id": "evt_refund_created", "object": "event", "type": "refund.created",
                    "created": 1658982465, "livemode": True, "data": {"object": refund}}
    assert post(app, refund_event).json()["status"] == "accepted"
    r = post(app, charge_event)
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    assert "subscribe to refund.created" in r.json()["reason"]
    assert [(c.kind, c.order_key, c.total) for c in app.conversions()] == [
        ("refund", "re_3LQOJoKXBGcbgpbZ10i9Mg75", Decimal("5.00"))]
    # Even alone (refund.created not subscribed), it records nothing under a charge key.
    alone = copy.deepcopy(charge_event)
    alone["id"] = "evt_charge_refunded_2"
    alone["data"]["object"]["amount_refunded"] = 1200
    alone["data"]["previous_attributes"] = {"amount_refunded": 500}
    assert post(app, alone).json()["status"] == "ignored"
    assert len(app.conversions()) == 1


def test_charge_refunded_list_gives_each_refund_once(app):
    charge_event = envelope("stripe/charge.refunded.data-fragment.pay-rails.json",
                            "charge.refunded", "evt_charge_refunded_a")
    charge = charge_event["data"]["object"]
    first = charge["refunds"]["data"][0]
    second = {**copy.deepcopy(first), "id": "re_second", "amount": 300,
              "created": (first.get("created") or 0) + 10}
    charge["refunds"]["data"] = [second, first]
    r = post(app, charge_event).json()
    assert [(c["order_key"], c["total"]) for c in r["conversions"]] == [
        ("re_3LQOJoKXBGcbgpbZ10i9Mg75", "5.00"), ("re_second", "3.00")]
    refund_event = {"id": "evt_refund_created_2", "object": "event", "type": "refund.created",
                    "created": 1658982475, "livemode": True, "data": {"object": second}}
    again = post(app, refund_event).json()
    assert again["conversions"] == [] and len(again["already_recorded"]) == 1
    assert len(app.conversions()) == 2


def test_line_items_and_promo_code_enrichment(stripe_api, tmp_path):
    session = checkout_event(event_id="evt_enrich")["data"]["object"]
    stripe_api.line_items[session["id"]] = [
        line_item("price_A", "prod_A", "Pro plan", 3000, 1),
        line_item("price_B", "prod_B", "Seat", 950, 2),
    ]
    stripe_api.promotion_codes["promo_123"] = "SPRING25"
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}",
                        stripe={"webhook_secrets": "whsec_x", "api_key": STRIPE_API_KEY,
                                "api_base": stripe_api.url})
    from relay.sources.stripe import StripeSource

    event = checkout_event(event_id="evt_enrich", session_id=session["id"])
    event["data"]["object"]["discounts"] = [{"coupon": None, "promotion_code": "promo_123"}]
    [conv] = StripeSource(settings.stripe).parse(body_of(event)).conversions
    enricher = build_enricher(settings)
    assert enricher is not None

    async def run():
        try:
            first = await enricher(conv, "impact")
            second = await enricher(conv, "simmer")  # cached: no second API call
            return first, second
        finally:
            await enricher.aclose()

    first, second = asyncio.run(run())
    assert [(i.sku, i.quantity, i.subtotal) for i in first.items] == [
        ("price_A", 1, Decimal("30.00")), ("price_B", 2, Decimal("19.00"))]
    assert first.promo_code == "SPRING25" and second == first
    assert len(stripe_api.accepted) == 2

    # An API failure degrades: the conversion goes out unchanged.
    missing = conv.replace(order_key="cs_unknown_session", refs={})
    broken = build_enricher(settings)
    assert asyncio.run(broken(missing, "impact")) == missing


def test_line_items_reach_impact(tmp_path, simmer, impact, relay_factory, stripe_api):
    event = checkout_event(metadata={"irclickid": "click-items"})
    session_id = event["data"]["object"]["id"]
    stripe_api.line_items[session_id] = [line_item("price_A", "prod_A", "Pro plan", 4900, 1)]
    env = core_env(tmp_path / "relay.db", simmer.url, impact.url)
    env.update(RELAY_STRIPE__API_KEY=STRIPE_API_KEY, RELAY_STRIPE__API_BASE=stripe_api.url)
    proc = relay_factory(env)
    assert proc.post_stripe(event).status_code == 200
    wait_until(lambda: impact.accepted and simmer.accepted, message="both destinations")
    form = impact.accepted[0].parsed
    assert form["ItemSku1"] == "price_A" and form["ItemQuantity1"] == "1"
    assert STRIPE_API_KEY not in proc.logs()


def test_worker_survives_a_raising_enricher(tmp_path, simmer, impact):
    """The worker delivers without enrichment when the enrich hook itself raises."""
    import time

    from starlette.testclient import TestClient

    from relay.app import create_app
    from relay.settings import Settings

    async def broken(conversion, destination):
        raise RuntimeError("enrichment exploded")

    env = core_env(tmp_path / "w.db", simmer.url, impact.url)
    settings = Settings(
        database_url=env["RELAY_DATABASE_URL"],
        stripe={"webhook_secrets": "whsec_test_secret"},
        simmer={"secret_key": env["RELAY_SIMMER__SECRET_KEY"],
                "project_id": env["RELAY_SIMMER__PROJECT_ID"], "url": env["RELAY_SIMMER__URL"]},
        worker={"poll_seconds": 0.2},
    )
    app = create_app(settings, worker_options={"enrich": broken})
    with TestClient(app) as client:
        body = body_of(checkout_event())
        assert client.post("/webhooks/stripe", content=body,
                           headers=stripe_headers(body)).status_code == 200
        deadline = time.time() + 10
        while not simmer.accepted and time.time() < deadline:
            time.sleep(0.05)
    assert simmer.accepted


def test_enrichment_stripe_client_has_a_short_timeout(stripe_api, tmp_path, monkeypatch):
    """A slow Stripe API degrades after relay's timeout, not the SDK's 80 s default."""
    import time

    from relay import enrich
    from relay.sources.stripe import StripeSource

    monkeypatch.setattr(enrich, "TIMEOUT_SECONDS", 0.5)
    session = checkout_event(event_id="evt_slow")["data"]["object"]
    stripe_api.line_items[session["id"]] = [line_item("price_A", "prod_A", "Pro plan", 3000, 1)]
    stripe_api.delay = 6.0
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}",
                        stripe={"webhook_secrets": "whsec_x", "api_key": STRIPE_API_KEY,
                                "api_base": stripe_api.url})
    [conv] = StripeSource(settings.stripe).parse(body_of(checkout_event(
        event_id="evt_slow", session_id=session["id"]))).conversions
    enricher = build_enricher(settings)
    started = time.monotonic()
    assert asyncio.run(enricher(conv, "impact")) == conv  # optional data: delivered without it
    assert time.monotonic() - started < 4.5  # relay's 0.5 s, with room for a loaded machine; not 6 s
    assert len(stripe_api.requests) == 1  # no SDK retries
