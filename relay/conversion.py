"""Conversion: the one normalized record that sources produce and destinations consume.

Money is Decimal in major units of `currency` (the source did the minor→major
step with the processor's exponent). `total` is what the buyer paid, after
discounts, with tax and shipping; `net` is the same without tax and shipping.
A refund's `total` is the refunded amount, positive.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

PURCHASE = "purchase"
SUBSCRIPTION_STARTED = "subscription_started"
SUBSCRIPTION_RENEWED = "subscription_renewed"
SUBSCRIPTION_CANCELLED = "subscription_cancelled"
REFUND = "refund"
KINDS = (PURCHASE, SUBSCRIPTION_STARTED, SUBSCRIPTION_RENEWED, SUBSCRIPTION_CANCELLED, REFUND)
REVENUE_KINDS = frozenset({PURCHASE, SUBSCRIPTION_RENEWED})

# Canonical attribution names; the metadata key each is read from is configurable.
ATTRIBUTION_KEYS = (
    "simmer_anonymous_id",
    "irclickid",
    "pagent_session_id",
    "pagent_user_id",
    "pagent_conversion_id",
    "pagent_visit_id",
    "topmail_campaign_id",
    # Ad platforms (Meta Conversions API, GA4 Measurement Protocol); relay.js fills them.
    "fbp",
    "fbc",
    "fbclid",
    "client_user_agent",
    "client_ip_address",
    "event_source_url",
    "ga_client_id",
    "ga_session_id",
    "gclid",
)


@dataclass(frozen=True, slots=True)
class Item:
    quantity: int = 1
    price: Decimal | None = None  # unit price, major units
    subtotal: Decimal | None = None  # line total before order-level discount
    sku: str | None = None
    name: str | None = None
    category: str | None = None
    product_id: str | None = None
    variant_id: str | None = None


@dataclass(frozen=True, slots=True)
class Customer:
    email: str | None = None
    id: str | None = None
    name: str | None = None
    phone: str | None = None
    city: str | None = None
    country: str | None = None
    state: str | None = None
    postal_code: str | None = None

    @property
    def first_name(self) -> str | None:
        return self.name.split()[0] if self.name and self.name.split() else None

    @property
    def last_name(self) -> str | None:
        parts = self.name.split() if self.name else []
        return " ".join(parts[1:]) if len(parts) > 1 else None


@dataclass(frozen=True, slots=True)
class Conversion:
    source: str
    kind: str
    order_key: str  # unique per source and kind: the ledger's dedupe key
    occurred_at: datetime  # timezone-aware
    currency: str | None = None
    total: Decimal | None = None
    subtotal: Decimal | None = None
    discount: Decimal | None = None
    tax: Decimal | None = None
    shipping: Decimal | None = None
    customer: Customer = field(default_factory=Customer)
    attribution: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    items: tuple[Item, ...] = ()
    promo_code: str | None = None
    refs: dict[str, str] = field(default_factory=dict)  # processor ids (payment_intent, invoice…)
    livemode: bool = True
    new_customer: bool | None = None

    @property
    def net(self) -> Decimal | None:
        """Revenue after discounts, without tax and shipping."""
        if self.total is None:
            return None
        return self.total - (self.tax or 0) - (self.shipping or 0)

    def replace(self, **changes: Any) -> Conversion:
        """A copy with some fields changed (a cheap `dataclasses.replace`: it runs on the
        webhook path; values are not re-validated, and every name must be a field)."""
        unknown = changes.keys() - _FIELDS
        if unknown:
            raise TypeError(f"unknown Conversion field(s): {sorted(unknown)}")
        copy = object.__new__(Conversion)
        for name in _FIELDS:
            object.__setattr__(
                copy, name, changes[name] if name in changes else getattr(self, name)
            )
        return copy

    def to_json(self) -> bytes:
        # orjson serializes (nested) dataclasses itself: the same bytes as
        # orjson.dumps(dataclasses.asdict(self)) without asdict's deep copy (~10x faster).
        return orjson.dumps(self, default=_default)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Conversion:
        data = orjson.loads(raw)
        for key in ("total", "subtotal", "discount", "tax", "shipping"):
            if data.get(key) is not None:
                data[key] = Decimal(data[key])
        data["occurred_at"] = datetime.fromisoformat(data["occurred_at"])
        data["customer"] = Customer(**data.get("customer") or {})
        data["items"] = tuple(
            Item(
                **{
                    **item,
                    "price": _dec(item.get("price")),
                    "subtotal": _dec(item.get("subtotal")),
                }
            )
            for item in data.get("items") or ()
        )
        return cls(**data)

    def summary(self) -> dict[str, Any]:
        """What the webhook response and logs may show: no email, no metadata."""
        return {
            "kind": self.kind,
            "order_key": self.order_key,
            "total": None if self.total is None else format(self.total, "f"),
            "currency": self.currency,
        }


_FIELDS = frozenset(f.name for f in dataclasses.fields(Conversion))


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(type(value).__name__)
