"""Converge server-side events: raw JSON `POST` to the source's postback URL.

Rules kept (seed document, DESTINATIONS.md §5):

- Raw JSON only (`Content-Type: application/json`); the postback URL is a
  secret (SecretStr, never logged); `X-Webhook-Token` when configured.
- `event_name` from the kind: purchase → Placed Order, subscription_started →
  Started Subscription, subscription_cancelled → Cancelled Subscription,
  subscription_renewed → Placed Recurring Subscription Order. Converge
  documents no refund event, so refunds are not in the default kinds and are
  skipped if configured anyway (a made-up name would show up as an unknown
  event and never reduce revenue).
- `event_id` on every event, globally unique and the same on every retry:
  `{source}:{kind}:{order_key}` (Converge deduplicates on it at ingestion,
  so resending after a timeout is safe).
- `properties`: `id` (the order key), `total_price`/`total_tax`/
  `total_shipping` as exact JSON numbers in major units, `currency`, `items`
  when known, the buyer's `$…` fields and `$is_new_customer`.
  `$is_new_customer` is `conversion.new_customer`, which the ledger derives
  when recording (first revenue conversion of that customer id / email in
  the ledger); when it cannot tell (no customer key, non-revenue kinds) the
  value is `RELAY_CONVERGE__NEW_CUSTOMER_DEFAULT` (default true).
- `profile_properties` (always an object) and `aliases`: 1–10 entries of the
  form `urn:email:<email>`; without an email no alias can be formed and the
  conversion is skipped.
- `timestamp` ISO-8601 with its UTC offset (`2024-09-02T12:34:56+00:00`).
- Statuses are undocumented: 2xx delivered; 408/429/5xx and network errors
  retried; other 4xx permanent. A redirect is not followed and fails; its
  target is shown without its path (the postback URL's path is the secret).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from relay.conversion import (
    PURCHASE,
    SUBSCRIPTION_CANCELLED,
    SUBSCRIPTION_RENEWED,
    SUBSCRIPTION_STARTED,
    Conversion,
)
from relay.destinations import (
    FAILED,
    USER_AGENT,
    Destination,
    Outcome,
    Skip,
    classify,
    redirected,
)
from relay.money import fmt
from relay.settings import ConvergeSettings

EVENT_NAMES = {
    PURCHASE: "Placed Order",
    SUBSCRIPTION_STARTED: "Started Subscription",
    SUBSCRIPTION_CANCELLED: "Cancelled Subscription",
    SUBSCRIPTION_RENEWED: "Placed Recurring Subscription Order",
}
MAX_ALIASES = 10


def number(value: Any) -> orjson.Fragment:
    return orjson.Fragment(fmt(value).encode())


def event_id(conversion: Conversion) -> str:
    return f"{conversion.source}:{conversion.kind}:{conversion.order_key}"


class Converge(Destination):
    name = "converge"
    settings: ConvergeSettings

    def build(self, conversion: Conversion, now: datetime) -> httpx.Request | Skip:
        name = EVENT_NAMES.get(conversion.kind)
        if name is None:
            return Skip(f"Converge has no event for {conversion.kind}")
        c = conversion.customer
        email = (c.email or "").strip()
        if not email or "@" not in email or any(ch.isspace() for ch in email):
            return Skip("no alias can be formed: Converge needs the buyer's email")
        aliases = [f"urn:email:{email.lower()}"][:MAX_ALIASES]

        profile: dict[str, str] = {}
        for key, value in (
            ("$email", email),
            ("$first_name", c.first_name),
            ("$last_name", c.last_name),
            ("$phone_number", c.phone),
            ("$city", c.city),
            ("$country_code", c.country),
            ("$state", c.state),
            ("$zip_code", c.postal_code),
        ):
            if value:
                profile[key] = value

        props: dict[str, Any] = {"id": conversion.order_key}
        if conversion.total is not None and conversion.currency:
            props["total_price"] = number(conversion.total)
            props["total_tax"] = number(conversion.tax or 0)
            props["total_shipping"] = number(conversion.shipping or 0)
            props["currency"] = conversion.currency
            items = []
            for item in conversion.items:
                entry: dict[str, Any] = {}
                for key, value in (
                    ("product_id", item.product_id),
                    ("variant_id", item.variant_id),
                    ("sku", item.sku),
                    ("name", item.name),
                ):
                    if value:
                        entry[key] = value
                if item.price is not None:
                    entry["price"] = number(item.price)
                elif item.subtotal is not None and item.quantity:
                    entry["price"] = number(item.subtotal / item.quantity)
                entry["currency"] = conversion.currency
                entry["quantity"] = item.quantity
                items.append(entry)
            if items:
                props["items"] = items
        props.update(profile)
        new = conversion.new_customer
        props["$is_new_customer"] = self.settings.new_customer_default if new is None else new

        body = {
            "event_name": name,
            "event_id": event_id(conversion),
            "properties": props,
            "profile_properties": profile,
            "aliases": aliases,
            "timestamp": conversion.occurred_at.astimezone(UTC).isoformat(timespec="seconds"),
        }
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        token = self.settings.webhook_token
        if token is not None and token.get_secret_value():
            headers["X-Webhook-Token"] = token.get_secret_value()
        url = self.settings.postback_url.get_secret_value() if self.settings.postback_url else ""
        return httpx.Request("POST", url, content=orjson.dumps(body), headers=headers)

    def classify(self, response: httpx.Response) -> Outcome:
        if 300 <= response.status_code < 400:
            return Outcome(FAILED, redirected(response, path=False))
        return classify(response)
