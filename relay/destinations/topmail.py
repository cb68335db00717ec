"""topmail conversions: `POST {url}/api/v1/conversions` (Bearer `tm_live_…`/`tm_test_…`).

Rules kept (seed document, DESTINATIONS.md §4):

- `email` (the buyer's; no email → skipped, topmail needs a contact); topmail
  answers 404 `contact_not_found` when no contact has that email: a clear,
  permanent failure, not retried.
- `type`: purchase → `purchase`; subscription_started → `signup` or `upgrade`
  (`RELAY_TOPMAIL__SUBSCRIPTION_TYPE`); every other kind → `custom`. Refunds
  are skipped (topmail has no way to take revenue back).
- `revenue` ≥ 0 in major units as an exact JSON number, with `currency`
  (3-letter ISO); cancellations carry no revenue.
- `order_id` ≤ 100 chars, topmail's deduplication key: the order key (kind-
  prefixed for non-purchase kinds so a subscription's events do not collide),
  or `h-` + SHA-256 of source/kind/order key when that is longer.
- `campaign_id` (attribution `topmail_campaign_id`) and `flow_id` (metadata
  `topmail_flow_id`) only when they are UUIDs.
- `attribution_model` and `attribution_window` (1–90) from settings.
- `metadata`: source, kind, order key and processor ids; never the email.
- `Idempotency-Key` header derived from source/kind/order key: the same on
  every attempt. A 409 (`duplicate` order_id, or the idempotency key already
  used) means topmail already has this conversion: delivered.
- 429 (honouring Retry-After) and 5xx are retried; 400/401/403/404 are not.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import orjson

from relay.conversion import (
    PURCHASE,
    REFUND,
    SUBSCRIPTION_CANCELLED,
    SUBSCRIPTION_STARTED,
    Conversion,
)
from relay.destinations import (
    DELIVERED,
    FAILED,
    USER_AGENT,
    Destination,
    Outcome,
    Skip,
    classify,
    excerpt,
    redact,
)
from relay.money import fmt
from relay.settings import TopmailSettings

MAX_ORDER_ID = 100
EMAIL = re.compile(r"^[^\s@]+@[^\s@]+\.[A-Za-z]{2,}$")


def delivery_key(conversion: Conversion) -> str:
    return f"{conversion.source}:{conversion.kind}:{conversion.order_key}"


def order_id(conversion: Conversion) -> str:
    key = conversion.order_key
    if conversion.kind != PURCHASE:
        key = f"{conversion.kind}:{key}"
    if 1 <= len(key) <= MAX_ORDER_ID:
        return key
    return "h-" + hashlib.sha256(delivery_key(conversion).encode()).hexdigest()


def is_uuid(value: str | None) -> bool:
    if not value or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


class Topmail(Destination):
    name = "topmail"
    settings: TopmailSettings

    def conversion_type(self, kind: str) -> str:
        if kind == PURCHASE:
            return "purchase"
        if kind == SUBSCRIPTION_STARTED:
            return self.settings.subscription_type
        return "custom"

    def build(self, conversion: Conversion, now: datetime) -> httpx.Request | Skip:
        s = self.settings
        if conversion.kind == REFUND:
            return Skip("topmail has no refund conversion (revenue must be >= 0)")
        email = (conversion.customer.email or "").strip()
        if not email:
            return Skip("no buyer email: topmail needs the contact's email")
        if not EMAIL.match(email):
            return Skip("buyer email is not an address topmail accepts")
        body: dict[str, Any] = {"email": email, "type": self.conversion_type(conversion.kind)}
        if (
            conversion.total is not None
            and conversion.currency
            and conversion.kind != SUBSCRIPTION_CANCELLED
        ):
            if conversion.total < Decimal(0):
                return Skip("negative revenue: topmail takes revenue >= 0")
            body["revenue"] = orjson.Fragment(fmt(conversion.total).encode())
            body["currency"] = conversion.currency
        body["order_id"] = order_id(conversion)
        campaign = conversion.attribution.get("topmail_campaign_id")
        if is_uuid(campaign):
            body["campaign_id"] = campaign
        flow = conversion.metadata.get("topmail_flow_id")
        if is_uuid(flow):
            body["flow_id"] = flow
        body["attribution_model"] = s.attribution_model
        body["attribution_window"] = s.attribution_window
        metadata: dict[str, str] = {
            "source": conversion.source,
            "kind": conversion.kind,
            "order_key": conversion.order_key,
        }
        for ref, value in sorted(conversion.refs.items()):
            if "@" not in value:
                metadata[ref] = value
        body["metadata"] = metadata
        key = s.api_key.get_secret_value() if s.api_key else ""
        idem = "relay-" + hashlib.sha256(delivery_key(conversion).encode()).hexdigest()[:40]
        return httpx.Request(
            "POST",
            s.url.rstrip("/") + "/api/v1/conversions",
            content=orjson.dumps(body),
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Idempotency-Key": idem,
                "User-Agent": USER_AGENT,
            },
        )

    def classify(self, response: httpx.Response) -> Outcome:
        status = response.status_code
        code, message = _envelope(response)
        if status == 409:
            return Outcome(DELIVERED, f"already recorded by topmail (409 {code or 'duplicate'})")
        if status == 404 and code == "contact_not_found":
            return Outcome(
                FAILED, "HTTP 404 contact_not_found: topmail has no contact with this email"
            )
        outcome = classify(response)
        if code and outcome.kind != DELIVERED:
            return Outcome(outcome.kind, f"HTTP {status} {code}: {message}", outcome.retry_after)
        return outcome


def _envelope(response: httpx.Response) -> tuple[str, str]:
    """topmail's {"error": {"code", "message", "path"}}, redacted; ("", "") when absent."""
    try:
        error = orjson.loads(response.content).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return "", ""
    if not isinstance(error, dict):
        return "", excerpt(response)
    code = str(error.get("code") or "")[:60]
    message = str(error.get("message") or "")
    if error.get("path"):
        message += f" (path {error['path']})"
    return redact(code), redact(message)[:300]
