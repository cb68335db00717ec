"""Simmer server-side conversions: `POST {url}` (legacy `/api/conversion`, `simmer_sk_` keys).

Rules kept (seed document): Bearer key; `project_id`; `order_id` 1–128 ASCII
(the idempotency key, so a retry never double counts); `email` required;
`total_revenue` major units, 0 ≤ x ≤ 1,000,000; `currency` uppercase ISO 4217;
`occurred_at` RFC 3339 with timezone and within the last 7 days; `anonymous_id`
only when known (1–256 chars, never ""). 400/401/404 are permanent, 429 and
502 retried. Default client-side limit 50/minute, Simmer's per-project limit.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta
from decimal import Decimal

import httpx
import orjson

from relay.conversion import Conversion
from relay.destinations import USER_AGENT, Destination, Skip, iso_utc
from relay.money import fmt
from relay.settings import SimmerSettings

# Simmer's published email validator (API reference).
EMAIL = re.compile(
    r"^(?!\.)(?!.*\.\.)([A-Za-z0-9_'+\-\.]*)[A-Za-z0-9_+-]@([A-Za-z0-9][A-Za-z0-9\-]*\.)+[A-Za-z]{2,}$"
)
MAX_AGE = timedelta(days=7)
AGE_MARGIN = timedelta(minutes=5)  # the request must still be inside the window on arrival
MAX_REVENUE = Decimal(1_000_000)


def order_id(order_key: str) -> str:
    """The order key when it is 1–128 ASCII; otherwise a stable digest of it."""
    if 1 <= len(order_key) <= 128 and order_key.isascii():
        return order_key
    return "sha256-" + hashlib.sha256(order_key.encode()).hexdigest()


class Simmer(Destination):
    name = "simmer"
    settings: SimmerSettings
    max_age = MAX_AGE - AGE_MARGIN

    def build(self, conversion: Conversion, now: datetime) -> httpx.Request | Skip:
        email = conversion.customer.email
        if not email:
            return Skip("no buyer email: Simmer requires one")
        if not EMAIL.match(email):
            return Skip("buyer email is not an address Simmer accepts")
        if conversion.total is None or conversion.currency is None:
            return Skip("no revenue amount")
        if not Decimal(0) <= conversion.total <= MAX_REVENUE:
            return Skip(f"revenue {fmt(conversion.total)} is outside Simmer's 0–1,000,000 range")
        occurred = min(conversion.occurred_at, now)
        if now - occurred > self.max_age:
            return Skip("conversion is older than Simmer's 7-day window")
        body: dict[str, object] = {
            "project_id": self.settings.project_id,
            "order_id": order_id(conversion.order_key),
            "email": email,
            "total_revenue": orjson.Fragment(fmt(conversion.total).encode()),
            "currency": conversion.currency,
            "occurred_at": iso_utc(occurred),
        }
        anonymous_id = conversion.attribution.get("simmer_anonymous_id")
        if anonymous_id and len(anonymous_id) <= 256:
            body["anonymous_id"] = anonymous_id
        key = self.settings.secret_key.get_secret_value() if self.settings.secret_key else ""
        return httpx.Request(
            "POST",
            self.settings.url,
            content=orjson.dumps(body),
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            },
        )
