"""Simmer `POST /api/conversion` stand-in: every rule of the seed document.

401 bad/missing bearer; 404 unknown project_id; 400 on any body rule broken
(order_id 1–128 ASCII, email, total_revenue number 0–1,000,000, currency an
active upper-case ISO 4217 code, occurred_at RFC 3339 with timezone, a real date
within the last 7 days, anonymous_id 1–256 when present, no unknown fields);
429 over 50/min with Retry-After. Conversions are keyed order:{project}:{order_id}, last write wins.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from tests.emulators.base import Emulator, Rejection, Seen, is_currency, real_datetime

EMAIL = re.compile(
    r"^(?!\.)(?!.*\.\.)([A-Za-z0-9_'+\-\.]*)[A-Za-z0-9_+-]@([A-Za-z0-9][A-Za-z0-9\-]*\.)+[A-Za-z]{2,}$"
)
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")
FIELDS = {"project_id", "order_id", "email", "total_revenue", "currency", "occurred_at", "anonymous_id"}


class SimmerEmulator(Emulator):
    default_rate_limit_per_minute = 50  # Simmer's documented per-project limit

    def __init__(self, secret_key: str = "simmer_sk_test", project_id: str = "proj_test",
                 port: int | None = None) -> None:
        super().__init__(port)
        self.secret_key = secret_key
        self.project_id = project_id
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.conversions: dict[str, dict[str, Any]] = {}  # conversion_id → last body
        self.writes: dict[str, int] = {}  # conversion_id → number of accepted writes

    def bad(self, message: str) -> Rejection:
        return Rejection(400, {"error": message})

    def validate(self, seen: Seen) -> None:
        if seen.path != "/api/conversion" or seen.method != "POST":
            raise Rejection(404, {"error": "not found"})
        if seen.headers.get("authorization") != f"Bearer {self.secret_key}":
            raise Rejection(401, {"error": "Invalid secret key"})
        if not seen.headers.get("content-type", "").startswith("application/json"):
            raise self.bad("Content-Type must be application/json")
        try:
            body = json.loads(seen.body, parse_float=Decimal)
        except ValueError:
            raise self.bad("body is not JSON") from None
        if not isinstance(body, dict):
            raise self.bad("body must be an object")
        unknown = set(body) - FIELDS
        if unknown:
            raise self.bad(f"unknown fields {sorted(unknown)}")
        for name in FIELDS - {"anonymous_id"}:
            if name not in body:
                raise self.bad(f"{name} is required")
        if body["project_id"] != self.project_id:
            raise Rejection(404, {"error": "Unknown project_id"})
        order_id = body["order_id"]
        if not isinstance(order_id, str) or not 1 <= len(order_id) <= 128 or not order_id.isascii():
            raise self.bad("order_id must be 1-128 ASCII characters")
        if not isinstance(body["email"], str) or not EMAIL.match(body["email"]):
            raise self.bad("email is invalid")
        revenue = body["total_revenue"]
        if isinstance(revenue, bool) or not isinstance(revenue, (int, Decimal)):
            raise self.bad("total_revenue must be a number")
        if not 0 <= revenue <= 1_000_000:
            raise self.bad("total_revenue must be between 0 and 1000000")
        if not is_currency(body["currency"]):
            raise self.bad("currency must be a 3-letter uppercase ISO 4217 code")
        occurred = body["occurred_at"]
        if not isinstance(occurred, str) or not RFC3339.match(occurred):
            raise self.bad("occurred_at must be an ISO-8601 datetime with timezone")
        moment = real_datetime(occurred)
        if moment is None:
            raise self.bad("occurred_at is not a valid date-time")
        now = datetime.now(UTC)
        if moment < now - timedelta(days=7) or moment > now + timedelta(minutes=5):
            raise self.bad("occurred_at must be within the last 7 days")
        if "anonymous_id" in body:
            anon = body["anonymous_id"]
            if not isinstance(anon, str) or not 1 <= len(anon) <= 256:
                raise self.bad("anonymous_id must be 1-256 characters")
        seen.parsed = body

    def handle(self, seen: Seen) -> tuple[int, Any]:
        body = seen.parsed
        order_id = body["order_id"]
        conversion_id = f"order:{self.project_id}:{order_id}"
        self.conversions[conversion_id] = body
        self.writes[conversion_id] = self.writes.get(conversion_id, 0) + 1
        return 200, {"status": "accepted", "conversion_id": conversion_id, "attribution_deferred": False}
