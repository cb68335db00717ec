"""Stripe thin events (`v2.core.event`, `v1.`-prefixed types, `related_object` only): stored
by the webhook, resolved by the worker with RELAY_STRIPE__API_KEY into exactly the
conversion the snapshot event gives (real `relay serve`, the Stripe API stand-in)."""

from __future__ import annotations

import copy
import json
import sqlite3
import time
import uuid
from datetime import UTC, datetime

from tests.backfill.conftest import STRIPE_KEY, env_for
from tests.helpers import checkout_event, fixture, wait_until


def thin_event(snapshot_type: str, obj: dict, *, livemode: bool = True,
               event_id: str | None = None) -> dict:
    """A thin event as an event destination POSTs it (docs.stripe.com/api/v2/core/events)."""
    object_type = obj["object"]
    resource = {"checkout.session": "checkout/sessions", "invoice": "invoices",
                "subscription": "subscriptions", "refund": "refunds", "charge": "charges"}[object_type]
    return {
        "id": event_id or f"evt_test_65{uuid.uuid4().hex}{uuid.uuid4().hex[:12]}",
        "object": "v2.core.event",
        "type": f"v1.{snapshot_type}",
        "livemode": livemode,
        "created": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "context": None,
        "reason": None,
        "related_object": {"id": obj["id"], "type": object_type,
                           "url": f"/v1/{resource}/{obj['id']}"},
    }


def serve_object(stripe_api, obj: dict) -> None:
    stripe_api.objects[thin_url(obj)] = obj


def thin_url(obj: dict) -> str:
    return thin_event("checkout.session.completed", obj)["related_object"]["url"] \
        if obj["object"] == "checkout.session" else f"/v1/subscriptions/{obj['id']}"


def test_thin_and_snapshot_endpoints_on_one_relay_count_once(tmp_path, simmer, impact, stripe_api,
                                                             relay_factory):
    snapshot = checkout_event(metadata={"irclickid": "click-thin-1"})
    session = snapshot["data"]["object"]
    serve_object(stripe_api, session)
    relay = relay_factory(env_for(tmp_path / "relay.db", simmer, impact, stripe=stripe_api))
    thin = thin_event("checkout.session.completed", session)
    answer = relay.post_stripe(thin).json()
    assert answer == {"status": "fetching", "event_id": thin["id"],
                      "reason": f"thin event: the worker fetches checkout.session {session['id']}"}
    wait_until(lambda: simmer.conversions and impact.actions, message="the purchase delivered")
    [action] = impact.actions.values()
    assert action["ClickId"] == "click-thin-1"  # the fetched session's metadata
    [body] = simmer.conversions.values()
    assert body["order_id"] == session["id"] and body["email"] == "buyer@example.com"
    # The snapshot endpoint delivers the same purchase: recorded already, nothing sent again.
    again = relay.post_stripe(snapshot).json()
    assert again["status"] == "accepted" and again["conversions"] == []
    assert [c["order_key"] for c in again["already_recorded"]] == [session["id"]]
    time.sleep(1.0)
    assert set(simmer.writes.values()) == {1} and impact.duplicates == []
    events = relay.cli("events", "--json").stdout
    statuses = {json.loads(line)["event_id"]: json.loads(line)["status"] for line in events.splitlines()}
    assert statuses == {thin["id"]: "accepted", snapshot["id"]: "accepted"}
    assert STRIPE_KEY not in relay.logs()


def test_snapshot_first_then_thin_is_already_recorded(tmp_path, simmer, impact, stripe_api,
                                                      relay_factory):
    snapshot = checkout_event()
    session = snapshot["data"]["object"]
    serve_object(stripe_api, session)
    relay = relay_factory(env_for(tmp_path / "relay.db", simmer, impact, stripe=stripe_api))
    assert relay.post_stripe(snapshot).json()["status"] == "accepted"
    thin = thin_event("checkout.session.completed", session)
    assert relay.post_stripe(thin).json()["status"] == "fetching"
    wait_until(lambda: f"thin event={thin['id']} type=v1.checkout.session.completed accepted "
                       f"(checkout.session {session['id']}) conversions=- "
                       f"known=purchase:{session['id']} deliveries=0" in relay.logs(),
               message="the thin event resolved as already recorded")
    assert len(relay.deliveries()) == 2 and relay.post_stripe(thin).json()["status"] == "duplicate"


def test_without_the_key_it_is_quarantined_and_replays_once_set(tmp_path, simmer, impact,
                                                                 stripe_api, relay_factory):
    session = checkout_event()["data"]["object"]
    serve_object(stripe_api, session)
    env = env_for(tmp_path / "relay.db", simmer, impact, stripe=stripe_api)
    keyless = {k: v for k, v in env.items() if k != "RELAY_STRIPE__API_KEY"}
    relay = relay_factory(keyless)
    thin = thin_event("checkout.session.completed", session)
    answer = relay.post_stripe(thin).json()
    assert answer["status"] == "quarantined"
    assert "RELAY_STRIPE__API_KEY, which is not set; set it, then run relay replay" in answer["reason"]
    assert stripe_api.requests == [] and simmer.requests == []  # nothing fetched, nothing sent
    relay.stop()

    relay = relay_factory(env, port=relay.port)
    out = relay.cli("replay").stdout
    assert f"{thin['id']} (v1.checkout.session.completed): quarantined → fetching" in out
    wait_until(lambda: simmer.conversions and impact.actions, message="delivered after the replay")
    [body] = simmer.conversions.values()
    assert body["order_id"] == session["id"]


def test_subscription_update_reads_changes_to_tell_a_start(tmp_path, simmer, impact, stripe_api,
                                                           relay_factory):
    sub = copy.deepcopy(fixture("stripe/customer.subscription.created.api-2023-10-16.alimehndi.json")
                        ["data"]["object"])
    sub.update(status="active", livemode=True, metadata={"irclickid": "click-sub"})
    stripe_api.objects[f"/v1/subscriptions/{sub['id']}"] = sub
    relay = relay_factory(env_for(tmp_path / "relay.db", simmer, impact, stripe=stripe_api))
    thin = thin_event("customer.subscription.updated", sub)
    stripe_api.v2_events[thin["id"]] = {**thin, "changes": {"before": {"status": "incomplete"},
                                                            "after": {"status": "active"}}}
    assert relay.post_stripe(thin).json()["status"] == "fetching"
    other = thin_event("customer.subscription.updated", sub)  # a plain update: not a start
    stripe_api.v2_events[other["id"]] = {**other, "changes": {"before": {"metadata": {}},
                                                              "after": {"metadata": {"a": "b"}}}}
    assert relay.post_stripe(other).json()["status"] == "fetching"

    def statuses() -> dict[str, str]:
        lines = relay.cli("events", "--json").stdout.splitlines()
        return {json.loads(x)["event_id"]: json.loads(x)["status"] for x in lines}

    wait_until(lambda: set(statuses().values()) == {"accepted", "ignored"}, message="both resolved")
    assert statuses() == {thin["id"]: "accepted", other["id"]: "ignored"}
    with sqlite3.connect(tmp_path / "relay.db") as conn:
        rows = conn.execute("SELECT kind, order_key FROM conversions").fetchall()
    assert rows == [("subscription_started", sub["id"])]


def test_an_object_stripe_does_not_have_is_quarantined_with_the_reason(tmp_path, simmer, impact,
                                                                       stripe_api, relay_factory):
    session = checkout_event()["data"]["object"]  # never served
    relay = relay_factory(env_for(tmp_path / "relay.db", simmer, impact, stripe=stripe_api))
    thin = thin_event("checkout.session.completed", session)
    assert relay.post_stripe(thin).json()["status"] == "fetching"

    def quarantined() -> str:
        out = relay.cli("events", "--status", "quarantined", "--json").stdout
        return out if thin["id"] in out else ""

    row = json.loads(wait_until(quarantined, message="the thin event quarantined"))
    assert row["reason"].startswith(
        f"thin event: fetching checkout.session {session['id']} failed: Stripe GET "
        f"/v1/checkout/sessions/{session['id']} answered 404 (resource_missing: No such checkout")
    assert simmer.requests == []


def test_a_fetch_that_may_pass_is_tried_again(tmp_path, simmer, impact, stripe_api, relay_factory):
    session = checkout_event()["data"]["object"]
    serve_object(stripe_api, session)
    stripe_api.fail_next(2, 503)  # the first fetch and its one retry
    env = env_for(tmp_path / "relay.db", simmer, impact, stripe=stripe_api)
    relay = relay_factory(env)
    thin = thin_event("checkout.session.completed", session)
    assert relay.post_stripe(thin).json()["status"] == "fetching"
    wait_until(lambda: "trying again in 30 s" in relay.logs(), message="a transient failure")
    assert not simmer.requests
    wait_until(lambda: simmer.conversions, timeout=60, message="delivered on the next try")


def test_thin_events_relay_does_not_relay_are_ignored_and_never_fetched(tmp_path, simmer, impact,
                                                                        stripe_api, relay_factory):
    relay = relay_factory(env_for(tmp_path / "relay.db", simmer, impact, stripe=stripe_api))
    customer = {"id": "cus_ThinIgnored", "object": "customer"}
    thin = thin_event("checkout.session.completed", {**customer, "object": "checkout.session"})
    thin["type"] = "v1.customer.created"
    assert relay.post_stripe(thin).json() == {
        "status": "ignored", "reason": "event type 'v1.customer.created' is not relayed"}
    test_mode = thin_event("checkout.session.completed", checkout_event()["data"]["object"],
                           livemode=False)
    env = env_for(tmp_path / "other.db", simmer, impact, stripe=stripe_api)
    env["RELAY_DELIVER_TEST_EVENTS"] = "false"
    other = relay_factory(env)
    assert other.post_stripe(test_mode).json()["status"] == "ignored"
    broken = thin_event("checkout.session.completed", checkout_event()["data"]["object"])
    del broken["related_object"]
    answer = relay.post_stripe(broken).json()
    assert answer["status"] == "quarantined" and "has no related_object" in answer["reason"]
    assert stripe_api.requests == []
