"""Realistic, test-mode sample webhooks for `relay simulate`, signed like the processor does."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import stripe


def stripe_event(
    event_type: str = "checkout.session.completed",
    *,
    email: str = "buyer@example.com",
    metadata: dict[str, str] | None = None,
    amount: int = 4900,
    currency: str = "usd",
    now: float | None = None,
) -> dict[str, Any]:
    now = time.time() if now is None else now
    suffix = uuid.uuid4().hex
    session = {
        "id": f"cs_test_{suffix}{suffix[:26]}",
        "object": "checkout.session",
        "amount_subtotal": amount,
        "amount_total": amount,
        "currency": currency,
        "customer": f"cus_{suffix[:14]}",
        "customer_details": {
            "email": email,
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
        },
        "customer_email": None,
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
    return {
        "id": f"evt_{suffix[:24]}",
        "object": "event",
        "api_version": "2025-06-30.basil",
        "created": int(now),
        "data": {"object": session},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


def sign_stripe(body: bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    header = stripe.WebhookSignature.generate_signature_header(
        body.decode(), secret, timestamp=int(time.time()) if timestamp is None else timestamp
    )
    return {"Stripe-Signature": header, "Content-Type": "application/json"}


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lemonsqueezy_event(
    event_name: str = "order_created",
    *,
    email: str = "buyer@example.com",
    metadata: dict[str, str] | None = None,
    amount: int = 4900,
    currency: str = "USD",
    now: float | None = None,
) -> dict[str, Any]:
    """A test-mode Lemon Squeezy order_created (JSON:API body), like a real delivery."""
    now = time.time() if now is None else now
    order_id = str(uuid.uuid4().int % 10**9)
    stamp = _iso(now)
    return {
        "meta": {
            "test_mode": True,
            "event_name": event_name,
            "webhook_id": str(uuid.uuid4()),
            "custom_data": dict(metadata or {}),
        },
        "data": {
            "type": "orders",
            "id": order_id,
            "attributes": {
                "store_id": 1,
                "customer_id": 1,
                "identifier": str(uuid.uuid4()),
                "order_number": int(order_id) % 100000,
                "user_name": "Sam Buyer",
                "user_email": email,
                "currency": currency,
                "currency_rate": "1.00000000",
                "subtotal": amount,
                "discount_total": 0,
                "tax": 0,
                "total": amount,
                "status": "paid",
                "refunded": False,
                "refunded_at": None,
                "refunded_amount": 0,
                "first_order_item": {
                    "order_id": int(order_id),
                    "product_id": 1,
                    "variant_id": 1,
                    "product_name": "Sample product",
                    "variant_name": "Default",
                    "price": amount,
                    "quantity": 1,
                    "test_mode": True,
                },
                "created_at": stamp,
                "updated_at": stamp,
                "test_mode": True,
            },
        },
    }


def sign_lemonsqueezy(body: bytes, secret: str) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-Signature": digest,
        "X-Event-Name": orjson.loads(body)["meta"]["event_name"],
        "Content-Type": "application/json",
    }


def paddle_event(
    event_type: str = "transaction.completed",
    *,
    email: str = "buyer@example.com",
    metadata: dict[str, str] | None = None,
    amount: int = 4900,
    currency: str = "USD",
    now: float | None = None,
) -> dict[str, Any]:
    """A Paddle Billing transaction.completed envelope (amounts are strings, no email).

    Paddle webhooks carry only `customer_id`; `email` is unused here and the
    worker looks the address up when RELAY_PADDLE__API_KEY is set.
    """
    now = time.time() if now is None else now
    suffix = uuid.uuid4().hex[:26]
    stamp = _iso(now)
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
    return {
        "event_id": f"evt_{suffix}",
        "event_type": event_type,
        "occurred_at": stamp,
        "notification_id": f"ntf_{suffix}",
        "relay_simulated": True,  # test mode: Paddle has no flag of its own
        "data": {
            "id": f"txn_{suffix}",
            "status": "completed",
            "origin": "web",
            "customer_id": f"ctm_{suffix}",
            "subscription_id": None,
            "currency_code": currency,
            "custom_data": dict(metadata or {}) or None,
            "billed_at": stamp,
            "created_at": stamp,
            "updated_at": stamp,
            "items": [
                {"price": {"id": f"pri_{suffix}", "product_id": f"pro_{suffix}"}, "quantity": 1}
            ],
            "details": {
                "totals": totals,
                "line_items": [
                    {
                        "price_id": f"pri_{suffix}",
                        "quantity": 1,
                        "totals": {
                            "subtotal": str(amount),
                            "tax": "0",
                            "discount": "0",
                            "total": str(amount),
                        },
                        "product": {"id": f"pro_{suffix}", "name": "Sample product"},
                    }
                ],
            },
        },
    }


def sign_paddle(body: bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"Paddle-Signature": f"ts={ts};h1={digest}", "Content-Type": "application/json"}


def chargebee_event(
    event_type: str = "payment_succeeded",
    *,
    email: str = "buyer@example.com",
    metadata: dict[str, str] | None = None,
    amount: int = 4900,
    currency: str = "USD",
    now: float | None = None,
) -> dict[str, Any]:
    """A Chargebee v2 payment_succeeded for a first invoice, with cf_* attribution fields."""
    now = int(time.time() if now is None else now)
    suffix = uuid.uuid4().hex[:16]
    customer: dict[str, Any] = {
        "id": f"cus_{suffix}",
        "first_name": "Sam",
        "last_name": "Buyer",
        "email": email,
        "object": "customer",
    }
    for key, value in (metadata or {}).items():
        customer[f"cf_{key}"] = value
    return {
        "id": f"ev_{suffix}",
        "occurred_at": now,
        "source": "admin_console",
        "object": "event",
        "api_version": "v2",
        "event_type": event_type,
        "webhook_status": "scheduled",
        "relay_simulated": True,  # test mode: Chargebee has no flag of its own
        "content": {
            "transaction": {
                "id": f"txn_{suffix}",
                "amount": amount,
                "currency_code": currency,
                "type": "payment",
                "status": "success",
                "date": now,
                "object": "transaction",
            },
            "invoice": {
                "id": f"inv_{suffix}",
                "customer_id": customer["id"],
                "subscription_id": f"sub_{suffix}",
                "recurring": True,
                "first_invoice": True,
                "status": "paid",
                "date": now,
                "paid_at": now,
                "total": amount,
                "sub_total": amount,
                "tax": 0,
                "amount_paid": amount,
                "currency_code": currency,
                "object": "invoice",
                "line_items": [
                    {
                        "description": "Sample plan",
                        "amount": amount,
                        "quantity": 1,
                        "unit_amount": amount,
                        "entity_type": "plan_item_price",
                        "entity_id": "sample-plan-USD-monthly",
                    }
                ],
            },
            "customer": customer,
            "subscription": {
                "id": f"sub_{suffix}",
                "status": "active",
                "currency_code": currency,
                "customer_id": customer["id"],
                "object": "subscription",
            },
        },
    }


def chargebee_headers(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}


def simulate(
    source: str, settings: Any, event: str | None, **options: Any
) -> tuple[bytes, dict[str, str]]:
    """A signed sample webhook for `source`: (body, headers).

    `anonymous_id` and `click_id` become the `simmer_anonymous_id` and `irclickid`
    metadata; `metadata` adds any other passthrough keys (pagent ids, …)."""
    metadata = dict(options.pop("metadata", None) or {})
    if options.get("anonymous_id"):
        metadata["simmer_anonymous_id"] = options["anonymous_id"]
    if options.get("click_id"):
        metadata["irclickid"] = options["click_id"]
    options = {
        k: v for k, v in options.items() if v is not None and k not in ("anonymous_id", "click_id")
    }
    options["metadata"] = metadata
    if source in SIGNED:
        field, default_event, build, sign = SIGNED[source]
        secrets = getattr(getattr(settings, source), field)
        if not secrets:
            raise ValueError(f"RELAY_{source.upper()}__{field.upper()} is not set")
        body = orjson.dumps(build(event or default_event, **options))
        return body, sign(body, secrets[0].get_secret_value())
    if source == "chargebee":
        cb = settings.chargebee
        if not (cb.username and cb.password):
            raise ValueError("RELAY_CHARGEBEE__USERNAME and RELAY_CHARGEBEE__PASSWORD are not set")
        body = orjson.dumps(chargebee_event(event or "payment_succeeded", **options))
        return body, chargebee_headers(cb.username, cb.password.get_secret_value())
    raise ValueError(f"relay simulate does not know source {source!r}")


# source → (settings field holding the secrets, default event, sample builder, signer)
SIGNED: dict[str, tuple[str, str, Any, Any]] = {
    "stripe": ("webhook_secrets", "checkout.session.completed", stripe_event, sign_stripe),
    "lemonsqueezy": ("signing_secret", "order_created", lemonsqueezy_event, sign_lemonsqueezy),
    "paddle": ("webhook_secrets", "transaction.completed", paddle_event, sign_paddle),
}
