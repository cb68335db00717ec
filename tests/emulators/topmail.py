"""topmail `POST /api/v1/conversions` stand-in (seed + developer docs rules).

Errors use the envelope `{"error": {"code", "message", "path"}}`:
401 `unauthorized` (missing/invalid Bearer `tm_live_`/`tm_test_` key or legacy
X-API-Key); 403 `forbidden` (key without conversions:write); 400
`validation_error` on any rule broken — JSON object body, no unknown fields,
`email` (valid address) or `contact_id` (UUID), `type` ∈
purchase|signup|upgrade|custom, `revenue` a number ≥ 0, `currency` an ISO 4217 code,
`order_id` string ≤ 100 chars, `campaign_id`/`flow_id` UUIDs,
`attribution_model` ∈ last_touch|first_touch|linear, `attribution_window`
integer 1–90, `metadata` an object; 404 `contact_not_found` when `contacts` is
set and has no such email; 409 `duplicate` for an order_id already recorded;
an `Idempotency-Key` seen before replays the first answer (409 when the body
differs). 201 `{"data": {...}}` on create.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from starlette.responses import JSONResponse, Response

from tests.emulators.base import Emulator, Rejection, Seen, is_currency

EMAIL = re.compile(r"^[^\s@]+@[^\s@]+\.[A-Za-z]{2,}$")
FIELDS = {"email", "contact_id", "type", "revenue", "currency", "order_id", "campaign_id", "flow_id",
          "attribution_model", "attribution_window", "metadata"}


def is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


class TopmailEmulator(Emulator):
    def __init__(self, api_key: str = "tm_test_key", port: int | None = None,
                 contacts: set[str] | None = None) -> None:
        super().__init__(port)
        self.api_key = api_key
        self._contacts = contacts
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.contacts = self._contacts  # None: every email is a known contact
        self.conversions: dict[str, dict[str, Any]] = {}  # order_id → body
        self.idempotency: dict[str, tuple[bytes, dict[str, Any]]] = {}

    def error(self, status: int, code: str, message: str, path: str | None = None) -> Rejection:
        return Rejection(status, {"error": {"code": code, "message": message, "path": path}})

    def bad(self, path: str, message: str) -> Rejection:
        return self.error(400, "validation_error", message, path)

    def validate(self, seen: Seen) -> None:
        if seen.path != "/api/v1/conversions" or seen.method != "POST":
            raise self.error(404, "not_found", "not found")
        auth = seen.headers.get("authorization") or ""
        legacy = seen.headers.get("x-api-key")
        if auth != f"Bearer {self.api_key}" and legacy != self.api_key:
            raise self.error(401, "unauthorized", "Invalid or missing API key")
        if not self.api_key.startswith(("tm_live_", "tm_test_")):
            raise self.error(403, "forbidden", "API key lacks conversions: write")
        if not seen.headers.get("content-type", "").startswith("application/json"):
            raise self.bad("", "Content-Type must be application/json")
        try:
            body = json.loads(seen.body, parse_float=Decimal)
        except ValueError:
            raise self.bad("", "body is not JSON") from None
        if not isinstance(body, dict):
            raise self.bad("", "body must be an object")
        self.check_body(body)
        seen.parsed = body

    def handle(self, seen: Seen) -> tuple[int, Any]:
        body = seen.parsed
        key = seen.headers.get("idempotency-key")
        if key and key in self.idempotency:
            body_seen, answer = self.idempotency[key]
            if body_seen != seen.body:
                raise self.error(409, "idempotency_conflict", "Idempotency-Key reused with another body")
            return 201, answer
        if self.contacts is not None and body.get("email") and body["email"].lower() not in self.contacts:
            raise self.error(404, "contact_not_found", "No contact found with the given email or contact_id")
        order_id = body.get("order_id")
        if order_id is not None and order_id in self.conversions:
            raise self.error(409, "duplicate", "A resource with the same identifier already exists", "order_id")
        if order_id is not None:
            self.conversions[order_id] = body
        answer = {"data": {
            "id": str(uuid.uuid4()), "type": body.get("type", "custom"),
            "revenue": float(body["revenue"]) if "revenue" in body else None,
            "currency": body.get("currency", "USD"), "order_id": order_id,
            "contact_id": body.get("contact_id") or str(uuid.uuid4()),
            "campaign_id": body.get("campaign_id"), "flow_id": body.get("flow_id"),
            "attribution_model": body.get("attribution_model", "last_touch"),
            "metadata": body.get("metadata", {}),
            "converted_at": "2025-01-15T14:30:00.000Z", "created_at": "2025-01-15T14:30:00.000Z"}}
        if key:
            self.idempotency[key] = (seen.body, answer)
        return 201, answer

    def check_body(self, body: dict[str, Any]) -> None:
        unknown = set(body) - FIELDS
        if unknown:
            raise self.bad(sorted(unknown)[0], "unknown field")
        if "email" not in body and "contact_id" not in body:
            raise self.bad("email", "email is required if contact_id is not provided")
        if "email" in body and (not isinstance(body["email"], str) or not EMAIL.match(body["email"])):
            raise self.bad("email", "invalid email")
        if "contact_id" in body and not is_uuid(body["contact_id"]):
            raise self.bad("contact_id", "must be a UUID")
        if "type" in body and body["type"] not in ("purchase", "signup", "upgrade", "custom"):
            raise self.bad("type", "must be purchase, signup, upgrade or custom")
        if "revenue" in body:
            revenue = body["revenue"]
            if isinstance(revenue, bool) or not isinstance(revenue, (int, Decimal)) or revenue < 0:
                raise self.bad("revenue", "must be a number >= 0")
        if "currency" in body and not is_currency(body["currency"]):
            raise self.bad("currency", "must be a 3-letter ISO code")
        if "order_id" in body and (not isinstance(body["order_id"], str) or not 1 <= len(body["order_id"]) <= 100):
            raise self.bad("order_id", "max 100 characters")
        for key in ("campaign_id", "flow_id"):
            if key in body and not is_uuid(body[key]):
                raise self.bad(key, "must be a UUID")
        if "attribution_model" in body and body["attribution_model"] not in ("last_touch", "first_touch", "linear"):
            raise self.bad("attribution_model", "must be last_touch, first_touch or linear")
        if "attribution_window" in body:
            window = body["attribution_window"]
            if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= 90:
                raise self.bad("attribution_window", "integer 1-90")
        if "metadata" in body and not isinstance(body["metadata"], dict):
            raise self.bad("metadata", "must be an object")

    def rate_limited(self, wait: int) -> Response:
        """topmail's 429: `Retry-After` seconds, `X-RateLimit-Remaining` and
        `X-RateLimit-Reset` as an ISO-8601 timestamp (developer docs, errors page)."""
        reset = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=wait)
        return JSONResponse({"error": {"code": "rate_limited", "message": "Too many requests", "path": None}},
                            status_code=429, headers={"Retry-After": str(wait), "X-RateLimit-Remaining": "0",
                                                      "X-RateLimit-Reset": reset.isoformat().replace("+00:00", "Z")})
