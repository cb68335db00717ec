"""Chargebee: HTTP Basic auth on the webhook URL (Chargebee signs nothing).

`verify` decodes `Authorization: Basic …` and compares username and password
with the configured ones in constant time (both compared every time); a
missing or wrong credential is an AuthError, answered 401 with
`WWW-Authenticate: Basic`. The event id (`ev_…`) is the ledger's dedupe key:
Chargebee retries for two days and may deliver duplicates and out of order.

Conversions:

Chargebee invoice and subscription ids are plain (sequential or chosen by the
site), so order keys name the object type: "invoice-{id}", "subscription-{id}";
transaction ids already carry `txn_` and are kept as they are (a plain one
becomes "transaction-{id}").

- `payment_succeeded` is the money event. The first invoice
  (`invoice.first_invoice` true, or a non-recurring invoice) → purchase;
  `recurring && !first_invoice` → subscription_renewed. Keyed on the invoice
  (the transaction when there is no invoice).
- `subscription_created` → subscription_started; `subscription_cancelled` →
  subscription_cancelled; both keyed on the subscription.
- `payment_refunded` → refund of the refund transaction's `amount`, keyed on
  that transaction.
- `subscription_renewed` is ignored: its invoice may still be unpaid; the
  renewal money is counted on `payment_succeeded`.

Amounts are integer cents; zero-decimal currencies (JPY…) are not scaled by
Chargebee, which is exactly the ISO exponent relay uses. Attribution ids come
from `cf_*` custom fields (the `cf_` prefix is stripped: `cf_irclickid` →
`irclickid`) and the `meta_data` JSON object, on the customer and then the
subscription (the subscription wins on conflicts). Chargebee has no test flag:
`RELAY_CHARGEBEE__SANDBOX=true` marks every event of a test-site deploy.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import partial
from typing import Any

import orjson

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
from relay.errors import AuthError, PayloadError
from relay.settings import ChargebeeSettings
from relay.sources import (
    ParsedEvent,
    amount,
    dispatch,
    event_envelope,
    optional_currency,
    pick_refs,
    string_map,
    text,
    typed_key,
    unix_time,
)


class ChargebeeSource:
    name = "chargebee"

    def __init__(self, settings: ChargebeeSettings) -> None:
        self.settings = settings
        self._username = (settings.username or "").encode()
        self._password = (
            settings.password.get_secret_value() if settings.password else ""
        ).encode()

    def verify(self, body: bytes, headers: Mapping[str, str], now: float) -> None:
        self.verify_headers(headers, now)

    def verify_headers(self, headers: Mapping[str, str], now: float) -> None:
        """HTTP Basic credentials are the whole check: done before the body is read."""
        header = (headers.get("authorization") or "").strip()
        scheme, _, encoded = header.partition(" ")
        if not header:
            raise AuthError("missing HTTP Basic credentials")
        if scheme.lower() != "basic" or not encoded.strip():
            raise AuthError("Authorization is not HTTP Basic")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise AuthError("Authorization Basic value is not base64") from None
        user, sep, password = decoded.partition(b":")
        user_ok = hmac.compare_digest(user, self._username)
        password_ok = hmac.compare_digest(password, self._password)
        if not (sep and user_ok and password_ok):
            raise AuthError("wrong HTTP Basic credentials")

    def parse(self, body: bytes) -> ParsedEvent:
        event, content, parsed = event_envelope(body, "Chargebee", "id", "content")
        return dispatch(
            parsed,
            HANDLERS,
            lambda handler: handler(content, unix_time(event.get("occurred_at"), "occurred_at")),
        )


# ------------------------------------------------------------------ helpers


def _obj(content: dict[str, Any], key: str) -> dict[str, Any]:
    value = content.get(key)
    return value if isinstance(value, dict) else {}


def custom_fields(obj: dict[str, Any]) -> dict[str, str]:
    """`meta_data` (a JSON object, or its text) and `cf_*` fields, prefix stripped."""
    out: dict[str, str] = {}
    meta = obj.get("meta_data")
    if isinstance(meta, str):
        try:
            meta = orjson.loads(meta)
        except orjson.JSONDecodeError:
            meta = None
    out.update(string_map(meta))
    for key, value in obj.items():
        if key.startswith("cf_") and len(key) > 3 and value is not None:
            out[key[3:]] = value if isinstance(value, str) else orjson.dumps(value).decode()
    return out


def _metadata(content: dict[str, Any]) -> dict[str, str]:
    return {
        **custom_fields(_obj(content, "customer")),
        **custom_fields(_obj(content, "subscription")),
    }


def _customer(content: dict[str, Any]) -> Customer:
    c = _obj(content, "customer")
    billing: dict[str, Any] = (
        c["billing_address"] if isinstance(c.get("billing_address"), dict) else {}
    )
    invoice_billing = _obj(content, "invoice").get("billing_address")
    if not billing and isinstance(invoice_billing, dict):
        billing = invoice_billing
    name = " ".join(p for p in (text(c.get("first_name")), text(c.get("last_name"))) if p)
    return Customer(
        email=text(c.get("email")) or text(billing.get("email")),
        id=text(c.get("id")),
        name=name or None,
        phone=text(c.get("phone")),
        city=text(billing.get("city")),
        country=text(billing.get("country")),
        state=text(billing.get("state_code")) or text(billing.get("state")),
        postal_code=text(billing.get("zip")),
    )


# ------------------------------------------------------------------ handlers


def _payment_succeeded(content: dict[str, Any], occurred: datetime) -> Conversion | str:
    txn = _obj(content, "transaction")
    invoice = _obj(content, "invoice")
    if not txn and not invoice:
        raise PayloadError("payment_succeeded carries neither transaction nor invoice")
    if txn.get("type") not in (None, "payment"):
        return f"transaction type {str(txn.get('type'))[:32]!r} is not a payment"
    currency = money.currency_code(invoice.get("currency_code") or txn.get("currency_code"))
    renewal = bool(invoice.get("recurring")) and not invoice.get("first_invoice")
    invoice_id, txn_id = text(invoice.get("id")), text(txn.get("id"))
    if invoice_id:
        key = typed_key("invoice", invoice_id)
    elif txn_id:
        key = typed_key("transaction", txn_id, "txn_")
    else:
        raise PayloadError("payment_succeeded has no invoice or transaction id")
    if invoice:
        total = amount(invoice.get("total"), currency, "invoice.total", required=True)
        discounts = [d.get("amount") for d in invoice.get("discounts") or () if isinstance(d, dict)]
        discount = (
            sum(
                (money.from_minor(a, currency) for a in discounts if a is not None),
                start=money.from_minor(0, currency),
            )
            if discounts
            else None
        )
        items = tuple(
            Item(
                quantity=q if isinstance(q := li.get("quantity"), int) and q > 0 else 1,
                price=amount(li.get("unit_amount"), currency, "line_items.unit_amount"),
                subtotal=amount(li.get("amount"), currency, "line_items.amount"),
                sku=text(li.get("entity_id")),
                name=text(li.get("description")),
                category=text(li.get("entity_type")),
            )
            for li in invoice.get("line_items") or ()
            if isinstance(li, dict)
        )
        fields: dict[str, Any] = {
            "subtotal": amount(invoice.get("sub_total"), currency, "invoice.sub_total"),
            "tax": amount(invoice.get("tax"), currency, "invoice.tax"),
            "discount": discount,
            "items": items,
        }
    else:
        total = amount(txn.get("amount"), currency, "transaction.amount", required=True)
        fields = {}
    paid_at = invoice.get("paid_at") or txn.get("date")
    return Conversion(
        source="chargebee",
        kind=SUBSCRIPTION_RENEWED if renewal else PURCHASE,
        order_key=key,
        occurred_at=unix_time(paid_at, "paid_at") if isinstance(paid_at, int) else occurred,
        currency=currency,
        total=total,
        customer=_customer(content),
        metadata=_metadata(content),
        refs={
            **pick_refs(txn, transaction_id="id"),
            **pick_refs(invoice, "subscription_id", invoice_id="id"),
        },
        new_customer=None if renewal else bool(invoice.get("first_invoice", True)),
        **fields,
    )


def _subscription(kind: str, content: dict[str, Any], occurred: datetime) -> Conversion:
    sub = _obj(content, "subscription")
    sub_id = text(sub.get("id"))
    if not sub_id:
        raise PayloadError("subscription has no id")
    return Conversion(
        source="chargebee",
        kind=kind,
        order_key=typed_key("subscription", sub_id),
        occurred_at=occurred,
        currency=optional_currency(sub.get("currency_code")),
        customer=_customer(content),
        metadata=_metadata(content),
        refs=pick_refs(sub, "plan_id", "status", "cancel_reason", subscription_id="id"),
    )


def _payment_refunded(content: dict[str, Any], occurred: datetime) -> Conversion:
    txn = _obj(content, "transaction")
    txn_id = text(txn.get("id"))
    if not txn_id:
        raise PayloadError("payment_refunded has no transaction id")
    currency = money.currency_code(txn.get("currency_code"))
    date = txn.get("date")
    return Conversion(
        source="chargebee",
        kind=REFUND,
        order_key=typed_key("transaction", txn_id, "txn_"),
        occurred_at=unix_time(date, "transaction.date") if isinstance(date, int) else occurred,
        currency=currency,
        total=amount(txn.get("amount"), currency, "transaction.amount", required=True),
        customer=_customer(content),
        metadata=_metadata(content),
        refs={
            **pick_refs(txn, transaction_id="id"),
            **pick_refs(_obj(content, "invoice"), invoice_id="id"),
            **pick_refs(_obj(content, "credit_note"), credit_note_id="id"),
        },
    )


def _subscription_renewed(content: dict[str, Any], occurred: datetime) -> str:
    return "subscription_renewed is counted when its payment_succeeded arrives"


HANDLERS: dict[str, Callable[..., Any]] = {
    "payment_succeeded": _payment_succeeded,
    "subscription_created": partial(_subscription, SUBSCRIPTION_STARTED),
    "subscription_cancelled": partial(_subscription, SUBSCRIPTION_CANCELLED),
    "payment_refunded": _payment_refunded,
    "subscription_renewed": _subscription_renewed,
}
