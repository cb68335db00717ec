"""GA4 Measurement Protocol: `POST {url}/mp/collect?measurement_id=…&api_secret=…`.

JSON body `{"client_id", "timestamp_micros", "events": [{"name", "params"}]}`.
Google takes the API secret only in the query string, so that URL is never
printed: errors are built from Google's answer alone, the httpx logger stays at
WARNING, and `redact` masks any `api_secret=` that reaches a log line. Rules
kept (docs/ad-platforms.md):

- `client_id` is the browser's own GA client id (`ga_client_id`, from the `_ga`
  cookie: `GA1.1.<client id>`; the cookie value itself is accepted too). It is
  never invented: without it the conversion is skipped, because a made-up id
  is a new user with no session and no attribution.
- `session_id` (`ga_session_id`, from the `_ga_<container>` cookie) when known:
  GA4 then credits the session's source. Google accepts session attribution
  only within 24 hours of the session's start.
- `timestamp_micros`: the conversion's time; GA4 takes events up to 72 hours
  back, so an older conversion is skipped with the reason.
- purchase (and subscription_renewed, another payment) → `purchase`;
  refund → `refund` with the refunded purchase's `transaction_id`. Other kinds
  have no GA4 event and are skipped.
- `transaction_id`: relay.destinations.ids.order_id, the same on every retry
  and the id the merchant gives gtag's own purchase event, so GA4 keeps one.
- `value` as GA4 defines it: the items' price × quantity, without tax or
  shipping (relay's `net`: total − tax − shipping, after discounts), exact, as a
  JSON number in major units; `currency`, `tax`, `shipping`, `coupon`,
  `customer_type` when known.
- `items` (required): each with `item_id` (SKU or product id) and/or
  `item_name`, the processor's unit `price`, `quantity`; an order-level
  discount shows in `value` and `coupon` (GA4 keeps event- and item-level
  figures apart). When the processor gave no line items (or a line without an
  id, a name or a price), one item stands for the whole order:
  `{"item_name": "Order", "price": value, "quantity": 1}`.

GA4 answers 2xx even for an invalid hit; `relay check --probe ga4` sends a
sample to `/debug/mp/collect`, which says what is wrong (tests/emulators/ga4.py
validates every request the same way). 5xx and network errors are retried.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson

from relay.conversion import PURCHASE, REFUND, SUBSCRIPTION_RENEWED, Conversion
from relay.destinations import USER_AGENT, Destination, Skip
from relay.destinations.ids import order_id, refunded_order
from relay.money import exponent, fmt
from relay.settings import GA4Settings

MAX_AGE = timedelta(hours=72)
AGE_MARGIN = timedelta(minutes=1)
MAX_VALUE_CHARS = 100  # "parameter values … 100 characters"
MAX_ITEMS = 200
GA_COOKIE = re.compile(r"^GA[0-9]\.[0-9]+\.([0-9]+\.[0-9]+)$", re.ASCII)
CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,100}$", re.ASCII)
SESSION_ID = re.compile(r"^[0-9]{1,20}$", re.ASCII)
ORDER_ITEM = "Order"


def client_id(raw: str | None) -> str | None:
    """The GA client id: `1234567890.1700000000`, from itself or from a whole `_ga` value."""
    value = (raw or "").strip()
    match = GA_COOKIE.match(value)
    if match:
        return match.group(1)
    return value if CLIENT_ID.match(value) else None


def transaction_id(value: str) -> str:
    """The id itself when it fits GA4's 100 characters, else a stable digest of it."""
    if len(value) <= MAX_VALUE_CHARS:
        return value
    return "h-" + hashlib.sha256(value.encode()).hexdigest()[:62]


def number(value: Decimal) -> orjson.Fragment:
    """An exact JSON number in major units (`12.345`, `800`), never a binary float."""
    return orjson.Fragment(fmt(value).encode())


def text(value: str) -> str:
    return value[:MAX_VALUE_CHARS]


def unix_micros(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


class GA4(Destination):
    name = "ga4"
    max_age = MAX_AGE - AGE_MARGIN  # relay backfill --destination plans within it
    settings: GA4Settings

    def items(self, conversion: Conversion, value: Decimal) -> list[dict[str, Any]]:
        places = exponent(conversion.currency or "USD")
        out: list[dict[str, Any]] = []
        for item in conversion.items[:MAX_ITEMS]:
            ident = item.sku or item.product_id
            price = item.price
            if price is None and item.subtotal is not None and item.quantity:
                unit = item.subtotal / item.quantity
                price = unit if unit == unit.quantize(Decimal(1).scaleb(-places)) else None
            if (not ident and not item.name) or price is None or price < 0:
                out = []
                break
            entry: dict[str, Any] = {}
            if ident:
                entry["item_id"] = text(ident)
            if item.name:
                entry["item_name"] = text(item.name)
            if item.category:
                entry["item_category"] = text(item.category)
            entry["price"] = number(price)
            entry["quantity"] = item.quantity
            out.append(entry)
        if not out:  # one item standing for the whole order
            out = [{"item_name": ORDER_ITEM, "price": number(value), "quantity": 1}]
        return out

    def event(self, conversion: Conversion) -> dict[str, Any] | Skip:
        if conversion.currency is None or conversion.total is None:
            return Skip("no order amount: GA4 needs value and currency")
        if conversion.kind == REFUND:
            refunded = refunded_order(conversion)
            if not refunded:
                return Skip("the refund does not say which purchase it refunds (no transaction_id)")
            value = conversion.total
            params: dict[str, Any] = {
                "transaction_id": transaction_id(refunded),
                "currency": conversion.currency,
                "value": number(value),
                "items": [{"item_name": ORDER_ITEM, "price": number(value), "quantity": 1}],
            }
            return {"name": "refund", "params": params}
        if conversion.kind not in (PURCHASE, SUBSCRIPTION_RENEWED):
            return Skip(f"GA4 has no event for {conversion.kind}")
        net = conversion.net
        assert net is not None
        if net < 0:
            return Skip("negative value: the discount exceeds the items' price")
        params = {
            "transaction_id": transaction_id(order_id(conversion)),
            "currency": conversion.currency,
            "value": number(net),
        }
        if conversion.tax is not None:
            params["tax"] = number(conversion.tax)
        if conversion.shipping is not None:
            params["shipping"] = number(conversion.shipping)
        if conversion.promo_code:
            params["coupon"] = text(conversion.promo_code)
        if conversion.new_customer is not None:
            params["customer_type"] = "new" if conversion.new_customer else "returning"
        params["items"] = self.items(conversion, net)
        return {"name": "purchase", "params": params}

    def body(self, conversion: Conversion, now: datetime) -> dict[str, Any] | Skip:
        cid = client_id(conversion.attribution.get("ga_client_id"))
        if cid is None:
            return Skip(
                "no GA client id (ga_client_id, from the _ga cookie): GA4 would count "
                "an invented id as a new user with no session"
            )
        if conversion.occurred_at < now - MAX_AGE + AGE_MARGIN:
            return Skip("older than 72 hours: GA4 takes timestamp_micros up to 72 hours back")
        event = self.event(conversion)
        if isinstance(event, Skip):
            return event
        session = (conversion.attribution.get("ga_session_id") or "").strip()
        if SESSION_ID.match(session):
            event["params"]["session_id"] = session
        body: dict[str, Any] = {"client_id": cid}
        if conversion.occurred_at <= now:  # a clock ahead of ours: GA4 uses the request time
            body["timestamp_micros"] = unix_micros(conversion.occurred_at)
        body["events"] = [event]
        return body

    def build(self, conversion: Conversion, now: datetime) -> httpx.Request | Skip:
        body = self.body(conversion, now)
        if isinstance(body, Skip):
            return body
        return self.request(body)

    def request(self, body: dict[str, Any], path: str = "/mp/collect") -> httpx.Request:
        s = self.settings
        secret = s.api_secret.get_secret_value() if s.api_secret else ""
        query = urlencode({"measurement_id": s.measurement_id or "", "api_secret": secret})
        return httpx.Request(
            "POST",
            f"{s.url.rstrip('/')}{path}?{query}",
            content=orjson.dumps(body),
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
        )
