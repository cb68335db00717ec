"""`relay backfill stripe` as a user runs it: a real `relay serve`, a real SQLite file, the
Stripe API stand-in for what happened while relay was down, Simmer and impact.com out."""

from __future__ import annotations

import copy
import json
import time
from collections import Counter

from relay.processors.stripe import RELAYED_TYPES
from relay.settings import StripeSettings
from relay.sources.stripe import StripeSource
from tests.backfill.conftest import STRIPE_KEY, env_for
from tests.helpers import body_of, checkout_event, fixture, wait_until


def purchases(n: int, start: float, step: float = 60.0) -> list[dict]:
    """n paid Checkout purchases, one every `step` seconds from `start` (distinct buyers)."""
    return [checkout_event(amount=1000 + i, email=f"buyer{i}@example.com",
                           customer=f"cus_Backfill{i:04d}", created=int(start + i * step))
            for i in range(n)]


def test_relay_down_for_15_of_25_purchases_backfill_delivers_each_once(
        tmp_path, simmer, impact, stripe_api, relay_factory):
    now = time.time()
    events = purchases(25, now - 3600)  # the last hour
    for event in events:
        stripe_api.add_event(event)
    stripe_api.page_cap = 10  # three pages: starting_after carries on where each ends
    env = env_for(tmp_path / "relay.db", simmer, impact, stripe=stripe_api)
    relay = relay_factory(env)
    for event in events[:10]:  # relay was up for the first ten
        assert relay.post_stripe(event).json()["status"] == "accepted"
    wait_until(lambda: len(simmer.conversions) == 10 and len(impact.actions) == 10,
               message="the first ten delivered")
    relay.stop()  # … and down for the other fifteen (Stripe gave up retrying)
    relay.start()

    out = relay.cli("backfill", "stripe", "--since", "2h")
    assert "25 events found; 15 new conversions recorded (30 deliveries planned), " \
           "10 already recorded, 0 ignored" in out.stdout
    for event in events:
        assert event["id"] in out.stdout  # one line per event found
    # The Events API was asked only for the types relay relays, 100 at a time, from 2 h ago.
    first, second, third = stripe_api.queries_of("/v1/events")
    assert sorted(v for k, v in first if k == "types[]") == sorted(RELAYED_TYPES)
    params = dict(first)
    assert params["limit"] == "100" and abs(int(params["created[gte]"]) - (now - 7200)) < 60
    newest_first = sorted(events, key=lambda e: e["created"], reverse=True)
    assert dict(second)["starting_after"] == newest_first[9]["id"]
    assert dict(third)["starting_after"] == newest_first[19]["id"]

    sessions = {e["data"]["object"]["id"] for e in events}
    wait_until(lambda: len(simmer.conversions) == 25 and len(impact.actions) == 25,
               timeout=60, message="all 25 purchases at both destinations")
    time.sleep(1.0)  # let any (wrong) second send surface
    assert {c.split(":")[-1] for c in simmer.conversions} == sessions
    assert set(simmer.writes.values()) == {1} and impact.duplicates == []
    assert set(impact.actions) == {e["data"]["object"]["payment_intent"] for e in events}

    # A late webhook of a backfilled event is a duplicate, and nothing more is sent.
    late = relay.post_stripe(events[20])
    assert late.json() == {"status": "duplicate", "event_id": events[20]["id"]}
    # Running the same backfill again records nothing new.
    again = relay.cli("backfill", "stripe", "--since", "2h")
    assert "0 new conversions recorded (0 deliveries planned), 25 already recorded" in again.stdout
    assert len(relay.deliveries()) == 50
    assert STRIPE_KEY not in relay.logs() + out.stdout + out.stderr


def test_dry_run_records_nothing_and_says_what_it_would(tmp_path, simmer, impact, stripe_api,
                                                       relay_factory):
    events = purchases(4, time.time() - 600)
    for event in events:
        stripe_api.add_event(event)
    relay = relay_factory(env_for(tmp_path / "relay.db", simmer, impact, stripe=stripe_api))
    assert relay.post_stripe(events[0]).json()["status"] == "accepted"
    out = relay.cli("backfill", "stripe", "--since", "1h", "--dry-run")
    assert "4 events found; 3 new conversions would be recorded, 1 already recorded" in out.stdout
    assert out.stdout.count("would record purchase cs_") == 3
    assert len(relay.deliveries()) == 2  # only the webhook's
    wait_until(lambda: len(simmer.conversions) == 1, message="the webhook's purchase")
    assert len(simmer.conversions) == 1


def test_since_older_than_30_days_is_clamped_with_a_note(tmp_path, simmer, impact, stripe_api,
                                                         relay_factory):
    relay = relay_factory(env_for(tmp_path / "relay.db", simmer, impact, stripe=stripe_api),
                          start=False)
    out = relay.cli("backfill", "stripe", "--since", "45d")
    assert "Stripe's API keeps 30 days of events: reading from" in out.stderr
    assert "0 events found" in out.stdout
    [query] = stripe_api.queries_of("/v1/events")
    assert int(dict(query)["created[gte]"]) >= time.time() - 30 * 86400 - 60


def test_old_and_new_api_shapes_give_the_same_renewal(tmp_path, simmer, impact, stripe_api,
                                                      relay_factory):
    """The Events API renders an event in the version of its creation time (the account's
    default then), not the webhook endpoint's: the parser reads both shapes alike."""
    old = renewal_2023(metadata={"irclickid": "click-renew-1"})
    new = basil_of(old)
    source = StripeSource(StripeSettings(webhook_secrets="whsec_x"))
    [a], [b] = source.parse(body_of(old)).conversions, source.parse(body_of(new)).conversions
    # Only the pre-basil shape names the invoice's PaymentIntent and charge (what a refund of
    # it names, relay/refunds.py): basil removed both from the invoice.
    links = ("payment_intent", "charge")
    assert {k: v for k, v in a.refs.items() if k not in links} == b.refs
    assert set(a.refs) - set(b.refs) == set(links)
    assert (a.kind, a.order_key, a.total, a.currency, a.metadata) == \
           (b.kind, b.order_key, b.total, b.currency, b.metadata)
    assert a.kind == "subscription_renewed" and a.metadata == {"irclickid": "click-renew-1"}

    # The API lists the 2023-10-16 rendering; the endpoint (pinned to basil) would have got
    # the new one: backfill records it, and the late basil webhook is a duplicate.
    stripe_api.add_event(old)
    relay = relay_factory(env_for(tmp_path / "relay.db", simmer, impact, stripe=stripe_api))
    out = relay.cli("backfill", "stripe", "--since", "1h")
    assert f"recorded subscription_renewed {a.order_key}" in out.stdout
    assert relay.post_stripe(new).json()["status"] == "duplicate"
    wait_until(lambda: impact.actions, message="the renewal at impact")
    [action] = impact.actions.values()
    assert action["ClickId"] == "click-renew-1"


def renewal_2023(metadata: dict[str, str]) -> dict:
    """A renewal `invoice.paid` as API version 2023-10-16 renders it (top-level subscription,
    subscription_details, tax)."""
    event = copy.deepcopy(fixture("stripe/invoice.paid.api-2023-10-16.alimehndi.json"))
    event.update(id="evt_1RenewalBackfill0000001", created=int(time.time()) - 300, livemode=True)
    invoice = event["data"]["object"]
    invoice.update(billing_reason="subscription_cycle", livemode=True,
                   subscription_details={"metadata": metadata})
    invoice["status_transitions"]["paid_at"] = event["created"]
    return event


def basil_of(event: dict) -> dict:
    """The same event as 2025-03-31.basil and later render it (parent.subscription_details,
    total_taxes; no subscription, tax, charge or paid at the top)."""
    basil = copy.deepcopy(event)
    invoice = basil["data"]["object"]
    details = invoice.pop("subscription_details")
    sub = invoice.pop("subscription")
    tax = invoice.pop("tax", None)
    for key in ("charge", "paid", "payment_intent", "discount", "total_tax_amounts"):
        invoice.pop(key, None)
    invoice["parent"] = {"type": "subscription_details", "quote_details": None,
                         "subscription_details": {"subscription": sub, **details}}
    invoice["total_taxes"] = [{"amount": tax or 0, "tax_behavior": "exclusive"}] if tax else []
    basil["api_version"] = "2025-03-31.basil"
    return basil


def test_backfilled_event_reaches_simmer_with_its_data(tmp_path, simmer, impact, stripe_api,
                                                       relay_factory):
    """What the destination gets from a backfilled event is what the webhook would have sent."""
    [event] = purchases(1, time.time() - 120)
    event["data"]["object"]["metadata"] = {"simmer_anonymous_id": "anon-backfill-1"}
    stripe_api.add_event(event)
    relay = relay_factory(env_for(tmp_path / "relay.db", simmer, impact, stripe=stripe_api))
    relay.cli("backfill", "stripe", "--since", "10m")
    wait_until(lambda: simmer.conversions, message="the purchase at Simmer")
    [body] = simmer.conversions.values()
    assert body["anonymous_id"] == "anon-backfill-1" and body["email"] == "buyer0@example.com"
    assert body["order_id"] == event["data"]["object"]["id"]
    assert json.loads(json.dumps(Counter(d["destination"] for d in relay.deliveries()))) == {
        "simmer": 1, "impact": 1}
