"""Refunds reverse or reduce the purchase's action at impact.com (Actions API).

Real parts: signed webhooks of every processor that has refunds (Stripe, Lemon Squeezy,
Paddle, Chargebee) → `relay serve` (a real process, a real SQLite file) → the impact
stand-in, which credits an action only once the conversion's submission completes and
applies `PUT /Actions` (Amount) and `DELETE /Actions` (reversal) when theirs do. What a
user checks: the partner's action at impact, and `relay deliveries`.
"""

from __future__ import annotations

import copy
import time
import uuid
from decimal import ROUND_HALF_UP, Decimal

from tests.conftest import core_env
from tests.helpers import checkout_event, fixture, wait_until
from tests.sources.conftest import CB_PASSWORD, CB_USER, LS_SECRET, PADDLE_SECRET
from tests.sources.util import basic, dumps, ls_headers, paddle_headers

CENT = Decimal("0.01")


def every_source_env(tmp_path, simmer, impact) -> dict[str, str]:
    return core_env(tmp_path / "relay.db", simmer.url, impact.url) | {
        "RELAY_IMPACT__FOLLOW_UP_SECONDS": "0.3",
        "RELAY_WORKER__POLL_SECONDS": "0.3",
        "RELAY_LEMONSQUEEZY__SIGNING_SECRET": LS_SECRET,
        "RELAY_PADDLE__WEBHOOK_SECRETS": PADDLE_SECRET,
        "RELAY_CHARGEBEE__USERNAME": CB_USER,
        "RELAY_CHARGEBEE__PASSWORD": CB_PASSWORD,
    }


def refund_rows(relay) -> list[dict]:
    return [r for r in relay.deliveries(destination="impact") if r["kind"] == "refund"]


def confirmed(relay, order_key: str, *states: str, timeout: float = 30.0) -> dict:
    def check() -> dict | None:
        rows = {r["order_key"]: r for r in relay.deliveries(destination="impact")}
        row = rows.get(order_key)
        return row if row and row["confirmation"] in states else None

    return wait_until(check, timeout, message=f"{order_key} {states} at impact")


def stripe_refund(pi: str, amount: int, refund_id: str | None = None) -> dict:
    suffix = uuid.uuid4().hex
    return {
        "id": f"evt_1{suffix[:23]}", "object": "event", "type": "refund.created",
        "created": int(time.time()), "livemode": True, "api_version": "2025-06-30.basil",
        "data": {"object": {
            "id": refund_id or f"re_3{suffix[:23]}", "object": "refund", "amount": amount,
            "currency": "usd", "charge": f"ch_3{suffix[:23]}", "payment_intent": pi,
            "status": "succeeded", "metadata": {}, "created": int(time.time()),
        }},
    }


def test_stripe_partial_then_full_refund_reduce_then_reverse_the_action(
        tmp_path, simmer, impact, relay_factory):
    relay = relay_factory(every_source_env(tmp_path, simmer, impact))
    purchase = checkout_event(amount=5500, tax=500, metadata={"irclickid": "click-refund"})
    session, pi = purchase["data"]["object"]["id"], purchase["data"]["object"]["payment_intent"]
    assert relay.post_stripe(purchase).status_code == 200
    confirmed(relay, session, "accepted")
    assert impact.credited[pi].amount == Decimal("50.00")  # net of the 5.00 tax

    first = stripe_refund(pi, 1100)  # 11 of 55 back: 4/5 of the sale stands
    assert relay.post_stripe(first).status_code == 200
    refund_key = first["data"]["object"]["id"]
    row = confirmed(relay, refund_key, "accepted")
    assert row["status"] == "delivered"
    [change] = impact.changes
    assert change.method == "PUT"
    assert change.parsed == {"ActionTrackerId": "9876", "OrderId": pi, "Amount": "40.00",
                             "Reason": "ITEM_RETURNED"}
    assert impact.credited[pi].amount == Decimal("40.00")
    assert impact.credited[pi].state == "PENDING"

    # The same refund again (Stripe retries, or charge.refunded for it): nothing changes.
    assert relay.post_stripe(first).json()["status"] == "duplicate"
    again = copy.deepcopy(first)
    again["id"] = "evt_1" + uuid.uuid4().hex[:23]
    assert relay.post_stripe(again).json()["conversions"] == []

    rest = stripe_refund(pi, 4400)
    assert relay.post_stripe(rest).status_code == 200
    confirmed(relay, rest["data"]["object"]["id"], "accepted")
    assert [c.method for c in impact.changes] == ["PUT", "DELETE"]
    assert impact.changes[1].parsed == {"ActionTrackerId": "9876", "OrderId": pi,
                                        "DispositionCode": "ITEM_RETURNED"}
    assert impact.credited[pi].state == "REVERSED"
    assert len(refund_rows(relay)) == 2
    shown = relay.cli("deliveries", "--id", str(row["id"])).stdout
    assert "follow-up" in shown and "modification complete" in shown


def test_a_refund_goes_only_where_its_purchase_went(tmp_path, simmer, impact, relay_factory):
    relay = relay_factory(every_source_env(tmp_path, simmer, impact))
    # No click id and no customer: impact could not attribute it and never got it.
    unattributed = checkout_event(customer=None, metadata={})
    rejected = checkout_event(metadata={"irclickid": "click-no-contract"})
    impact.plan(rejected["data"]["object"]["payment_intent"], ("Contract Error", "CONTRACT_NOT_FOUND"))
    for event in (unattributed, rejected):
        assert relay.post_stripe(event).status_code == 200
    wait_until(lambda: relay.deliveries(status="failed", destination="impact"), message="rejection")
    refunds = [stripe_refund(e["data"]["object"]["payment_intent"], 1000)
               for e in (unattributed, rejected)]
    unknown = stripe_refund("pi_3NeverSeenByRelay00000000", 1000)
    for event in (*refunds, unknown):
        assert relay.post_stripe(event).status_code == 200

    def refund(event: dict) -> dict | None:
        key = event["data"]["object"]["id"]
        return next((r for r in refund_rows(relay) if r["order_key"] == key
                     and (r["status"] != "pending" or r["last_error"])), None)

    skipped = wait_until(lambda: (a := refund(refunds[0])) and a["status"] == "skipped" and a,
                         message="skipped refund")
    assert skipped["last_error"] == (
        "the purchase never reached impact (skipped: no attribution key: neither irclickid nor a"
        " customer id is known)")
    skipped = wait_until(lambda: (a := refund(refunds[1])) and a["status"] == "skipped" and a,
                         message="skipped refund")
    assert skipped["last_error"].startswith(
        "the purchase never reached impact (failed: impact rejected the conversion: Contract Error:"
        " CONTRACT_NOT_FOUND")
    # A refund whose purchase is not in the ledger waits for it (it may be on its way).
    waiting = wait_until(lambda: refund(unknown), message="waiting refund")
    assert waiting["status"] == "pending"
    assert waiting["last_error"] == "its purchase (pi_3NeverSeenByRelay00000000) is not in the ledger yet"
    assert impact.changes == []


def test_a_refund_right_after_its_purchase_waits_for_impact_to_confirm_it(
        tmp_path, simmer, impact, relay_factory):
    relay = relay_factory(every_source_env(tmp_path, simmer, impact))
    impact.progress = "manual"
    purchase = checkout_event(amount=2000, metadata={"irclickid": "click-early"})
    pi = purchase["data"]["object"]["payment_intent"]
    assert relay.post_stripe(purchase).status_code == 200
    refund = stripe_refund(pi, 2000)
    assert relay.post_stripe(refund).status_code == 200
    key = refund["data"]["object"]["id"]
    row = wait_until(lambda: next((r for r in refund_rows(relay) if r["last_error"]), None),
                     message="a waiting refund")
    assert row["status"] == "pending"
    assert row["last_error"] == "impact has not confirmed the purchase yet"
    assert row["attempts"] == 0  # waiting spends no attempt
    assert impact.changes == []
    impact.progress = "per_look"
    impact.step(1)
    confirmed(relay, key, "accepted")
    assert impact.credited[pi].state == "REVERSED"


def test_lemonsqueezy_cumulative_refunds(tmp_path, simmer, impact, relay_factory):
    relay = relay_factory(every_source_env(tmp_path, simmer, impact))
    order = fixture("lemonsqueezy/order_created.pay-rails.json")
    attrs = order["data"]["attributes"]
    attrs.update(setup_fee=0, subtotal=5000, total=5000)
    attrs["first_order_item"]["price"] = 5000
    order["meta"]["custom_data"] = {"irclickid": "click-ls"}

    def post(doc: dict) -> None:
        body = dumps(doc)
        assert relay.post("lemonsqueezy", body, ls_headers(body)).status_code == 200

    def refunded(cumulative: int) -> dict:
        doc = copy.deepcopy(order)
        doc["meta"]["event_name"] = "order_refunded"
        doc["data"]["attributes"].update(refunded=True, refunded_amount=cumulative,
                                         refunded_at="2023-01-20T10:00:00Z", status="partial_refund")
        return doc

    post(order)
    confirmed(relay, "order-1", "accepted")
    post(refunded(1000))  # 10.00 back
    confirmed(relay, "order-1:refund:1000", "accepted")
    assert impact.changes[0].parsed["Amount"] == "40.00"
    assert impact.credited["order-1"].amount == Decimal("40.00")
    post(refunded(1000))  # a replay: nothing new
    post(refunded(5000))  # all of it now
    confirmed(relay, "order-1:refund:5000", "accepted")
    assert [c.method for c in impact.changes] == ["PUT", "DELETE"]
    assert impact.credited["order-1"].state == "REVERSED"


def test_paddle_adjustment_reduces_the_action(tmp_path, simmer, impact, relay_factory):
    relay = relay_factory(every_source_env(tmp_path, simmer, impact))
    txn = fixture("paddle/transaction.completed.data-entity.paddle-python-sdk.json")
    txn["custom_data"] = {"irclickid": "click-pd"}

    def post(event_type: str, data: dict) -> None:
        body = dumps({"event_id": f"evt_{uuid.uuid4().hex}", "event_type": event_type,
                      "occurred_at": "2024-04-12T10:18:49.621022Z",
                      "notification_id": "ntf_01hv8wptq8987qeep44cyrewp9", "data": data})
        assert relay.post("paddle", body, paddle_headers(body)).status_code == 200

    post("transaction.completed", txn)
    confirmed(relay, txn["id"], "accepted")
    sale = impact.credited[txn["id"]].amount
    adjustment = fixture("paddle/adjustment.created.data-entity.paddle-python-sdk.json")
    adjustment.update(status="approved", transaction_id=txn["id"])
    adjustment["totals"].update(total="10000", subtotal="9200", tax="800")  # 100.00 of 652.15
    post("adjustment.updated", adjustment)
    confirmed(relay, adjustment["id"], "accepted")
    expected = (sale * Decimal("552.15") / Decimal("652.15")).quantize(CENT, ROUND_HALF_UP)
    assert impact.changes[0].parsed["Amount"] == str(expected)
    assert impact.credited[txn["id"]].amount == expected


def test_chargebee_full_refund_reverses_the_action(tmp_path, simmer, impact, relay_factory):
    relay = relay_factory(every_source_env(tmp_path, simmer, impact))

    def post(doc: dict) -> None:
        assert relay.post("chargebee", dumps(doc), basic()).status_code == 200

    post(fixture("chargebee/payment_succeeded.json"))  # invoice 22, 4,500.00
    confirmed(relay, "invoice-22", "accepted")
    refund = fixture("chargebee/payment_refunded.json")
    refund["content"]["invoice"]["id"] = "22"
    refund["content"]["transaction"]["amount"] = 450000
    post(refund)
    confirmed(relay, "txn_3Nl7oGgQqGG07E3V", "accepted")
    [change] = impact.changes
    assert change.method == "DELETE" and change.parsed["OrderId"] == "invoice-22"
    assert impact.credited["invoice-22"].state == "REVERSED"
