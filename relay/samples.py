"""Realistic, test-mode sample webhooks for `relay simulate`, signed like the processor does.

There is one sample per event each source handles (`EVENTS`), shaped like what the
processor really sends for it (the fixtures in ../shared/fixtures are the model:
Stripe API 2025-06-30.basil, Lemon Squeezy's JSON:API bodies, Paddle Billing
envelopes, Chargebee v2 events), so the parser turns each into the conversion a
real delivery would give, or ignores it for the reason it would ignore a real one
(`Sample.gives`). Every sample is test mode: Stripe's `livemode: false`, Lemon
Squeezy's `test_mode: true`, and for Paddle and Chargebee, which have no test flag,
the `relay_simulated` envelope key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
import stripe

DEFAULT_EMAIL = "buyer@example.com"
MONTH = 30 * 86400


@dataclass(frozen=True, slots=True)
class Sample:
    build: Callable[..., dict[str, Any]]
    gives: str  # the conversion kind the parser makes of it, or "ignored"
    email: bool = True  # the processor's payload carries the buyer's email
    note: str = ""  # why relay ignores it, for --help


def _hex(n: int) -> str:
    return uuid.uuid4().hex[:n]


def _seq() -> str:
    """A sequential-looking numeric id (Lemon Squeezy, Chargebee invoices)."""
    return str(uuid.uuid4().int % 10**7 + 10**6)


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now(now: float | None) -> float:
    return time.time() if now is None else now


# ---------------------------------------------------------------- Stripe (API 2025-06-30.basil)


def _stripe_envelope(
    event_type: str, obj: dict[str, Any], now: float, previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    data: dict[str, Any] = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    return {
        "id": f"evt_{_hex(24)}",
        "object": "event",
        "api_version": "2025-06-30.basil",
        "created": int(now),
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


def _stripe_checkout(
    event_type: str = "checkout.session.completed",
    *,
    email: str | None = None,
    metadata: dict[str, str] | None = None,
    amount: int = 4900,
    currency: str = "usd",
    now: float | None = None,
) -> dict[str, Any]:
    now = _now(now)
    suffix = uuid.uuid4().hex
    session = {
        "id": f"cs_test_{suffix}{suffix[:26]}",
        "object": "checkout.session",
        "amount_subtotal": amount,
        "amount_total": amount,
        "currency": currency,
        "customer": f"cus_{suffix[:14]}",
        "customer_details": {
            "email": email or DEFAULT_EMAIL,
            "name": "Sam Buyer",
            "address": {
                "country": "US",
                "postal_code": "94103",
                "city": None,
                "line1": None,
                "line2": None,
                "state": None,
            },
            "phone": None,
            "tax_exempt": "none",
            "tax_ids": [],
        },
        "customer_email": None,
        "discounts": [],
        "livemode": False,
        "metadata": dict(metadata or {}),
        "mode": "payment",
        "payment_intent": f"pi_{suffix[:24]}",
        "payment_status": "paid",
        "status": "complete",
        "subscription": None,
        "invoice": None,
        "created": int(now) - 60,
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
    }
    return _stripe_envelope(event_type, session, now)


def _stripe_subscription_object(
    status: str, metadata: dict[str, str] | None, amount: int, currency: str, now: float
) -> dict[str, Any]:
    sub_id = f"sub_{_hex(24)}"
    start = int(now) - 120
    return {
        "id": sub_id,
        "object": "subscription",
        "billing_cycle_anchor": start,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically",
        "created": start,
        "currency": currency,
        "customer": f"cus_{_hex(14)}",
        "default_payment_method": f"pm_{_hex(24)}",
        "ended_at": None,
        "items": {
            "object": "list",
            "data": [
                {
                    "id": f"si_{_hex(14)}",
                    "object": "subscription_item",
                    "created": start,
                    "current_period_end": start + MONTH,
                    "current_period_start": start,
                    "metadata": {},
                    "price": {
                        "id": f"price_{_hex(24)}",
                        "object": "price",
                        "active": True,
                        "currency": currency,
                        "product": f"prod_{_hex(14)}",
                        "recurring": {"interval": "month", "interval_count": 1},
                        "type": "recurring",
                        "unit_amount": amount,
                    },
                    "quantity": 1,
                    "subscription": sub_id,
                }
            ],
            "has_more": False,
            "total_count": 1,
            "url": f"/v1/subscription_items?subscription={sub_id}",
        },
        "latest_invoice": f"in_{_hex(24)}",
        "livemode": False,
        "metadata": dict(metadata or {}),
        "start_date": start,
        "status": status,
        "trial_end": None,
        "trial_start": None,
    }


def _stripe_subscription_created(
    *,
    metadata: dict[str, str] | None = None,
    amount: int = 4900,
    currency: str = "usd",
    now: float | None = None,
    **_: Any,
) -> dict[str, Any]:
    """A subscription created with a payment method on file: `active` at once."""
    now = _now(now)
    sub = _stripe_subscription_object("active", metadata, amount, currency, now)
    return _stripe_envelope("customer.subscription.created", sub, now)


def _stripe_subscription_updated(
    *,
    metadata: dict[str, str] | None = None,
    amount: int = 4900,
    currency: str = "usd",
    now: float | None = None,
    **_: Any,
) -> dict[str, Any]:
    """The update a Checkout subscription gets when its first payment succeeds:
    `incomplete` → `active` (the start relay counts)."""
    now = _now(now)
    sub = _stripe_subscription_object("active", metadata, amount, currency, now)
    return _stripe_envelope(
        "customer.subscription.updated", sub, now, previous={"status": "incomplete"}
    )


def _stripe_subscription_deleted(
    *,
    metadata: dict[str, str] | None = None,
    amount: int = 4900,
    currency: str = "usd",
    now: float | None = None,
    **_: Any,
) -> dict[str, Any]:
    now = _now(now)
    sub = _stripe_subscription_object("canceled", metadata, amount, currency, now)
    sub.update(
        canceled_at=int(now),
        ended_at=int(now),
        cancellation_details={
            "comment": None,
            "feedback": None,
            "reason": "cancellation_requested",
        },
    )
    return _stripe_envelope("customer.subscription.deleted", sub, now)


def _stripe_invoice_paid(
    *,
    email: str | None = None,
    metadata: dict[str, str] | None = None,
    amount: int = 4900,
    currency: str = "usd",
    now: float | None = None,
    **_: Any,
) -> dict[str, Any]:
    """A renewal: billing_reason `subscription_cycle`, basil shape (`parent`, `total_taxes`)."""
    now = _now(now)
    invoice_id, sub_id = f"in_{_hex(24)}", f"sub_{_hex(24)}"
    start = int(now) - 3600
    invoice = {
        "id": invoice_id,
        "object": "invoice",
        "account_country": "US",
        "amount_due": amount,
        "amount_paid": amount,
        "amount_remaining": 0,
        "amount_shipping": 0,
        "attempt_count": 1,
        "attempted": True,
        "billing_reason": "subscription_cycle",
        "collection_method": "charge_automatically",
        "created": start,
        "currency": currency,
        "customer": f"cus_{_hex(14)}",
        "customer_email": email or DEFAULT_EMAIL,
        "customer_name": "Sam Buyer",
        "lines": {
            "object": "list",
            "data": [
                {
                    "id": f"il_{_hex(24)}",
                    "object": "line_item",
                    "amount": amount,
                    "currency": currency,
                    "description": "1 × Sample plan (monthly)",
                    "discount_amounts": [],
                    "metadata": {},
                    "parent": {
                        "type": "subscription_item_details",
                        "subscription_item_details": {
                            "subscription": sub_id,
                            "subscription_item": f"si_{_hex(14)}",
                            "proration": False,
                        },
                    },
                    "period": {"start": start, "end": start + MONTH},
                    "pricing": {
                        "type": "price_details",
                        "price_details": {
                            "price": f"price_{_hex(24)}",
                            "product": f"prod_{_hex(14)}",
                        },
                        "unit_amount_decimal": str(amount),
                    },
                    "quantity": 1,
                }
            ],
            "has_more": False,
            "total_count": 1,
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
        "livemode": False,
        "metadata": {},
        "number": f"{_hex(8).upper()}-0002",
        "parent": {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"metadata": dict(metadata or {}), "subscription": sub_id},
        },
        "period_end": start,
        "period_start": start - MONTH,
        "status": "paid",
        "status_transitions": {
            "finalized_at": start,
            "marked_uncollectible_at": None,
            "paid_at": int(now),
            "voided_at": None,
        },
        "subtotal": amount,
        "total": amount,
        "total_discount_amounts": [],
        "total_taxes": [],
    }
    return _stripe_envelope("invoice.paid", invoice, now)


def _stripe_refund_created(
    *,
    metadata: dict[str, str] | None = None,
    amount: int = 4900,
    currency: str = "usd",
    now: float | None = None,
    **_: Any,
) -> dict[str, Any]:
    now = _now(now)
    refund = {
        "id": f"re_{_hex(24)}",
        "object": "refund",
        "amount": amount,
        "balance_transaction": f"txn_{_hex(24)}",
        "charge": f"ch_{_hex(24)}",
        "created": int(now),
        "currency": currency,
        "destination_details": {"card": {"type": "refund"}, "type": "card"},
        "metadata": dict(metadata or {}),
        "payment_intent": f"pi_{_hex(24)}",
        "reason": "requested_by_customer",
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": "succeeded",
        "transfer_reversal": None,
    }
    return _stripe_envelope("refund.created", refund, now)


def _stripe_charge_refunded(
    *,
    email: str | None = None,
    metadata: dict[str, str] | None = None,
    amount: int = 4900,
    currency: str = "usd",
    now: float | None = None,
    **_: Any,
) -> dict[str, Any]:
    """As sent since API 2022-11-15: the charge without its `refunds` list, which relay
    cannot turn into a refund without counting one twice (it asks for refund.created)."""
    now = _now(now)
    charge = {
        "id": f"ch_{_hex(24)}",
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": amount,
        "balance_transaction": f"txn_{_hex(24)}",
        "billing_details": {
            "address": {
                "city": None,
                "country": "US",
                "line1": None,
                "line2": None,
                "postal_code": "94103",
                "state": None,
            },
            "email": email or DEFAULT_EMAIL,
            "name": "Sam Buyer",
            "phone": None,
        },
        "captured": True,
        "created": int(now) - 86400,
        "currency": currency,
        "customer": f"cus_{_hex(14)}",
        "livemode": False,
        "metadata": dict(metadata or {}),
        "paid": True,
        "payment_intent": f"pi_{_hex(24)}",
        "receipt_email": None,
        "refunded": True,
        "status": "succeeded",
    }
    return _stripe_envelope(
        "charge.refunded", charge, now, previous={"amount_refunded": 0, "refunded": False}
    )


STRIPE_EVENTS: dict[str, Sample] = {
    "checkout.session.completed": Sample(_stripe_checkout, "purchase"),
    "checkout.session.async_payment_succeeded": Sample(
        lambda **o: _stripe_checkout("checkout.session.async_payment_succeeded", **o), "purchase"
    ),
    "invoice.paid": Sample(_stripe_invoice_paid, "subscription_renewed"),
    "customer.subscription.created": Sample(
        _stripe_subscription_created, "subscription_started", email=False
    ),
    "customer.subscription.updated": Sample(
        _stripe_subscription_updated, "subscription_started", email=False
    ),
    "customer.subscription.deleted": Sample(
        _stripe_subscription_deleted, "subscription_cancelled", email=False
    ),
    "refund.created": Sample(_stripe_refund_created, "refund", email=False),
    "charge.refunded": Sample(
        _stripe_charge_refunded, "ignored", note="no refunds list since API 2022-11-15"
    ),
}


def stripe_event(event_type: str = "checkout.session.completed", **options: Any) -> dict[str, Any]:
    """The sample Stripe event of this type (an unknown type: the Checkout sample relabelled)."""
    sample = STRIPE_EVENTS.get(event_type)
    if sample is None:
        return _stripe_checkout(event_type, **options)
    return sample.build(**options)


def sign_stripe(body: bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    header = stripe.WebhookSignature.generate_signature_header(
        body.decode(), secret, timestamp=int(time.time()) if timestamp is None else timestamp
    )
    return {"Stripe-Signature": header, "Content-Type": "application/json"}


# ---------------------------------------------------------------- Lemon Squeezy


def _ls_body(
    event_name: str, data_type: str, attributes: dict[str, Any], metadata: dict[str, str] | None
) -> dict[str, Any]:
    data_id = _seq()
    return {
        "meta": {
            "test_mode": True,
            "event_name": event_name,
            "webhook_id": str(uuid.uuid4()),
            "custom_data": dict(metadata or {}),
        },
        "data": {
            "type": data_type,
            "id": data_id,
            "attributes": {**attributes, "test_mode": True},
            "links": {"self": f"https://api.lemonsqueezy.com/v1/{data_type}/{data_id}"},
        },
    }


def _ls_buyer(email: str | None) -> dict[str, Any]:
    return {
        "store_id": 1,
        "customer_id": int(_seq()),
        "user_name": "Sam Buyer",
        "user_email": email or DEFAULT_EMAIL,
    }


def _ls_order(
    event_name: str,
    *,
    email: str | None = None,
    metadata: dict[str, str] | None = None,
    amount: int = 4900,
    currency: str = "USD",
    now: float | None = None,
    refunded: bool = False,
) -> dict[str, Any]:
    now = _now(now)
    stamp = _iso(now - 3600 if refunded else now)
    order_id = int(_seq())
    attributes = {
        **_ls_buyer(email),
        "identifier": str(uuid.uuid4()),
        "order_number": order_id % 100000,
        "currency": currency,
        "currency_rate": "1.00000000",
        "subtotal": amount,
        "discount_total": 0,
        "tax": 0,
        "total": amount,
        "status": "refunded" if refunded else "paid",
        "refunded": refunded,
        "refunded_at": _iso(now) if refunded else None,
        "refunded_amount": amount if refunded else 0,
        "first_order_item": {
            "order_id": order_id,
            "product_id": 1,
            "variant_id": 1,
            "product_name": "Sample product",
            "variant_name": "Default",
            "price": amount,
            "quantity": 1,
            "test_mode": True,
        },
        "created_at": stamp,
        "updated_at": _iso(now),
    }
    return _ls_body(event_name, "orders", attributes, metadata)


def _ls_subscription(
    event_name: str,
    *,
    email: str | None = None,
    metadata: dict[str, str] | None = None,
    now: float | None = None,
    cancelled: bool = False,
    **_: Any,
) -> dict[str, Any]:
    now = _now(now)
    renews = _iso(now + MONTH)
    attributes = {
        **_ls_buyer(email),
        "order_id": int(_seq()),
        "order_item_id": int(_seq()),
        "product_id": 1,
        "variant_id": 1,
        "product_name": "Sample plan",
        "variant_name": "Monthly",
        "status": "cancelled" if cancelled else "active",
        "status_formatted": "Cancelled" if cancelled else "Active",
        "card_brand": "visa",
        "card_last_four": "4242",
        "pause": None,
        "cancelled": cancelled,
        "trial_ends_at": None,
        "billing_anchor": datetime.fromtimestamp(now, tz=UTC).day,
        "renews_at": renews,
        "ends_at": renews if cancelled else None,
        "created_at": _iso(now - (MONTH if cancelled else 0)),
        "updated_at": _iso(now),
    }
    return _ls_body(event_name, "subscriptions", attributes, metadata)


def _ls_invoice(
    event_name: str,
    *,
    email: str | None = None,
    metadata: dict[str, str] | None = None,
    amount: int = 4900,
    currency: str = "USD",
    now: float | None = None,
    refunded: bool = False,
) -> dict[str, Any]:
    """A subscription invoice of a renewal (billing_reason `renewal`)."""
    now = _now(now)
    attributes = {
        **_ls_buyer(email),
        "subscription_id": int(_seq()),
        "billing_reason": "renewal",
        "card_brand": "visa",
        "card_last_four": "4242",
        "currency": currency,
        "currency_rate": "1.00000000",
        "status": "refunded" if refunded else "paid",
        "refunded": refunded,
        "refunded_at": _iso(now) if refunded else None,
        "subtotal": amount,
        "discount_total": 0,
        "tax": 0,
        "tax_inclusive": False,
        "total": amount,
        "refunded_amount": amount if refunded else 0,
        "created_at": _iso(now - 3600 if refunded else now),
        "updated_at": _iso(now),
    }
    return _ls_body(event_name, "subscription-invoices", attributes, metadata)


LEMONSQUEEZY_EVENTS: dict[str, Sample] = {
    "order_created": Sample(lambda **o: _ls_order("order_created", **o), "purchase"),
    "subscription_created": Sample(
        lambda **o: _ls_subscription("subscription_created", **o), "subscription_started"
    ),
    "subscription_payment_success": Sample(
        lambda **o: _ls_invoice("subscription_payment_success", **o), "subscription_renewed"
    ),
    "subscription_cancelled": Sample(
        lambda **o: _ls_subscription("subscription_cancelled", cancelled=True, **o),
        "subscription_cancelled",
    ),
    "order_refunded": Sample(lambda **o: _ls_order("order_refunded", refunded=True, **o), "refund"),
    "subscription_payment_refunded": Sample(
        lambda **o: _ls_invoice("subscription_payment_refunded", refunded=True, **o), "refund"
    ),
}


def lemonsqueezy_event(event_name: str = "order_created", **options: Any) -> dict[str, Any]:
    """The sample Lemon Squeezy webhook of this event (an unknown one: the order relabelled)."""
    sample = LEMONSQUEEZY_EVENTS.get(event_name)
    if sample is None:
        return _ls_order(event_name, **options)
    return sample.build(**options)


def sign_lemonsqueezy(body: bytes, secret: str) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-Signature": digest,
        "X-Event-Name": orjson.loads(body)["meta"]["event_name"],
        "Content-Type": "application/json",
    }


# ---------------------------------------------------------------- Paddle Billing


def _paddle_envelope(event_type: str, data: dict[str, Any], now: float) -> dict[str, Any]:
    return {
        "event_id": f"evt_{_hex(26)}",
        "event_type": event_type,
        "occurred_at": _iso(now),
        "notification_id": f"ntf_{_hex(26)}",
        "relay_simulated": True,  # test mode: Paddle has no flag of its own
        "data": data,
    }


def _paddle_transaction(
    event_type: str,
    *,
    metadata: dict[str, str] | None = None,
    amount: int = 4900,
    currency: str = "USD",
    now: float | None = None,
    **_: Any,
) -> dict[str, Any]:
    """A checkout transaction (origin `web`); amounts are strings, and there is no email:
    Paddle sends only `customer_id` (relay looks the address up with RELAY_PADDLE__API_KEY)."""
    now = _now(now)
    suffix = _hex(26)
    stamp = _iso(now)
    completed = event_type == "transaction.completed"
    totals = {
        "subtotal": str(amount),
        "discount": "0",
        "tax": "0",
        "total": str(amount),
        "grand_total": str(amount),
        "credit": "0",
        "balance": "0",
        "currency_code": currency,
    }
    data = {
        "id": f"txn_{suffix}",
        "status": "completed" if completed else "paid",
        "origin": "web",
        "customer_id": f"ctm_{suffix}",
        "address_id": f"add_{suffix}",
        "subscription_id": None,
        "invoice_id": f"inv_{suffix}" if completed else None,
        "invoice_number": f"{int(now) % 100000}-10001" if completed else None,
        "collection_mode": "automatic",
        "currency_code": currency,
        "custom_data": dict(metadata or {}) or None,
        "billed_at": stamp,
        "created_at": _iso(now - 30),
        "updated_at": stamp,
        "items": [{"price": {"id": f"pri_{suffix}", "product_id": f"pro_{suffix}"}, "quantity": 1}],
        "details": {
            "totals": totals,
            "line_items": [
                {
                    "id": f"txnitm_{suffix}",
                    "price_id": f"pri_{suffix}",
                    "quantity": 1,
                    "totals": {
                        "subtotal": str(amount),
                        "tax": "0",
                        "discount": "0",
                        "total": str(amount),
                    },
                    "unit_totals": {
                        "subtotal": str(amount),
                        "tax": "0",
                        "discount": "0",
                        "total": str(amount),
                    },
                    "product": {"id": f"pro_{suffix}", "name": "Sample product"},
                }
            ],
        },
    }
    return _paddle_envelope(event_type, data, now)


def _paddle_subscription(
    event_type: str,
    *,
    metadata: dict[str, str] | None = None,
    amount: int = 4900,
    currency: str = "USD",
    now: float | None = None,
    **_: Any,
) -> dict[str, Any]:
    now = _now(now)
    suffix = _hex(26)
    canceled = event_type == "subscription.canceled"
    start = now - (MONTH if canceled else 0)
    data = {
        "id": f"sub_{suffix}",
        "status": "canceled" if canceled else "active",
        "customer_id": f"ctm_{suffix}",
        "address_id": f"add_{suffix}",
        "business_id": None,
        "currency_code": currency,
        "collection_mode": "automatic",
        "custom_data": dict(metadata or {}) or None,
        "transaction_id": None if canceled else f"txn_{suffix}",
        "billing_cycle": {"interval": "month", "frequency": 1},
        "created_at": _iso(start),
        "started_at": _iso(start),
        "first_billed_at": _iso(start),
        "next_billed_at": None if canceled else _iso(start + MONTH),
        "canceled_at": _iso(now) if canceled else None,
        "paused_at": None,
        "updated_at": _iso(now),
        "current_billing_period": None
        if canceled
        else {"starts_at": _iso(start), "ends_at": _iso(start + MONTH)},
        "scheduled_change": None,
        "discount": None,
        "items": [
            {
                "price": {
                    "id": f"pri_{suffix}",
                    "product_id": f"pro_{suffix}",
                    "description": "Monthly",
                    "unit_price": {"amount": str(amount), "currency_code": currency},
                    "billing_cycle": {"interval": "month", "frequency": 1},
                },
                "status": "inactive" if canceled else "active",
                "quantity": 1,
                "recurring": True,
            }
        ],
    }
    return _paddle_envelope(event_type, data, now)


def _paddle_adjustment(
    event_type: str,
    *,
    amount: int = 4900,
    currency: str = "USD",
    now: float | None = None,
    **_: Any,
) -> dict[str, Any]:
    """A full refund: created `pending_approval` (Paddle reviews refunds), updated
    `approved`, which is when money moves and relay counts it."""
    now = _now(now)
    suffix = _hex(26)
    approved = event_type == "adjustment.updated"
    totals = {
        "subtotal": str(amount),
        "tax": "0",
        "total": str(amount),
        "fee": "0",
        "earnings": str(amount),
        "currency_code": currency,
    }
    data = {
        "id": f"adj_{suffix}",
        "action": "refund",
        "type": "full",
        "reason": "requested_by_customer",
        "status": "approved" if approved else "pending_approval",
        "transaction_id": f"txn_{suffix}",
        "subscription_id": None,
        "customer_id": f"ctm_{suffix}",
        "currency_code": currency,
        "credit_applied_to_balance": None,
        "items": [
            {
                "id": f"adjitm_{suffix}",
                "item_id": f"txnitm_{suffix}",
                "type": "full",
                "amount": str(amount),
                "proration": None,
                "totals": {"subtotal": str(amount), "tax": "0", "total": str(amount)},
            }
        ],
        "totals": totals,
        "payout_totals": {**totals, "chargeback_fee": None},
        "tax_rates_used": [],
        "created_at": _iso(now - (600 if approved else 0)),
        "updated_at": _iso(now),
    }
    return _paddle_envelope(event_type, data, now)


PADDLE_EVENTS: dict[str, Sample] = {
    event: Sample(partial(build, event), gives, email=False, note=note)
    for event, build, gives, note in (
        ("transaction.completed", _paddle_transaction, "purchase", ""),
        ("transaction.paid", _paddle_transaction, "ignored", "counted on transaction.completed"),
        ("subscription.created", _paddle_subscription, "subscription_started", ""),
        ("subscription.canceled", _paddle_subscription, "subscription_cancelled", ""),
        ("adjustment.created", _paddle_adjustment, "ignored", "pending approval"),
        ("adjustment.updated", _paddle_adjustment, "refund", ""),
    )
}


def paddle_event(event_type: str = "transaction.completed", **options: Any) -> dict[str, Any]:
    """The sample Paddle envelope of this type (an unknown type: the transaction relabelled)."""
    options.pop("email", None)  # Paddle webhooks carry no email
    sample = PADDLE_EVENTS.get(event_type)
    if sample is None:
        return _paddle_transaction(event_type, **options)
    return sample.build(**options)


def sign_paddle(body: bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"Paddle-Signature": f"ts={ts};h1={digest}", "Content-Type": "application/json"}


# ---------------------------------------------------------------- Chargebee (v2)


def _cb_customer(email: str | None, metadata: dict[str, str] | None, now: int) -> dict[str, Any]:
    customer: dict[str, Any] = {
        "id": _hex(16),
        "first_name": "Sam",
        "last_name": "Buyer",
        "email": email or DEFAULT_EMAIL,
        "auto_collection": "on",
        "net_term_days": 0,
        "allow_direct_debit": False,
        "created_at": now - 120,
        "taxability": "taxable",
        "updated_at": now - 120,
        "deleted": False,
        "object": "customer",
        "card_status": "valid",
        "billing_address": {
            "first_name": "Sam",
            "last_name": "Buyer",
            "city": "San Francisco",
            "state_code": "CA",
            "country": "US",
            "zip": "94103",
            "object": "billing_address",
        },
        "preferred_currency_code": "USD",
    }
    for key, value in (metadata or {}).items():
        customer[f"cf_{key}"] = value  # Chargebee custom fields
    return customer


def _cb_subscription(
    customer: dict[str, Any], status: str, amount: int, currency: str, now: int
) -> dict[str, Any]:
    return {
        "id": _hex(16),
        "customer_id": customer["id"],
        "plan_id": "sample-plan",
        "plan_quantity": 1,
        "plan_unit_price": amount,
        "plan_amount": amount,
        "billing_period": 1,
        "billing_period_unit": "month",
        "status": status,
        "current_term_start": now,
        "current_term_end": now + MONTH,
        "next_billing_at": now + MONTH,
        "created_at": now,
        "started_at": now,
        "activated_at": now,
        "updated_at": now,
        "has_scheduled_changes": False,
        "deleted": False,
        "object": "subscription",
        "currency_code": currency,
        "due_invoices_count": 0,
        "mrr": amount,
    }


def _cb_invoice(
    customer: dict[str, Any],
    sub: dict[str, Any],
    amount: int,
    currency: str,
    now: int,
    *,
    paid: bool = True,
) -> dict[str, Any]:
    return {
        "id": _seq(),
        "customer_id": customer["id"],
        "subscription_id": sub["id"],
        "recurring": True,
        "first_invoice": True,
        "status": "paid" if paid else "pending",
        "price_type": "tax_exclusive",
        "date": now,
        "due_date": now,
        "paid_at": now if paid else None,
        "total": amount,
        "sub_total": amount,
        "tax": 0,
        "amount_paid": amount if paid else 0,
        "amount_due": 0 if paid else amount,
        "currency_code": currency,
        "deleted": False,
        "object": "invoice",
        "line_items": [
            {
                "id": f"li_{_hex(16)}",
                "date_from": now,
                "date_to": now + MONTH,
                "unit_amount": amount,
                "quantity": 1,
                "amount": amount,
                "is_taxed": False,
                "tax_amount": 0,
                "object": "line_item",
                "subscription_id": sub["id"],
                "description": "Sample plan",
                "entity_type": "plan_item_price",
                "entity_id": f"sample-plan-{currency}-monthly",
            }
        ],
    }


def _cb_event(event_type: str, content: dict[str, Any], now: int) -> dict[str, Any]:
    return {
        "id": f"ev_{_hex(16)}",
        "occurred_at": now,
        "source": "admin_console",
        "object": "event",
        "api_version": "v2",
        "event_type": event_type,
        "webhook_status": "scheduled",
        "relay_simulated": True,  # test mode: Chargebee has no flag of its own
        "content": content,
    }


def _chargebee(
    event_type: str,
    *,
    email: str | None = None,
    metadata: dict[str, str] | None = None,
    amount: int = 4900,
    currency: str = "USD",
    now: float | None = None,
) -> dict[str, Any]:
    moment = int(_now(now))
    customer = _cb_customer(email, metadata, moment)
    status = "cancelled" if event_type == "subscription_cancelled" else "active"
    sub = _cb_subscription(customer, status, amount, currency, moment)
    content: dict[str, Any] = {"subscription": sub, "customer": customer}
    if event_type == "payment_succeeded":
        invoice = _cb_invoice(customer, sub, amount, currency, moment)
        content["transaction"] = _cb_transaction("payment", customer, sub, amount, currency, moment)
        content["invoice"] = invoice
    elif event_type == "payment_refunded":
        invoice = _cb_invoice(customer, sub, amount, currency, moment - 86400)
        txn = _cb_transaction("refund", customer, sub, amount, currency, moment)
        credit_note = {
            "id": f"CN-{_seq()}",
            "customer_id": customer["id"],
            "subscription_id": sub["id"],
            "reference_invoice_id": invoice["id"],
            "type": "refundable",
            "reason_code": "product_unsatisfactory",
            "status": "refunded",
            "date": moment,
            "total": amount,
            "amount_refunded": amount,
            "currency_code": currency,
            "object": "credit_note",
        }
        txn["linked_credit_notes"] = [
            {
                "cn_id": credit_note["id"],
                "applied_amount": amount,
                "cn_status": "refunded",
                "cn_reference_invoice_id": invoice["id"],
            }
        ]
        content.update(transaction=txn, invoice=invoice, credit_note=credit_note)
    elif event_type == "subscription_cancelled":
        sub.update(cancelled_at=moment, cancel_reason="not_paid", mrr=0)
        sub.pop("next_billing_at")
    elif event_type == "subscription_renewed":
        # Sent when the term renews; its invoice may still be unpaid (payment_succeeded
        # follows when the money arrives).
        invoice = _cb_invoice(customer, sub, amount, currency, moment, paid=False)
        invoice["first_invoice"] = False
        content["invoice"] = invoice
    return _cb_event(event_type, content, moment)


def _cb_transaction(
    kind: str, customer: dict[str, Any], sub: dict[str, Any], amount: int, currency: str, now: int
) -> dict[str, Any]:
    return {
        "id": f"txn_{_hex(16)}",
        "customer_id": customer["id"],
        "subscription_id": sub["id"],
        "payment_method": "card",
        "gateway": "chargebee",
        "type": kind,
        "date": now,
        "amount": amount,
        "status": "success",
        "currency_code": currency,
        "masked_card_number": "************1111",
        "deleted": False,
        "object": "transaction",
    }


CHARGEBEE_EVENTS: dict[str, Sample] = {
    event: Sample(partial(_chargebee, event), gives, note=note)
    for event, gives, note in (
        ("payment_succeeded", "purchase", ""),
        ("subscription_created", "subscription_started", ""),
        ("subscription_cancelled", "subscription_cancelled", ""),
        ("payment_refunded", "refund", ""),
        ("subscription_renewed", "ignored", "counted on payment_succeeded"),
    )
}


def chargebee_event(event_type: str = "payment_succeeded", **options: Any) -> dict[str, Any]:
    """The sample Chargebee event of this type (an unknown type: the payment relabelled)."""
    return _chargebee(event_type, **options)


def chargebee_headers(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}


# ---------------------------------------------------------------- relay simulate

# source → event → sample; the first event of each source is its default.
EVENTS: dict[str, dict[str, Sample]] = {
    "stripe": STRIPE_EVENTS,
    "lemonsqueezy": LEMONSQUEEZY_EVENTS,
    "paddle": PADDLE_EVENTS,
    "chargebee": CHARGEBEE_EVENTS,
}

# source → (settings field holding the secrets, signer)
SIGNED: dict[str, tuple[str, Any]] = {
    "stripe": ("webhook_secrets", sign_stripe),
    "lemonsqueezy": ("signing_secret", sign_lemonsqueezy),
    "paddle": ("webhook_secrets", sign_paddle),
}


def sample_for(source: str, event: str | None) -> tuple[str, Sample]:
    """(event, sample); ValueError naming the known ones when there is none."""
    events = EVENTS.get(source)
    if events is None:
        raise ValueError(f"relay simulate knows no source {source!r}; known: {', '.join(EVENTS)}")
    event = event or next(iter(events))
    sample = events.get(event)
    if sample is None:
        raise ValueError(
            f"relay simulate has no {source} sample for event {event!r}; known: {', '.join(events)}"
        )
    return event, sample


def simulate(
    source: str, settings: Any, event: str | None, **options: Any
) -> tuple[bytes, dict[str, str]]:
    """A signed sample webhook for `source`: (body, headers).

    `anonymous_id` and `click_id` become the `simmer_anonymous_id` and `irclickid`
    metadata; `metadata` adds any other passthrough keys (pagent ids, …). An `email`
    is refused for an event whose real payload carries none (every Paddle event,
    Stripe's subscription and refund events): the sample would pretend otherwise."""
    event, sample = sample_for(source, event)
    metadata = dict(options.pop("metadata", None) or {})
    if options.get("anonymous_id"):
        metadata["simmer_anonymous_id"] = options["anonymous_id"]
    if options.get("click_id"):
        metadata["irclickid"] = options["click_id"]
    options = {
        k: v for k, v in options.items() if v is not None and k not in ("anonymous_id", "click_id")
    }
    options["metadata"] = metadata
    if options.get("email") and not sample.email:
        if source == "paddle":
            raise ValueError(
                "Paddle webhooks carry no email, only customer_id: relay looks the address "
                "up with RELAY_PADDLE__API_KEY, so --email cannot be simulated for Paddle"
            )
        raise ValueError(f"a {source} {event} event carries no buyer email; drop --email")
    if source in SIGNED:
        field, sign = SIGNED[source]
        secrets = getattr(getattr(settings, source), field)
        if not secrets:
            raise ValueError(f"RELAY_{source.upper()}__{field.upper()} is not set")
        body = orjson.dumps(sample.build(**options))
        return body, sign(body, secrets[0].get_secret_value())
    cb = settings.chargebee
    if not (cb.username and cb.password):
        raise ValueError("RELAY_CHARGEBEE__USERNAME and RELAY_CHARGEBEE__PASSWORD are not set")
    body = orjson.dumps(sample.build(**options))
    return body, chargebee_headers(cb.username, cb.password.get_secret_value())


def events_help() -> str:
    """The events `relay simulate` has samples for, per source, with what each gives."""
    lines = ["events (what relay makes of each sample; the first is the default):"]
    for source, events in EVENTS.items():
        lines.append(f"  {source}:")
        lines += [
            f"    {event:<42} {sample.gives}" + (f" ({sample.note})" if sample.note else "")
            for event, sample in events.items()
        ]
    lines += [
        "Paddle's samples carry no email: Paddle webhooks have only customer_id, and relay",
        "looks the address up with RELAY_PADDLE__API_KEY; --email is refused for Paddle",
        "(and for Stripe's subscription and refund.created events, which carry none either).",
    ]
    return "\n".join(lines)
