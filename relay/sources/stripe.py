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
  With `RELAY_STRIPE__CLIENT_REFERENCE_ID_KEY` (e.g. `irclickid`) the session's
  `client_reference_id` — all a Payment Link URL can carry — is that attribution id.
- `invoice.paid` with billing_reason `subscription_cycle` → subscription_renewed,
  keyed on the invoice id. `subscription_create` is the same money as the
  Checkout purchase and is ignored (so are proration/manual invoices). Both
  the pre-basil shape (top-level `subscription`, `subscription_details`, `tax`)
  and the basil shape (`parent.subscription_details`, `total_taxes[]`) are read;
  attribution comes from the subscription's metadata.
- `customer.subscription.created` → subscription_started once the status is
  `active`/`trialing` (it often fires `incomplete`, before any payment: ignored);
  `customer.subscription.updated` whose previous status was `incomplete` and
  whose status is now `active`/`trialing` → subscription_started. Both key on
  the subscription id, so a start is counted once.
- `customer.subscription.deleted` → subscription_cancelled (subscription id).
- `refund.created` → refund of that refund's amount, keyed on its `re_` id.
  `charge.refunded` → one refund per entry of `charge.refunds.data`, each keyed
  on its `re_` id, so it dedupes with `refund.created` (already recorded ones
  are reported as such). Since API 2022-11-15 that list is absent by default:
  without it the event is ignored, with a reason telling the user to subscribe
  to `refund.created` (the charge's cumulative `amount_refunded` is never used,
  it would count one refund under a second key).
- Thin events (`object: v2.core.event`, `v1.` + one of the types above, a
  `related_object` and no snapshot) carry no conversion themselves: `parse_thin` names
  the object to fetch, and the worker (relay/thin.py) records what `snapshot_of` the
  fetched object gives — the same order key as the snapshot event.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import stripe

from relay import money
from relay.conversion import (
    PURCHASE,
    REFUND,
    SUBSCRIPTION_CANCELLED,
    SUBSCRIPTION_RENEWED,
    SUBSCRIPTION_STARTED,
    Conversion,
    Customer,
    Item,
)
from relay.errors import PayloadError, SignatureError
from relay.settings import StripeSettings
from relay.sources import (
    Fetch,
    ParsedEvent,
    dig,
    dispatch,
    iso_time,
    load_json,
    optional_currency,
    string_map,
    text,
    unix_time,
    unreadable,
)

PAID_STATUSES = frozenset({"paid", "no_payment_required"})
CLIENT_REFERENCE = re.compile(r"[A-Za-z0-9_-]{1,200}")
MAX_SIGNATURE_HEADER = 4096  # t= and a few v1= of 64 hex digits each, with room to spare


def _timestamp(header: str) -> int:
    """The t= of a Stripe-Signature header the SDK has verified (it read it the same way)."""
    first = next(item for item in header.split(",") if item.split("=")[0] == "t")
    return int(first.split("=", 2)[1])


class StripeSource:
    name = "stripe"

    def __init__(self, settings: StripeSettings) -> None:
        self.settings = settings
        self._secrets = [s.get_secret_value() for s in settings.webhook_secrets]
        self._tolerance = settings.tolerance_seconds

    # ------------------------------------------------------------ verify

    def verify_headers(self, headers: Mapping[str, str], now: float) -> str:
        """The Stripe-Signature header, if it can be a signature (checked before the body
        is read); SignatureError otherwise."""
        header = headers.get("stripe-signature")
        if not header:
            raise SignatureError("missing Stripe-Signature header")
        # The SDK's compare_digest raises TypeError on non-ASCII text: refuse it here.
        if not header.isascii() or len(header) > MAX_SIGNATURE_HEADER:
            raise SignatureError("Stripe-Signature is not a t=…,v1=… signature header")
        return header

    def verify(self, body: bytes, headers: Mapping[str, str], now: float) -> None:
        header = self.verify_headers(headers, now)
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
            except stripe.SignatureVerificationError as exc:
                # The SDK checks the timestamp only after an HMAC matched.
                stale = stale or "tolerance" in str(exc)
                continue
            # The SDK checks only the past; a date too far ahead is refused like Paddle's.
            if _timestamp(header) - now > self._tolerance:
                raise SignatureError(
                    f"Stripe-Signature timestamp is more than {self._tolerance} s in the future"
                )
            return
        if stale:
            raise SignatureError(
                f"Stripe-Signature timestamp is outside the {self._tolerance} s tolerance"
            )
        raise SignatureError("Stripe-Signature does not match any configured webhook secret")

    # ------------------------------------------------------------ parse

    def parse(self, body: bytes) -> ParsedEvent:
        event = load_json(body)
        if event.get("object") == "v2.core.event":
            return parse_thin(event)
        event_id = text(event.get("id"))
        event_type = text(event.get("type"))
        obj = dig(event, "data", "object")
        if not event_id or not event_type or not isinstance(obj, dict):
            raise unreadable(
                "not a Stripe event: id, type or data.object is missing", event_id, event_type
            )
        livemode = bool(event.get("livemode", obj.get("livemode", True)))
        parsed = ParsedEvent(event_id=event_id, event_type=event_type, livemode=livemode)

        def run(handler: Any) -> Any:
            return handler(event, obj, unix_time(event.get("created"), "created"), livemode)

        parsed = dispatch(parsed, HANDLERS, run)
        key = self.settings.client_reference_id_key
        if key:
            parsed.conversions = [_client_reference(c, key) for c in parsed.conversions]
        return parsed


def _client_reference(conversion: Conversion, key: str) -> Conversion:
    """A Checkout Session's client_reference_id as the attribution id `key` names (Payment
    Links carry nothing else), when it has Stripe's shape (alphanumerics, - and _, at most
    200). The session's metadata, read later, wins where it holds the same id."""
    value = conversion.refs.get("client_reference_id")
    if conversion.kind != PURCHASE or not value or not CLIENT_REFERENCE.fullmatch(value):
        return conversion
    return conversion.replace(attribution={**conversion.attribution, key: value})


# ------------------------------------------------------------ thin events

THIN_PREFIX = "v1."


def parse_thin(event: dict[str, Any]) -> ParsedEvent:
    """A thin event (`object: v2.core.event`): an id, a type and a `related_object`
    reference, no snapshot. A `v1.<type>` relay relays names the object to fetch; the
    worker fetches it and records what the `<type>` snapshot event would give
    (relay/thin.py, `snapshot_of`), so a snapshot endpoint and a thin endpoint on the same
    relay meet on the same order key."""
    event_id, event_type = text(event.get("id")), text(event.get("type"))
    if not event_id or not event_type:
        raise PayloadError("not a Stripe thin event: id or type is missing")
    livemode = event.get("livemode") is not False
    snapshot_type = event_type[len(THIN_PREFIX) :] if event_type.startswith(THIN_PREFIX) else ""
    if snapshot_type not in HANDLERS:
        return ParsedEvent(
            event_id, event_type, livemode, ignored=f"event type {event_type[:64]!r} is not relayed"
        )
    related = event.get("related_object")
    if not isinstance(related, dict):
        raise PayloadError(f"thin event {event_type[:64]!r} has no related_object")
    object_id, object_type, url = (text(related.get(k)) for k in ("id", "type", "url"))
    if not object_id or not object_type or not url or not url.startswith("/v1/"):
        raise PayloadError("thin event related_object needs an id, a type and a /v1/ url")
    return ParsedEvent(
        event_id,
        event_type,
        livemode,
        fetch=Fetch(
            url=url, object_type=object_type, object_id=object_id, snapshot_type=snapshot_type
        ),
    )


def snapshot_of(
    thin: dict[str, Any], obj: dict[str, Any], previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The snapshot event a thin event stands for, carrying the fetched object: the same
    parser then gives the same conversion (same order key) as the snapshot webhook."""
    created = thin.get("created")  # RFC 3339 in thin events, Unix seconds in snapshots
    seconds = iso_time(created, "created").timestamp() if isinstance(created, str) else created
    data: dict[str, Any] = {"object": obj}
    if previous:
        data["previous_attributes"] = previous
    return {
        "id": thin.get("id"),
        "object": "event",
        "type": str(thin.get("type"))[len(THIN_PREFIX) :],
        "created": int(seconds) if isinstance(seconds, int | float) else None,
        "livemode": thin.get("livemode") is not False,
        "data": data,
    }


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
    promotion_codes = [
        d["promotion_code"]
        for d in session.get("discounts") or ()
        if isinstance(d, dict) and isinstance(d.get("promotion_code"), str)
    ]
    if promotion_codes:
        refs["promotion_code"] = promotion_codes[0]  # the text is fetched by relay/enrich.py
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


# ------------------------------------------------------------ invoices

RENEWAL_REASONS = frozenset({"subscription_cycle"})


def _invoice_paid(
    event: dict[str, Any], invoice: dict[str, Any], created: datetime, livemode: bool
) -> list[Conversion] | str:
    reason = invoice.get("billing_reason")
    if reason == "subscription_create":
        return "first subscription invoice is the same money as the checkout purchase"
    if reason not in RENEWAL_REASONS:
        return f"invoice billing_reason {str(reason)[:40]!r} is not a renewal"
    invoice_id = text(invoice.get("id"))
    if not invoice_id:
        raise PayloadError("invoice has no id")
    currency = money.currency_code(invoice.get("currency"))
    paid = invoice.get("amount_paid")
    if paid is None:
        raise PayloadError("invoice has no amount_paid")

    def amount(value: Any) -> Any:
        return None if value is None else money.from_minor(value, currency)

    def summed(rows: Any) -> Any:
        values = [r.get("amount") for r in rows or () if isinstance(r, dict)]
        values = [v for v in values if v is not None]
        return (
            sum((money.from_minor(v, currency) for v in values), start=amount(0))
            if values
            else None
        )

    tax = summed(invoice.get("total_taxes"))
    if tax is None:
        tax = amount(invoice.get("tax"))  # pre-basil
    details = dig(invoice, "parent", "subscription_details")
    if not isinstance(details, dict):
        details = invoice.get("subscription_details")  # pre-basil (2023-06-29 and later)
    details = details if isinstance(details, dict) else {}
    subscription = details.get("subscription") or invoice.get("subscription")
    if isinstance(subscription, dict):
        subscription = subscription.get("id")
    paid_at = dig(invoice, "status_transitions", "paid_at")
    items = []
    for line in dig(invoice, "lines", "data") or ():
        if not isinstance(line, dict):
            continue
        price: dict[str, Any] = line["price"] if isinstance(line.get("price"), dict) else {}
        price_id = dig(line, "pricing", "price_details", "price") or price.get("id")
        product = dig(line, "pricing", "price_details", "product") or price.get("product")
        quantity = line.get("quantity")
        items.append(
            Item(
                quantity=quantity if isinstance(quantity, int) and quantity > 0 else 1,
                subtotal=amount(line.get("amount")),
                sku=price_id if isinstance(price_id, str) else None,
                name=text(line.get("description")),
                product_id=product if isinstance(product, str) else None,
            )
        )
    refs = {
        k: v
        for k, v in (
            ("subscription", subscription),
            ("customer", invoice.get("customer")),
            ("number", invoice.get("number")),
            ("billing_reason", reason),
            # what a refund of this invoice names (pre-basil invoices carry both)
            ("payment_intent", _id_of(invoice.get("payment_intent"))),
            ("charge", _id_of(invoice.get("charge"))),
        )
        if isinstance(v, str) and v
    }
    return [
        Conversion(
            source="stripe",
            kind=SUBSCRIPTION_RENEWED,
            order_key=invoice_id,
            occurred_at=unix_time(paid_at, "paid_at") if isinstance(paid_at, int) else created,
            currency=currency,
            total=money.from_minor(paid, currency),
            subtotal=amount(invoice.get("subtotal")),
            discount=summed(invoice.get("total_discount_amounts")),
            tax=tax,
            customer=Customer(
                email=text(invoice.get("customer_email")),
                id=refs.get("customer"),
                name=text(invoice.get("customer_name")),
            ),
            metadata={**string_map(invoice.get("metadata")), **string_map(details.get("metadata"))},
            items=tuple(items),
            refs=refs,
            livemode=livemode,
            new_customer=False,
        )
    ]


def _id_of(value: Any) -> Any:
    """An id, or an expanded object's id."""
    return value.get("id") if isinstance(value, dict) else value


# ------------------------------------------------------------ subscriptions

STARTED_STATUSES = frozenset({"active", "trialing"})
NOT_STARTED_STATUSES = frozenset({"incomplete", "incomplete_expired"})


def _subscription_conversion(
    kind: str, sub: dict[str, Any], created: datetime, livemode: bool
) -> list[Conversion]:
    sub_id = text(sub.get("id"))
    if not sub_id:
        raise PayloadError("subscription has no id")
    currency = sub.get("currency")
    customer = sub.get("customer")
    customer = customer.get("id") if isinstance(customer, dict) else customer
    refs = {"status": str(sub.get("status") or "")}
    if isinstance(customer, str) and customer:
        refs["customer"] = customer
    return [
        Conversion(
            source="stripe",
            kind=kind,
            order_key=sub_id,
            occurred_at=created,
            currency=optional_currency(currency),
            customer=Customer(id=refs.get("customer")),
            metadata=string_map(sub.get("metadata")),
            refs=refs,
            livemode=livemode,
        )
    ]


def _subscription_created(
    event: dict[str, Any], sub: dict[str, Any], created: datetime, livemode: bool
) -> list[Conversion] | str:
    status = sub.get("status")
    if status not in STARTED_STATUSES:
        return (
            f"subscription status {str(status)[:32]!r} is not started yet; "
            "counted when customer.subscription.updated makes it active"
        )
    return _subscription_conversion(SUBSCRIPTION_STARTED, sub, created, livemode)


def _subscription_updated(
    event: dict[str, Any], sub: dict[str, Any], created: datetime, livemode: bool
) -> list[Conversion] | str:
    previous = dig(event, "data", "previous_attributes", "status")
    if sub.get("status") in STARTED_STATUSES and previous in NOT_STARTED_STATUSES:
        return _subscription_conversion(SUBSCRIPTION_STARTED, sub, created, livemode)
    return "subscription update is not a start"


def _subscription_deleted(
    event: dict[str, Any], sub: dict[str, Any], created: datetime, livemode: bool
) -> list[Conversion] | str:
    return _subscription_conversion(SUBSCRIPTION_CANCELLED, sub, created, livemode)


# ------------------------------------------------------------ refunds

FAILED_REFUNDS = frozenset({"failed", "canceled"})


def _refund_conversion(
    order_key: str,
    minor: Any,  # minor units as the payload has them; money.from_minor checks them
    currency: str,
    created: datetime,
    livemode: bool,
    metadata: dict[str, str],
    refs: dict[str, Any],
    email: str | None = None,
) -> list[Conversion]:
    return [
        Conversion(
            source="stripe",
            kind=REFUND,
            order_key=order_key,
            occurred_at=created,
            currency=currency,
            total=money.from_minor(minor, currency),
            customer=Customer(
                email=email,
                id=refs.get("customer") if isinstance(refs.get("customer"), str) else None,
            ),
            metadata=metadata,
            refs={k: v for k, v in refs.items() if isinstance(v, str) and v},
            livemode=livemode,
        )
    ]


def _refund_created(
    event: dict[str, Any], refund: dict[str, Any], created: datetime, livemode: bool
) -> list[Conversion] | str:
    refund_id = text(refund.get("id"))
    if not refund_id:
        raise PayloadError("refund has no id")
    if refund.get("status") in FAILED_REFUNDS:
        return f"refund status {refund.get('status')!r} moved no money"
    currency = money.currency_code(refund.get("currency"))
    return _refund_conversion(
        refund_id,
        refund.get("amount"),
        currency,
        created,
        livemode,
        string_map(refund.get("metadata")),
        {"charge": refund.get("charge"), "payment_intent": refund.get("payment_intent")},
    )


def _charge_refunded(
    event: dict[str, Any], charge: dict[str, Any], created: datetime, livemode: bool
) -> list[Conversion] | str:
    charge_id = text(charge.get("id"))
    if not charge_id:
        raise PayloadError("charge has no id")
    currency = money.currency_code(charge.get("currency"))
    refs = {
        "charge": charge_id,
        "payment_intent": charge.get("payment_intent"),
        "customer": charge.get("customer"),
    }
    metadata = string_map(charge.get("metadata"))
    email = text(dig(charge, "billing_details", "email")) or text(charge.get("receipt_email"))
    refunds = [
        r
        for r in dig(charge, "refunds", "data") or ()
        if isinstance(r, dict)
        and isinstance(r.get("id"), str)
        and r["id"]
        and r.get("status") not in FAILED_REFUNDS
    ]
    if not refunds:
        return (
            "charge.refunded carries no charge.refunds list (absent by default since "
            "API 2022-11-15); subscribe to refund.created to relay refunds"
        )
    # Each refund is keyed on its re_ id, like refund.created: the ledger keeps one.
    out: list[Conversion] = []
    for refund in sorted(
        refunds, key=lambda r: r["created"] if isinstance(r.get("created"), int) else 0
    ):
        out += _refund_conversion(
            refund["id"],
            refund.get("amount"),
            currency,
            created,
            livemode,
            {**metadata, **string_map(refund.get("metadata"))},
            refs,
            email,
        )
    return out


HANDLERS = {
    "checkout.session.completed": _checkout_completed,
    "checkout.session.async_payment_succeeded": _checkout_async_succeeded,
    "invoice.paid": _invoice_paid,
    "customer.subscription.created": _subscription_created,
    "customer.subscription.updated": _subscription_updated,
    "customer.subscription.deleted": _subscription_deleted,
    "refund.created": _refund_created,
    "charge.refunded": _charge_refunded,
}
