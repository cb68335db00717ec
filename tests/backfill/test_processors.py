"""`relay backfill paddle | lemonsqueezy | chargebee` as a user runs it: real `relay`
processes, a real SQLite file, the processors' API stand-ins, Simmer and impact.com out.

For each: purchases made while relay was down are recorded once and reach each
destination once; what the webhook already brought is "already recorded"; a late
webhook of a backfilled event is a duplicate."""

from __future__ import annotations

import copy
import sqlite3
import time
import uuid
from datetime import UTC, datetime

from tests.backfill.conftest import env_for
from tests.emulators.paddle_api import iso
from tests.helpers import fixture, wait_until
from tests.sources.util import basic, dumps, ls_headers, paddle_headers

# ------------------------------------------------------------------ Paddle


def paddle_transaction(n: int, at: float) -> dict:
    txn = copy.deepcopy(fixture("paddle/transaction.completed.data-entity.paddle-python-sdk.json"))
    txn.update(id=f"txn_01backfill{n:014d}", customer_id=f"ctm_01backfill{n:014d}",
               billed_at=iso(at), updated_at=iso(at), custom_data={"irclickid": f"click-pdl-{n}"})
    return txn


def test_paddle_events_missed_while_down(tmp_path, simmer, impact, paddle_api, relay_factory):
    now = time.time()
    events = []
    for n in range(6):
        at = now - 3000 + n * 300
        txn = paddle_transaction(n, at)
        paddle_api.customers[txn["customer_id"]] = {"id": txn["customer_id"], "name": f"Buyer {n}",
                                                   "email": f"paddle{n}@example.com"}
        events.append(paddle_api.add_event("transaction.completed", txn, at))
        paddle_api.add_event("transaction.paid", txn, at - 2)  # the same money, counted once
        paddle_api.add_event("customer.updated", {"id": txn["customer_id"]}, at - 1)  # not relayed
    paddle_api.add_event("transaction.completed", paddle_transaction(99, now - 9000), now - 9000)
    paddle_api.page_cap = 5  # several pages, newest first, via meta.pagination.next
    relay = relay_factory(env_for(tmp_path / "relay.db", simmer, impact, paddle=paddle_api))
    for event in events[:2]:
        body = dumps(event)
        assert relay.post("paddle", body, paddle_headers(body)).json()["status"] == "accepted"

    out = relay.cli("backfill", "paddle", "--since", "2h")
    assert "12 events found; 4 new conversions recorded (8 deliveries planned), " \
           "2 already recorded, 6 ignored" in out.stdout
    assert "txn_01backfill00000000000099" not in out.stdout  # before --since
    # Paged newest first (order_by=id[DESC]), following meta.pagination.next's cursor.
    queries = paddle_api.queries_of("/events")
    assert dict(queries[0]) == {"order_by": "id[DESC]", "per_page": "200"}
    assert all("after" in dict(q) for q in queries[1:]) and len(queries) >= 4

    wait_until(lambda: len(simmer.conversions) == 6 and len(impact.actions) == 6, timeout=60,
               message="six Paddle purchases at both destinations")
    assert set(simmer.writes.values()) == {1} and impact.duplicates == []
    assert {a["ClickId"] for a in impact.actions.values()} == {f"click-pdl-{n}" for n in range(6)}
    late = dumps(events[4])
    assert relay.post("paddle", late, paddle_headers(late)).json()["status"] == "duplicate"


# ------------------------------------------------------------------ Lemon Squeezy


def ls_order(n: int, at: float, **changes) -> dict:
    attrs = copy.deepcopy(fixture("lemonsqueezy/order_created.pay-rails.json")["data"]["attributes"])
    stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    attrs.update(identifier=str(uuid.uuid4()), order_number=n, user_email=f"ls{n}@example.com",
                 customer_id=7000 + n, total=5000 + n, subtotal=5000 + n, created_at=stamp,
                 updated_at=stamp, test_mode=False, **changes)
    return attrs


def ls_webhook(event_name: str, obj: dict, custom: dict | None = None) -> bytes:
    meta = {"event_name": event_name, "test_mode": False, "webhook_id": str(uuid.uuid4())}
    if custom:
        meta["custom_data"] = custom
    return dumps({"meta": meta, "data": obj})


def test_lemonsqueezy_orders_missed_while_down(tmp_path, simmer, impact, ls_api, relay_factory):
    now = time.time()
    orders = [ls_api.add("orders", ls_order(n, now - 3000 + n * 300), object_id=500 + n)
              for n in range(5)]
    stamp = datetime.fromtimestamp(now - 100, UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    refunded = ls_api.add("orders", ls_order(9, now - 2000, status="refunded", refunded=True,
                                             refunded_at=stamp, refunded_amount=5009), object_id=509)
    ls_api.add("orders", ls_order(8, now - 90000), object_id=508)  # a day ago: before --since
    ls_api.page_cap = 2  # page[number] 1, 2, 3 … via links.next
    env = env_for(tmp_path / "relay.db", simmer, impact, lemonsqueezy=ls_api)
    relay = relay_factory(env)
    first = ls_webhook("order_created", orders[0], custom={"irclickid": "click-ls-0"})
    assert relay.post("lemonsqueezy", first, ls_headers(first)).json()["status"] == "accepted"

    out = relay.cli("backfill", "lemonsqueezy", "--since", "2h")
    # 5 orders + the refunded one as placed (order_created) and its refund (order_refunded).
    assert "7 events found; 6 new conversions recorded" in out.stdout
    assert "1 already recorded, 0 ignored" in out.stdout
    assert "order_refunded:orders:509:5009" in out.stdout and "order-508" not in out.stdout
    assert "carry no custom_data" in out.stderr  # attribution is absent, and it says so
    orders_q = ls_api.queries_of("/v1/orders")
    assert dict(orders_q[0])["page[size]"] == "100" and dict(orders_q[1])["page[number]"] == "2"

    # The webhook-delivered order kept its attribution; the backfilled ones have none.
    wait_until(lambda: len(simmer.conversions) == 6 and len(impact.actions) == 6, timeout=60,
               message="six LS purchases at both destinations")
    assert set(simmer.writes.values()) == {1} and impact.duplicates == []
    clicks = {o: a.get("ClickId") for o, a in impact.actions.items()}
    assert clicks.pop("order-500") == "click-ls-0" and set(clicks.values()) == {None}
    late = ls_webhook("order_created", orders[3], custom={"irclickid": "too-late"})
    assert relay.post("lemonsqueezy", late, ls_headers(late)).json()["status"] == "duplicate"
    with sqlite3.connect(tmp_path / "relay.db") as conn:  # no destination here takes refunds
        refunds = conn.execute("SELECT order_key FROM conversions WHERE kind = 'refund'").fetchall()
    assert refunds == [(f"order-{refunded['id']}:refund:5009",)]


def test_lemonsqueezy_renewals_come_from_subscription_invoices(tmp_path, simmer, impact, ls_api,
                                                               relay_factory):
    now = time.time()
    invoice = copy.deepcopy(fixture("lemonsqueezy/subscription_payment_success.real-capture"
                                    ".hypertrophy-ai.json")["data"]["attributes"])
    stamp = datetime.fromtimestamp(now - 600, UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    invoice.update(billing_reason="renewal", status="paid", created_at=stamp, updated_at=stamp,
                   total=1500, subtotal=1500, currency="USD", user_email="renew@example.com",
                   test_mode=False)
    ls_api.add("subscription-invoices", invoice, object_id=77)
    relay = relay_factory(env_for(tmp_path / "relay.db", simmer, impact, lemonsqueezy=ls_api))
    out = relay.cli("backfill", "lemonsqueezy", "--since", "1h")
    assert "recorded subscription_renewed subscription-invoice-77" in out.stdout
    wait_until(lambda: simmer.conversions, message="the renewal at Simmer")
    [body] = simmer.conversions.values()
    assert body["order_id"] == "subscription-invoice-77" and str(body["total_revenue"]) == "15.00"


# ------------------------------------------------------------------ Chargebee


def cb_payment(n: int, at: int) -> dict:
    event = copy.deepcopy(fixture("chargebee/payment_succeeded.json"))
    event.update(id=f"ev_backfill{n:06d}", occurred_at=at)
    content = event["content"]
    content["invoice"].update(id=f"inv-bf-{n}", paid_at=at, date=at)
    content["transaction"].update(id=f"txn_bf{n:06d}", date=at)
    content["customer"].update(id=f"cus-bf-{n}", email=f"cb{n}@example.com")
    return event


def test_chargebee_events_missed_while_down(tmp_path, simmer, impact, cb_api, relay_factory):
    now = int(time.time())
    events = [cb_api.add_event(cb_payment(n, now - 3000 + n * 300)) for n in range(5)]
    renewed = copy.deepcopy(events[0])
    renewed.update(id="ev_backfill_renewed", event_type="subscription_renewed")
    cb_api.add_event(renewed)
    other = copy.deepcopy(events[1])
    other.update(id="ev_backfill_card", event_type="card_updated")  # not asked for
    cb_api.add_event(other)
    cb_api.page_cap = 2
    relay = relay_factory(env_for(tmp_path / "relay.db", simmer, impact, chargebee=cb_api))
    body = dumps(events[1])
    assert relay.post("chargebee", body, basic()).json()["status"] == "accepted"

    out = relay.cli("backfill", "chargebee", "--since", "2h")
    assert "6 events found; 4 new conversions recorded (8 deliveries planned), " \
           "1 already recorded, 1 ignored" in out.stdout
    assert "ev_backfill_card" not in out.stdout
    queries = cb_api.queries_of("/api/v2/events")
    params = dict(queries[0])
    assert params["sort_by[asc]"] == "occurred_at" and params["limit"] == "100"
    assert "payment_succeeded" in params["event_type[in]"]
    assert int(params["occurred_at[after]"]) < now - 7190 and "offset" in dict(queries[1])

    wait_until(lambda: len(simmer.conversions) == 5 and len(impact.actions) == 5, timeout=60,
               message="five Chargebee purchases at both destinations")
    assert set(simmer.writes.values()) == {1} and impact.duplicates == []
    late = dumps(events[3])
    assert relay.post("chargebee", late, basic()).json()["status"] == "duplicate"
