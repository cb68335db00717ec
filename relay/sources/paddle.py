"""Paddle Billing: `Paddle-Signature: ts=<unix>;h1=<hex>[;h1=…]` over `"{ts}:{raw body}"`.

Verification parses the header leniently (unknown keys such as a future `h2`
are ignored, every `h1` is kept), then compares HMAC-SHA256 of `ts:body`
under every configured secret with every `h1` in constant time: any match
passes, which is how secret rotation works.

Timestamp window: `RELAY_PADDLE__TOLERANCE_SECONDS`, default 300. Paddle's SDKs
default to 5 s, which suits an app verifying in-process right away, but relay
often sits behind a load balancer, a proxy or a queue and on hosts whose clocks
drift: a few seconds of skew or buffering would turn authentic deliveries into
400s (and Paddle gives up after its retries). Paddle re-signs every retry with
a fresh `ts`, so a 300 s window does not widen what an old captured request can
do, and replays inside the window are caught by the ledger (same `event_id`).
Timestamps more than the tolerance in the *future* are rejected too: Paddle
never signs ahead, so that is either a badly skewed clock or a forgery attempt.

Conversions:

- `transaction.completed` → purchase, or subscription_renewed when
  `origin == "subscription_recurring"`, keyed on the transaction id.
  `transaction.paid` fires first for the same money and is ignored.
  `subscription_payment_method_change` transactions carry no sale: ignored.
- `subscription.created` → subscription_started; `subscription.canceled` →
  subscription_cancelled; both keyed on the subscription id.
- `adjustment.created` / `adjustment.updated` with `action == "refund"` →
  refund, counted only once `status == "approved"`, keyed on the adjustment id.

Paddle ids carry their type (`txn_`, `sub_`, `adj_`) and are the order keys as
they are; an id without its prefix would get "transaction-"/"subscription-"/
"adjustment-" in front, so keys never collide across object types.

Money is a JSON string in the lowest denomination ("1000" = 10.00 USD,
"100" = ¥100) and becomes Decimal via `money.from_minor`, never float.
Paddle webhooks carry only `customer_id`, no email: with `RELAY_PADDLE__API_KEY`
the worker looks the customer up (relay/enrich.py); the webhook path never
calls Paddle. There is no live/test flag; `RELAY_PADDLE__SANDBOX=true` marks
every event of a sandbox deploy as test. Attribution comes from `custom_data`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import partial
from typing import Any

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
from relay.settings import PaddleSettings
from relay.sources import (
    ParsedEvent,
    amount,
    dig,
    dispatch,
    event_envelope,
    iso_time,
    optional_currency,
    pick_refs,
    string_map,
    text,
    typed_key,
)

NO_SALE_ORIGINS = frozenset({"subscription_payment_method_change"})


MAX_SIGNATURE_HEADER = 4096  # ts= and a few h1= of 64 hex digits each, with room to spare


def parse_signature(header: str) -> tuple[int, list[str]]:
    """`ts=…;h1=…[;h1=…]` → (ts, [h1…]); unknown keys are ignored."""
    ts: int | None = None
    h1: list[str] = []
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "ts" and ts is None:
            if not (value.isascii() and value.isdigit()) or len(value) > 12:  # isdigit takes "²"
                raise SignatureError("Paddle-Signature ts is not a Unix timestamp")
            ts = int(value)
        elif key == "h1" and value:
            h1.append(value)
    if ts is None:
        raise SignatureError("Paddle-Signature has no ts")
    if not h1:
        raise SignatureError("Paddle-Signature has no h1 signature")
    return ts, h1


class PaddleSource:
    name = "paddle"

    def __init__(self, settings: PaddleSettings) -> None:
        self.settings = settings
        self._secrets = [s.get_secret_value().encode() for s in settings.webhook_secrets]
        self._tolerance = settings.tolerance_seconds

    def verify_headers(self, headers: Mapping[str, str], now: float) -> str:
        """The Paddle-Signature header, if it can be a signature (checked before the body
        is read); SignatureError otherwise."""
        header = headers.get("paddle-signature")
        if not header:
            raise SignatureError("missing Paddle-Signature header")
        if not header.isascii() or len(header) > MAX_SIGNATURE_HEADER:
            raise SignatureError("Paddle-Signature is not a ts=…;h1=… signature header")
        return header

    def verify(self, body: bytes, headers: Mapping[str, str], now: float) -> None:
        ts, signatures = parse_signature(self.verify_headers(headers, now))
        message = str(ts).encode() + b":" + body
        given = [s.lower().encode() for s in signatures]
        ok = False
        for secret in self._secrets:
            expected = hmac.new(secret, message, hashlib.sha256).hexdigest().encode()
            for candidate in given:
                ok |= hmac.compare_digest(expected, candidate)
        if not ok:
            raise SignatureError("Paddle-Signature does not match any configured webhook secret")
        if now - ts > self._tolerance:
            raise SignatureError(
                f"Paddle-Signature timestamp is older than the {self._tolerance} s tolerance"
            )
        if ts - now > self._tolerance:
            raise SignatureError(
                f"Paddle-Signature timestamp is more than {self._tolerance} s in the future"
            )

    def parse(self, body: bytes) -> ParsedEvent:
        event, data, parsed = event_envelope(body, "Paddle", "event_id", "data")

        def run(handler: Any) -> Any:
            occurred = event.get("occurred_at")
            return handler(data, iso_time(occurred, "occurred_at") if occurred else None)

        return dispatch(parsed, HANDLERS, run)


# ------------------------------------------------------------------ helpers


def _id(data: dict[str, Any], what: str) -> str:
    value = text(data.get("id"))
    if not value:
        raise PayloadError(f"{what} has no id")
    return value


def _when(data: dict[str, Any], occurred: datetime | None, *keys: str) -> datetime:
    if occurred is not None:
        return occurred
    for key in keys:
        if data.get(key):
            return iso_time(data[key], f"data.{key}")
    raise PayloadError("occurred_at is missing")


def _amount(value: Any, currency: str, name: str, required: bool = False) -> Any:
    if value is not None and not isinstance(value, str):
        raise PayloadError(f"{name} must be a string of lowest-denomination units")
    return amount(value, currency, name, required)


def _customer(data: dict[str, Any]) -> Customer:
    return Customer(id=text(data.get("customer_id")))


# ------------------------------------------------------------------ handlers


def _transaction_paid(data: dict[str, Any], occurred: datetime | None) -> str:
    return "transaction.paid is counted when transaction.completed arrives"


def _transaction_completed(data: dict[str, Any], occurred: datetime | None) -> Conversion | str:
    txn_id = _id(data, "transaction")
    origin = text(data.get("origin")) or "web"
    if origin in NO_SALE_ORIGINS:
        return f"transaction origin {origin!r} is not a sale"
    totals = dig(data, "details", "totals")
    if not isinstance(totals, dict):
        raise PayloadError("transaction has no details.totals")
    currency = money.currency_code(totals.get("currency_code") or data.get("currency_code"))
    items: list[Item] = []
    quantities = {
        text(dig(i, "price", "id")): i.get("quantity")
        for i in data.get("items") or ()
        if isinstance(i, dict)
    }
    for line in dig(data, "details", "line_items") or ():
        if not isinstance(line, dict):
            continue
        quantity = line.get("quantity", quantities.get(text(line.get("price_id"))))
        quantity = quantity if isinstance(quantity, int) and quantity > 0 else 1
        unit = dig(line, "unit_totals", "subtotal")
        items.append(
            Item(
                quantity=quantity,
                price=_amount(unit, currency, "unit_totals.subtotal") if unit is not None else None,
                subtotal=_amount(dig(line, "totals", "subtotal"), currency, "totals.subtotal"),
                sku=text(line.get("price_id")),
                name=text(dig(line, "product", "name")),
                product_id=text(dig(line, "product", "id")),
            )
        )
    kind = SUBSCRIPTION_RENEWED if origin == "subscription_recurring" else PURCHASE
    refs = pick_refs(
        data, "subscription_id", "invoice_number", "invoice_id", "discount_id", "customer_id"
    )
    refs["origin"] = origin
    return Conversion(
        source="paddle",
        kind=kind,
        order_key=typed_key("transaction", txn_id, "txn_"),
        occurred_at=_when(data, occurred, "billed_at", "updated_at"),
        currency=currency,
        total=_amount(totals.get("total"), currency, "details.totals.total", required=True),
        subtotal=_amount(totals.get("subtotal"), currency, "details.totals.subtotal"),
        discount=_amount(totals.get("discount"), currency, "details.totals.discount"),
        tax=_amount(totals.get("tax"), currency, "details.totals.tax"),
        customer=_customer(data),
        metadata=string_map(data.get("custom_data")),
        items=tuple(items),
        refs=refs,
    )


def _subscription(kind: str, data: dict[str, Any], occurred: datetime | None) -> Conversion:
    sub_id = _id(data, "subscription")
    return Conversion(
        source="paddle",
        kind=kind,
        order_key=typed_key("subscription", sub_id, "sub_"),
        occurred_at=_when(data, occurred, "updated_at", "created_at"),
        currency=optional_currency(data.get("currency_code")),
        customer=_customer(data),
        metadata=string_map(data.get("custom_data")),
        refs={
            **pick_refs(data, "transaction_id", "status", "customer_id"),
            "subscription_id": sub_id,
        },
    )


def _adjustment(data: dict[str, Any], occurred: datetime | None) -> Conversion | str:
    adj_id = _id(data, "adjustment")
    action = data.get("action")
    if action != "refund":
        return f"adjustment action {str(action)[:32]!r} is not a refund"
    status = data.get("status")
    if status != "approved":
        return f"refund adjustment is {str(status)[:32]!r}; counted once approved"
    totals = data.get("totals") or {}
    currency = money.currency_code(totals.get("currency_code") or data.get("currency_code"))
    return Conversion(
        source="paddle",
        kind=REFUND,
        order_key=typed_key("adjustment", adj_id, "adj_"),
        occurred_at=_when(data, occurred, "updated_at", "created_at"),
        currency=currency,
        total=_amount(totals.get("total"), currency, "totals.total", required=True),
        subtotal=_amount(totals.get("subtotal"), currency, "totals.subtotal"),
        tax=_amount(totals.get("tax"), currency, "totals.tax"),
        customer=_customer(data),
        refs={
            **pick_refs(data, "transaction_id", "subscription_id", "customer_id"),
            "adjustment_id": adj_id,
        },
    )


HANDLERS: dict[str, Callable[..., Any]] = {
    "transaction.completed": _transaction_completed,
    "transaction.paid": _transaction_paid,
    "subscription.created": partial(_subscription, SUBSCRIPTION_STARTED),
    "subscription.canceled": partial(_subscription, SUBSCRIPTION_CANCELLED),
    "adjustment.created": _adjustment,
    "adjustment.updated": _adjustment,
}
