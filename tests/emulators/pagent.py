"""pagent ingest stand-in: `/v1/conversions`, `/v2/conversions`, `/v2/conversions/bulk` (seed rules).

401 `{"error"}` on a missing or wrong Bearer key; 400 `{"error"}` when: the body
is not a JSON object; v2 `session_data` is not an object with non-empty string
`session_id`, `user_id` and `conversion_id` (`visit_id` optional string); v1 ids
missing at the top level; `events` (v1, v2 bulk) not an array of 1–100;
`revenue` not an integer (a decimal is a 400); `label` not a string; `time` not
a number; `properties` not an object or array; a field sent as null (absent
values are omitted) or unknown. 200 `{"accepted": N}`. pagent has no
idempotency key: every accepted event counts (`events`), so a resend shows as
a double count.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from tests.emulators.base import Emulator, Rejection, Seen

IDS = ("session_id", "user_id", "conversion_id")
OPTIONAL = {"label", "revenue", "properties", "time"}


class PagentEmulator(Emulator):
    def __init__(self, api_key: str = "pagent-key", port: int | None = None) -> None:
        super().__init__(port)
        self.api_key = api_key
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.events: list[dict[str, Any]] = []

    def bad(self, message: str) -> Rejection:
        return Rejection(400, {"error": message})

    def validate(self, seen: Seen) -> None:
        routes = {"/v1/conversions": "v1", "/v2/conversions": "v2", "/v2/conversions/bulk": "bulk"}
        version = routes.get(seen.path)
        if version is None or seen.method != "POST":
            raise Rejection(404, {"error": "not found"})
        if seen.headers.get("authorization") != f"Bearer {self.api_key}":
            raise Rejection(401, {"error": "missing, invalid or expired API key"})
        if not seen.headers.get("content-type", "").startswith("application/json"):
            raise self.bad("Content-Type must be application/json")
        try:
            body = json.loads(seen.body, parse_float=Decimal)
        except ValueError:
            raise self.bad("invalid JSON") from None
        if not isinstance(body, dict):
            raise self.bad("body must be an object")
        if version == "v2":
            self.check_v2(body)
        else:
            if set(body) != {"events"}:
                raise self.bad("body must be {\"events\": [...]}")
            items = body["events"]
            if not isinstance(items, list) or not 1 <= len(items) <= 100:
                raise self.bad("events must contain 1 to 100 items")
            check = self.check_v1 if version == "v1" else self.check_v2
            for event in items:
                check(event)
        seen.parsed = body

    def handle(self, seen: Seen) -> tuple[int, Any]:
        body = seen.parsed
        events = [body] if seen.path == "/v2/conversions" else body["events"]
        self.events.extend(events)
        return 200, {"accepted": len(events)}

    def check_v1(self, event: Any) -> dict[str, Any]:
        if not isinstance(event, dict):
            raise self.bad("each event must be an object")
        for key in IDS:
            if not isinstance(event.get(key), str) or not event[key]:
                raise self.bad(f"{key} is required")
        self.check_optional(event, set(IDS))
        return event

    def check_v2(self, event: Any) -> dict[str, Any]:
        if not isinstance(event, dict):
            raise self.bad("each event must be an object")
        session = event.get("session_data")
        if not isinstance(session, dict):
            raise self.bad("session_data must be an object containing session_id, user_id, and conversion_id")
        for key in IDS:
            if not isinstance(session.get(key), str) or not session[key]:
                raise self.bad("session_data must be an object containing session_id, user_id, and conversion_id")
        unknown = set(session) - {*IDS, "visit_id"}
        if unknown:
            raise self.bad(f"unknown session_data fields {sorted(unknown)}")
        if "visit_id" in session and not isinstance(session["visit_id"], str):
            raise self.bad("visit_id must be a string")
        self.check_optional(event, {"session_data"})
        return event

    def check_optional(self, event: dict[str, Any], base: set[str]) -> None:
        unknown = set(event) - base - OPTIONAL
        if unknown:
            raise self.bad(f"unknown fields {sorted(unknown)}")
        for key in OPTIONAL & set(event):
            if event[key] is None:
                raise self.bad(f"{key} must not be null")
        if "label" in event and not isinstance(event["label"], str):
            raise self.bad("label must be a string")
        if "revenue" in event and (isinstance(event["revenue"], bool) or not isinstance(event["revenue"], int)):
            raise self.bad("revenue must be an integer, not a decimal")
        if "time" in event and (isinstance(event["time"], bool) or not isinstance(event["time"], (int, Decimal))):
            raise self.bad("time must be a number (Unix ms)")
        if "time" in event and event["time"] < 10**12:
            raise self.bad("time must be Unix milliseconds")
        if "properties" in event and not isinstance(event["properties"], (dict, list)):
            raise self.bad("properties must be an object or array")
