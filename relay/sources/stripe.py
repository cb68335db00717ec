"""Stripe: `Stripe-Signature` verified with the stripe package, JSON parsed by us.

Verification uses `stripe.WebhookSignature.verify_header` with an explicit
tolerance (its default, None, checks no timestamp at all) for each configured
secret. The raw JSON is then parsed into plain dicts: since stripe 15 the SDK's
event objects are not dicts, and the body is rendered in the endpoint's pinned
API version anyway, so we read both old and new shapes ourselves.

Conversions:
- `checkout.session.completed` with payment_status `paid` / `no_payment_required`
  → purchase; `unpaid` → ignored (the money arrives later with
  `checkout.session.async_payment_succeeded` → purchase). Both key the
  conversion on the Checkout Session id, so a session is counted once.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import stripe

from relay import money
from relay.conversion import PURCHASE, Conversion, Customer
from relay.errors import PayloadError, SignatureError
from relay.settings import StripeSettings
from relay.sources import ParsedEvent, dig, load_json, string_map, text

PAID_STATUSES = frozenset({"paid", "no_payment_required"})


class StripeSource:
    name = "stripe"

    def __init__(self, settings: StripeSettings) -> None:
        self.settings = settings
        self._secrets = [s.get_secret_value() for s in settings.webhook_secrets]
        self._tolerance = settings.tolerance_seconds

    # ------------------------------------------------------------ verify

    def verify(self, body: bytes, headers: Mapping[str, str], now: float) -> None:
        header = headers.get("stripe-signature")
        if not header:
            raise SignatureError("missing Stripe-Signature header")
        try:
            payload = body.decode("utf-8")
        except UnicodeDecodeError:
            raise SignatureError("body is not UTF-8") from None
        stale = False
        for secret in self._secrets:
            try:
                stripe.WebhookSignature.verify_header(
                    payload, header, secret, tolerance=self._tolerance
                )
                return
            except stripe.SignatureVerificationError as exc:
                # The SDK checks the timestamp only after an HMAC matched.
                stale = stale or "tolerance" in str(exc)
        if stale:
            raise SignatureError(
                f"Stripe-Signature timestamp is outside the {self._tolerance} s tolerance"
            )
        raise SignatureError("Stripe-Signature does not match any configured webhook secret")

    # ------------------------------------------------------------ parse

    def parse(self, body: bytes) -> ParsedEvent:
        event = load_json(body)
        if event.get("object") == "v2.core.event":
            return ParsedEvent(
                event_id=str(event.get("id") or ""),
                event_type=str(event.get("type") or ""),
                ignored="Stripe v2 thin events are not relayed; send snapshot events",
            )
        event_id = text(event.get("id"))
        event_type = text(event.get("type"))
        obj = dig(event, "data", "object")
        if not event_id or not event_type or not isinstance(obj, dict):
            raise PayloadError("not a Stripe event: id, type or data.object is missing")
        livemode = bool(event.get("livemode", obj.get("livemode", True)))
        parsed = ParsedEvent(event_id=event_id, event_type=event_type, livemode=livemode)
        created = _timestamp(event.get("created"), "created")

        handler = HANDLERS.get(event_type)
        if handler is None:
            parsed.ignored = f"event type {event_type!r} is not relayed"
            return parsed
        result = handler(event, obj, created, livemode)
        if isinstance(result, str):
            parsed.ignored = result
        else:
            parsed.conversions = result
        return parsed


# ------------------------------------------------------------ checkout


def _checkout_completed(
    event: dict[str, Any], session: dict[str, Any], created: datetime, livemode: bool
) -> list[Conversion] | str:
    status = session.get("payment_status")
    if status == "unpaid":
        return "checkout session is unpaid; waiting for checkout.session.async_payment_succeeded"
    if status not in PAID_STATUSES:
        return f"checkout session payment_status {str(status)[:32]!r} is not paid"
    return _checkout_purchase(event, session, created, livemode)


def _checkout_async_succeeded(
    event: dict[str, Any], session: dict[str, Any], created: datetime, livemode: bool
) -> list[Conversion] | str:
    return _checkout_purchase(event, session, created, livemode)


def _checkout_purchase(
    event: dict[str, Any], session: dict[str, Any], created: datetime, livemode: bool
) -> list[Conversion] | str:
    session_id = text(session.get("id"))
    if not session_id:
        raise PayloadError("checkout session has no id")
    if session.get("mode") == "setup":
        return "setup-mode checkout sessions carry no payment"
    currency = money.currency_code(session.get("currency"))
    total = session.get("amount_total")
    if total is None:
        raise PayloadError("checkout session has no amount_total")
    details = session.get("total_details") or {}

    def amount(value: Any) -> Any:
        return None if value is None else money.from_minor(value, currency)

    customer_details = session.get("customer_details") or {}
    address = customer_details.get("address") or {}
    refs = {
        k: v
        for k in ("payment_intent", "subscription", "invoice", "customer", "client_reference_id")
        if isinstance(v := session.get(k), str) and v
    }
    refs["mode"] = str(session.get("mode") or "payment")
    return [
        Conversion(
            source="stripe",
            kind=PURCHASE,
            order_key=session_id,
            occurred_at=created,
            currency=currency,
            total=money.from_minor(total, currency),
            subtotal=amount(session.get("amount_subtotal")),
            discount=amount(details.get("amount_discount")),
            tax=amount(details.get("amount_tax")),
            shipping=amount(details.get("amount_shipping")),
            customer=Customer(
                email=text(customer_details.get("email")) or text(session.get("customer_email")),
                id=refs.get("customer"),
                name=text(customer_details.get("name")),
                phone=text(customer_details.get("phone")),
                city=text(address.get("city")),
                country=text(address.get("country")),
                state=text(address.get("state")),
                postal_code=text(address.get("postal_code")),
            ),
            metadata=string_map(session.get("metadata")),
            refs=refs,
            livemode=livemode,
        )
    ]


HANDLERS = {
    "checkout.session.completed": _checkout_completed,
    "checkout.session.async_payment_succeeded": _checkout_async_succeeded,
}


def _timestamp(value: Any, name: str) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{name} is not a Unix timestamp")
    return datetime.fromtimestamp(value, tz=UTC)
