"""Converge webhook-source stand-in: raw JSON `POST` to a secret postback path.

404 on any other path (the postback URL is the credential); 401 when a webhook
token is configured and `X-Webhook-Token` does not match; 415 unless the body
is raw JSON (`Content-Type: application/json`, no form data); 400 when:
`event_name` or `event_id` is missing or not a non-empty string; `properties`
or `profile_properties` is not an object; `aliases` is not an array of 1–10
`urn:<kind>:<value>` strings; `timestamp` is neither ISO-8601 with a timezone
nor integer epoch seconds; money fields (`total_price`, `total_tax`,
`total_shipping`, item `price`) are not numbers; `currency` is not an ISO 4217
code; items are not objects with an integer quantity; a Placed Order
lacks a boolean `$is_new_customer`. Events are deduplicated on `event_id`
(`duplicates` counts repeats); 200 `{"status": "ok"}`.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from tests.emulators.base import Emulator, Rejection, Seen, is_currency, real_datetime

ALIAS = re.compile(r"^urn:[a-z_]+:\S.*$")
ISO_TZ = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")
MONEY = ("total_price", "total_tax", "total_shipping")


class ConvergeEmulator(Emulator):
    def __init__(self, path: str = "/api/webhooks/src_secret123", token: str | None = None,
                 port: int | None = None) -> None:
        super().__init__(port)
        self.postback_path = path
        self.token = token
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.events: dict[str, dict[str, Any]] = {}
        self.duplicates: list[str] = []

    @property
    def postback_url(self) -> str:
        return self.url + self.postback_path

    def bad(self, message: str) -> Rejection:
        return Rejection(400, {"error": message})

    def validate(self, seen: Seen) -> None:
        if seen.path != self.postback_path or seen.method != "POST":
            raise Rejection(404, {"error": "unknown postback endpoint"})
        if self.token is not None and seen.headers.get("x-webhook-token") != self.token:
            raise Rejection(401, {"error": "invalid webhook token"})
        if not seen.headers.get("content-type", "").startswith("application/json"):
            raise Rejection(415, {"error": "we expect raw JSON, no form-data or form-urlencoded"})
        try:
            body = json.loads(seen.body, parse_float=Decimal)
        except ValueError:
            raise self.bad("body is not JSON") from None
        if not isinstance(body, dict):
            raise self.bad("body must be an object")
        for key in ("event_name", "event_id"):
            if not isinstance(body.get(key), str) or not body[key].strip():
                raise self.bad(f"{key} is required")
        for key in ("properties", "profile_properties"):
            if not isinstance(body.get(key), dict):
                raise self.bad(f"{key} must be an object")
        aliases = body.get("aliases")
        if not isinstance(aliases, list) or not 1 <= len(aliases) <= 10:
            raise self.bad("aliases must contain 1 to 10 entries")
        if not all(isinstance(a, str) and ALIAS.match(a) for a in aliases):
            raise self.bad("aliases must look like urn:<kind>:<value>")
        if "timestamp" in body:
            self.check_timestamp(body["timestamp"])
        self.check_properties(body["event_name"], body["properties"])
        for key, value in body["profile_properties"].items():
            if not key.startswith("$") and not isinstance(value, (str, int, Decimal, bool)):
                raise self.bad(f"profile property {key} has an unsupported type")
        seen.parsed = body

    def handle(self, seen: Seen) -> tuple[int, Any]:
        body = seen.parsed
        if body["event_id"] in self.events:
            self.duplicates.append(body["event_id"])
        else:
            self.events[body["event_id"]] = body
        return 200, {"status": "ok"}

    def check_timestamp(self, value: Any) -> None:
        if isinstance(value, bool):
            raise self.bad("timestamp must be ISO-8601 with timezone or epoch seconds")
        if isinstance(value, int):
            if value > 10**11:
                raise self.bad("timestamp epoch must be seconds")
            return
        if not isinstance(value, str) or not ISO_TZ.match(value) or real_datetime(value) is None:
            raise self.bad("timestamp must be ISO-8601 with a timezone")

    def check_properties(self, name: str, props: dict[str, Any]) -> None:
        for key in MONEY:
            if key in props and (isinstance(props[key], bool) or not isinstance(props[key], (int, Decimal))):
                raise self.bad(f"properties.{key} must be a number")
        if "currency" in props and not is_currency(props["currency"]):
            raise self.bad("properties.currency must be an ISO 4217 code")
        items = props.get("items", [])
        if not isinstance(items, list):
            raise self.bad("properties.items must be an array")
        for item in items:
            if not isinstance(item, dict):
                raise self.bad("each item must be an object")
            price = item.get("price")
            if price is not None and (isinstance(price, bool) or not isinstance(price, (int, Decimal))):
                raise self.bad("item price must be a number")
            if "currency" in item and not is_currency(item["currency"]):
                raise self.bad("item currency must be an ISO 4217 code")
            quantity = item.get("quantity", 1)
            if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
                raise self.bad("item quantity must be a positive integer")
        if name == "Placed Order" and not isinstance(props.get("$is_new_customer"), bool):
            raise self.bad("Placed Order needs a boolean $is_new_customer")
