"""Realistic, test-mode sample webhooks for `relay simulate`, signed like the processor does."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import stripe


def stripe_event(
    event_type: str = "checkout.session.completed",
    *,
    email: str = "buyer@example.com",
    anonymous_id: str | None = None,
    click_id: str | None = None,
    amount: int = 4900,
    currency: str = "usd",
    now: float | None = None,
) -> dict[str, Any]:
    now = time.time() if now is None else now
    suffix = uuid.uuid4().hex
    metadata = {}
    if anonymous_id:
        metadata["simmer_anonymous_id"] = anonymous_id
    if click_id:
        metadata["irclickid"] = click_id
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
            "address": {"country": "US", "postal_code": "94103", "city": None,
                        "line1": None, "line2": None, "state": None},
            "phone": None,
        },
        "customer_email": None,
        "livemode": False,
        "metadata": metadata,
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


def simulate(source: str, settings: Any, event: str | None, **options: Any) -> tuple[bytes, dict[str, str]]:
    """A signed sample webhook for `source`: (body, headers)."""
    if source == "stripe":
        secrets = settings.stripe.webhook_secrets
        if not secrets:
            raise ValueError("RELAY_STRIPE__WEBHOOK_SECRETS is not set")
        body = orjson.dumps(stripe_event(event or "checkout.session.completed", **options))
        return body, sign_stripe(body, secrets[0].get_secret_value())
    raise ValueError(f"relay simulate does not know source {source!r} yet")
