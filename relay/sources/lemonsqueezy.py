"""Lemon Squeezy: `X-Signature` = hex HMAC-SHA256 of the raw body with the signing secret.

Verification is constant-time (`hmac.compare_digest`) against every configured
secret, so a secret can be rotated by listing old and new for a while.

Lemon Squeezy sends no event id and no timestamp, so there is no replay window
to check. The event id relay records is `"{event_name}:{data.type}:{data.id}"`
(refund events append the cumulative `refunded_amount`, so a second partial
refund of the same order is a new event); replay protection is the ledger: a
replayed body has the same event id and the same conversion keys, so it is
answered "duplicate" and never re-delivered.

Conversions (the body is JSON:API, `{meta, data: {type, id, attributes}}`).
Lemon Squeezy ids are per-type sequential integers (order 5 and subscription
invoice 5 both exist), so every order key names its object type: "order-5",
"subscription-invoice-5", "subscription-5".

- `order_created` with status `paid` → purchase, keyed "order-{id}". It is
  sent for subscription first payments too, so it is *the* first-payment event.
- `subscription_created` → subscription_started, keyed "subscription-{id}".
- `subscription_payment_success` with billing_reason `renewal` → subscription_renewed,
  keyed "subscription-invoice-{id}". `initial` is the same money as
  `order_created` (ignored); `updated` (plan change proration) is ignored.
- `subscription_cancelled` → subscription_cancelled, keyed "subscription-{id}".
- `order_refunded` → refund. Lemon Squeezy reports only the *cumulative*
  `refunded_amount`, so the conversion is a cumulative refund (relay/refunds.py):
  `total` is the cumulative amount, `refs["cumulative_refund_of"]` is "order-{id}",
  and the key is "order-{id}:refund:{cumulative minor units}", so a second
  partial refund is a new conversion; the store records the difference from the
  refunds already recorded for that order.
- `subscription_payment_refunded` → the same, on "subscription-invoice-{id}",
  for renewal invoices only: the initial invoice is the order's first payment,
  whose refund is counted on `order_refunded` (the two would count it twice).

Amounts are integers "in cents" of the order currency, i.e. minor units at the
currency's ISO exponent (TND has 3 decimals, JPY none). `meta.test_mode`
(or `data.attributes.test_mode`) marks test events. Attribution ids come from
`meta.custom_data` (checkout `custom` data).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from relay import money, refunds
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
from relay.settings import LemonSqueezySettings
from relay.sources import (
    ParsedEvent,
    amount,
    dispatch,
    iso_time,
    load_json,
    pick_refs,
    string_map,
    text,
)

REFUND_EVENTS = frozenset({"order_refunded", "subscription_payment_refunded"})
# JSON:API type → the object name in order keys ("order-123").
KEY_PREFIXES = {
    "orders": "order",
    "subscriptions": "subscription",
    "subscription-invoices": "subscription-invoice",
}
HEX = frozenset("0123456789abcdefABCDEF")


class LemonSqueezySource:
    name = "lemonsqueezy"

    def __init__(self, settings: LemonSqueezySettings) -> None:
        self.settings = settings
        self._secrets = [s.get_secret_value().encode() for s in settings.signing_secret]

    def verify_headers(self, headers: Mapping[str, str], now: float) -> str:
        """The X-Signature header, if it can be a signature (checked before the body is
        read); SignatureError otherwise."""
        signature = (headers.get("x-signature") or "").strip()
        if not signature:
            raise SignatureError("missing X-Signature header")
        if len(signature) != 64 or not set(signature) <= HEX:
            raise SignatureError("X-Signature is not a hex HMAC-SHA256 digest")
        return signature

    def verify(self, body: bytes, headers: Mapping[str, str], now: float) -> None:
        given = self.verify_headers(headers, now).lower().encode()
        ok = False
        for secret in self._secrets:
            expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
            ok |= hmac.compare_digest(expected, given)
        if not ok:
            raise SignatureError("X-Signature does not match any configured signing secret")

    def parse(self, body: bytes) -> ParsedEvent:
        doc = load_json(body)
        meta = doc.get("meta")
        data = doc.get("data")
        if not isinstance(meta, dict) or not isinstance(data, dict):
            raise PayloadError("not a Lemon Squeezy webhook: meta or data is missing")
        event_name = text(meta.get("event_name"))
        data_type = text(data.get("type"))
        data_id = text(data.get("id"))
        attrs = data.get("attributes")
        if not event_name or not data_type or not data_id or not isinstance(attrs, dict):
            raise PayloadError(
                "not a Lemon Squeezy webhook: meta.event_name, data.type, data.id "
                "or data.attributes is missing"
            )
        test_mode = meta.get("test_mode")
        if test_mode is None:
            test_mode = attrs.get("test_mode")
        livemode = not bool(test_mode)
        event_id = f"{event_name}:{data_type}:{data_id}"
        if event_name in REFUND_EVENTS:
            # One order can be refunded several times (partial refunds): each new
            # cumulative amount is a new event, not a duplicate of the first.
            event_id += f":{str(attrs.get('refunded_amount'))[:20]}"
        parsed = ParsedEvent(
            event_id=event_id,
            event_type=event_name,
            livemode=livemode,
        )
        return dispatch(
            parsed,
            HANDLERS,
            lambda handler: handler(
                _Context(data_type, data_id, attrs, string_map(meta.get("custom_data")), livemode)
            ),
            noun="event",
        )


class _Context:
    def __init__(
        self,
        data_type: str,
        data_id: str,
        attrs: dict[str, Any],
        custom: dict[str, str],
        livemode: bool,
    ) -> None:
        self.type = data_type
        self.id = data_id
        self.attrs = attrs
        self.custom = custom
        self.livemode = livemode

    @property
    def key(self) -> str:
        """This object's order key: its type and id ("order-123", "subscription-invoice-456")."""
        return f"{KEY_PREFIXES.get(self.type, self.type)}-{self.id}"

    def currency(self) -> str:
        return money.currency_code(self.attrs.get("currency"))

    def amount(self, key: str, currency: str, required: bool = False) -> Any:
        return amount(self.attrs.get(key), currency, f"data.attributes.{key}", required)

    def when(self, *keys: str) -> datetime:
        for key in keys:
            if self.attrs.get(key):
                return iso_time(self.attrs[key], f"data.attributes.{key}")
        raise PayloadError(f"data.attributes.{keys[0]} is missing")

    def customer(self) -> Customer:
        a = self.attrs
        return Customer(
            email=text(a.get("user_email")),
            id=text(a.get("customer_id")),
            name=text(a.get("user_name")),
        )

    def refs(self, *keys: str) -> dict[str, str]:
        return pick_refs(self.attrs, *keys)

    def conversion(
        self, kind: str, order_key: str, occurred: datetime, **fields: Any
    ) -> Conversion:
        return Conversion(
            source="lemonsqueezy",
            kind=kind,
            order_key=order_key,
            occurred_at=occurred,
            customer=self.customer(),
            metadata=self.custom,
            livemode=self.livemode,
            **fields,
        )


def _order_created(ctx: _Context) -> Conversion | str:
    status = ctx.attrs.get("status")
    if status != "paid":
        return f"order status {str(status)[:32]!r} is not paid"
    currency = ctx.currency()
    item = ctx.attrs.get("first_order_item")
    items: tuple[Item, ...] = ()
    if isinstance(item, dict):
        quantity = item.get("quantity")
        price = item.get("price")
        items = (
            Item(
                quantity=quantity if isinstance(quantity, int) and quantity > 0 else 1,
                price=None if price is None else money.from_minor(price, currency),
                name=text(item.get("product_name")),
                product_id=text(item.get("product_id")),
                variant_id=text(item.get("variant_id")),
                sku=text(item.get("price_id")),
            ),
        )
    return ctx.conversion(
        PURCHASE,
        ctx.key,
        ctx.when("created_at", "updated_at"),
        currency=currency,
        total=ctx.amount("total", currency, required=True),
        subtotal=ctx.amount("subtotal", currency),
        discount=ctx.amount("discount_total", currency),
        tax=ctx.amount("tax", currency),
        items=items,
        refs={**ctx.refs("identifier", "order_number", "store_id"), "order_id": ctx.id},
    )


def _subscription_created(ctx: _Context) -> Conversion:
    return ctx.conversion(
        SUBSCRIPTION_STARTED,
        ctx.key,
        ctx.when("created_at", "updated_at"),
        refs={
            **ctx.refs("order_id", "product_id", "variant_id", "status"),
            "subscription_id": ctx.id,
        },
    )


def _subscription_cancelled(ctx: _Context) -> Conversion:
    return ctx.conversion(
        SUBSCRIPTION_CANCELLED,
        ctx.key,
        ctx.when("updated_at", "created_at"),
        refs={
            **ctx.refs("order_id", "product_id", "variant_id", "ends_at"),
            "subscription_id": ctx.id,
        },
    )


def _payment_success(ctx: _Context) -> Conversion | str:
    reason = ctx.attrs.get("billing_reason")
    if reason == "initial":
        return "initial subscription payment is counted on order_created"
    if reason != "renewal":
        return f"subscription payment billing_reason {str(reason)[:32]!r} is not a renewal"
    if ctx.attrs.get("status") not in (None, "paid"):
        return f"subscription invoice status {str(ctx.attrs.get('status'))[:32]!r} is not paid"
    currency = ctx.currency()
    return ctx.conversion(
        SUBSCRIPTION_RENEWED,
        ctx.key,
        ctx.when("created_at", "updated_at"),
        currency=currency,
        total=ctx.amount("total", currency, required=True),
        subtotal=ctx.amount("subtotal", currency),
        discount=ctx.amount("discount_total", currency),
        tax=ctx.amount("tax", currency),
        refs={**ctx.refs("subscription_id", "store_id"), "invoice_id": ctx.id},
    )


def _refunded(ctx: _Context) -> Conversion | str:
    """A cumulative refund of this object (relay/refunds.py): the store records the delta."""
    raw = ctx.attrs.get("refunded_amount")
    if raw in (None, 0, "0"):
        return "no refunded amount on this object"
    currency = ctx.currency()
    cumulative = money.from_minor(raw, currency)
    return ctx.conversion(
        REFUND,
        refunds.cumulative_key(ctx.key, money.to_minor(cumulative, currency)),
        ctx.when("refunded_at", "updated_at"),
        currency=currency,
        total=cumulative,
        refs={
            **ctx.refs("subscription_id", "order_number", "identifier"),
            "refunded_of": ctx.id,
            refunds.CUMULATIVE_REF: ctx.key,
        },
    )


def _subscription_payment_refunded(ctx: _Context) -> Conversion | str:
    reason = ctx.attrs.get("billing_reason")
    if reason == "initial":
        return "a refund of the initial subscription payment is counted on order_refunded"
    if reason != "renewal":
        return f"subscription payment billing_reason {str(reason)[:32]!r} is not a renewal"
    return _refunded(ctx)


HANDLERS = {
    "order_created": _order_created,
    "subscription_created": _subscription_created,
    "subscription_payment_success": _payment_success,
    "subscription_cancelled": _subscription_cancelled,
    "order_refunded": _refunded,
    "subscription_payment_refunded": _subscription_payment_refunded,
}
