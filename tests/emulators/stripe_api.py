"""Stripe API stand-in: the Events API, objects, Checkout line items and promotion codes.

Auth as Stripe documents it: `Authorization: Bearer <secret key>` (or Basic with the key
as the user name). No key → 401 "You did not provide an API key…"; a wrong key → 401
"Invalid API Key provided: sk_test_****…" (Stripe masks all but the last 4), both
`{"error": {"message", "type": "invalid_request_error"}}`.

- `GET /v1/events`: newest first; `limit` 1–100 (default 10, else 400 with `param`);
  `created` exact or `created[gt|gte|lt|lte]`; `type` (a `*` wildcard allowed) or
  `types[]` (at most 20); `starting_after` / `ending_before` an event id of this list
  (unknown → 400 resource_missing); any other parameter → 400 "Received unknown
  parameter". Events older than 30 days are not listed. `{"object": "list", "url":
  "/v1/events", "has_more", "data"}`.
- `GET /v1/<resource>/<id>` for objects put in `emu.objects["/v1/checkout/sessions/cs_…"]`
  (what a thin event's `related_object.url` points to); unknown → 404 resource_missing.
- `GET /v2/core/events/<id>`: a thin event with its fetched attributes (`changes`), from
  `emu.v2_events`.
- `GET /v1/checkout/sessions/{id}/line_items`, `GET /v1/promotion_codes/{id}`.
- 429 as Stripe answers it: `{"error": {"code": "rate_limit", …}}` and no Retry-After
  (`emu.rate_limit_per_minute = n`, or `emu.fail_next(1, 429, body=RATE_LIMITED)`).
"""

from __future__ import annotations

import base64
import fnmatch
import time
from typing import Any

from starlette.responses import JSONResponse, Response

from tests.emulators.base import Rejection, Seen
from tests.emulators.processor import ProcessorEmulator, query

HISTORY_SECONDS = 30 * 86400
RATE_LIMITED = {"error": {"code": "rate_limit", "type": "invalid_request_error",
                          "message": "Request rate limit exceeded. Learn more about rate limits "
                                     "here https://stripe.com/docs/rate-limits."}}
EVENT_PARAMS = {"limit", "created", "created[gt]", "created[gte]", "created[lt]", "created[lte]",
                "type", "types[]", "starting_after", "ending_before", "delivery_success"}


def _error(status: int, message: str, kind: str = "invalid_request_error", **extra: Any) -> Rejection:
    return Rejection(status, {"error": {"message": message, "type": kind, **extra}})


class StripeAPIEmulator(ProcessorEmulator):
    def __init__(self, api_key: str, port: int | None = None) -> None:
        super().__init__(port)
        self.api_key = api_key
        self.line_items: dict[str, list[dict[str, Any]]] = {}  # session id → items
        self.promotion_codes: dict[str, str] = {}  # promo_… → code text
        self.events: list[dict[str, Any]] = []  # every event of the account
        self.objects: dict[str, dict[str, Any]] = {}  # "/v1/…/<id>" → object
        self.v2_events: dict[str, dict[str, Any]] = {}  # thin event id → the v2 Event object

    def add_event(self, event: dict[str, Any]) -> dict[str, Any]:
        self.events.append(event)
        return event

    def rate_limited(self, wait: int) -> Response:
        return JSONResponse(RATE_LIMITED, status_code=429)

    # -------------------------------------------------------------- auth

    def _key_of(self, seen: Seen) -> str | None:
        header = seen.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return value.strip()
        if scheme.lower() == "basic":
            try:
                return base64.b64decode(value.strip()).decode().split(":", 1)[0]
            except ValueError:
                return ""
        return None

    def _authenticate(self, seen: Seen) -> None:
        key = self._key_of(seen)
        if not key:
            raise _error(401, "You did not provide an API key. You need to provide your API key "
                              "in the Authorization header, using Bearer auth.")
        if key != self.api_key:
            raise _error(401, f"Invalid API Key provided: {key[:8]}****{key[-4:]}")

    # -------------------------------------------------------------- routes

    def handle(self, seen: Seen) -> tuple[int, Any]:
        self._authenticate(seen)
        if seen.method != "GET":
            raise _error(404, "Unrecognized request URL")
        parts = seen.path.strip("/").split("/")
        if seen.path == "/v1/events":
            return 200, self._events(query())
        if parts[:3] == ["v1", "checkout", "sessions"] and len(parts) == 5 and parts[4] == "line_items":
            items = self.line_items.get(parts[3])
            if items is None:
                raise _error(404, f"No such checkout.session: '{parts[3]}'", code="resource_missing")
            return 200, {"object": "list", "data": items, "has_more": False,
                         "url": f"/v1/checkout/sessions/{parts[3]}/line_items"}
        if parts[:2] == ["v1", "promotion_codes"] and len(parts) == 3 and parts[2] in self.promotion_codes:
            return 200, {"id": parts[2], "object": "promotion_code", "active": True,
                         "code": self.promotion_codes[parts[2]]}
        obj = self.objects.get(seen.path)
        if obj is not None:
            return 200, obj
        if parts[:3] == ["v2", "core", "events"] and len(parts) == 4:
            event = self.v2_events.get(parts[3])
            if event is None:
                raise _error(404, f"No such event: '{parts[3]}'", code="resource_missing")
            return 200, event
        if len(parts) >= 3 and parts[0] == "v1":
            name = ".".join([*parts[1:-2], parts[-2].removesuffix("s")])  # checkout.session
            raise _error(404, f"No such {name}: '{parts[-1]}'", code="resource_missing")
        raise _error(404, "Unrecognized request URL")

    def _events(self, params: list[tuple[str, str]]) -> dict[str, Any]:
        for key, _ in params:
            if key not in EVENT_PARAMS:
                raise _error(400, f"Received unknown parameter: {key}", param=key)
        single = {k: v for k, v in params if k != "types[]"}
        types = [v for k, v in params if k == "types[]"]
        if len(types) > 20:
            raise _error(400, "You may pass at most 20 types.", param="types")
        if types and "type" in single:
            raise _error(400, "You may only specify one of these parameters: type, types.")
        try:
            limit = int(single.get("limit", "10"))
        except ValueError:
            raise _error(400, f"Invalid integer: {single['limit'][:20]}", param="limit") from None
        if not 1 <= limit <= 100:
            raise _error(400, "This value must be less than or equal to 100.", param="limit")
        bounds = {}
        for key in ("created", "created[gt]", "created[gte]", "created[lt]", "created[lte]"):
            if key in single:
                try:
                    bounds[key] = int(single[key])
                except ValueError:
                    raise _error(400, f"Invalid integer: {single[key][:20]}", param=key) from None
        oldest = time.time() - HISTORY_SECONDS

        def keep(event: dict[str, Any]) -> bool:
            created = event["created"]
            if created < oldest:
                return False
            checks = {"created": created == bounds.get("created", created),
                      "created[gt]": created > bounds.get("created[gt]", created - 1),
                      "created[gte]": created >= bounds.get("created[gte]", created),
                      "created[lt]": created < bounds.get("created[lt]", created + 1),
                      "created[lte]": created <= bounds.get("created[lte]", created)}
            if not all(checks.values()):
                return False
            if types and event["type"] not in types:
                return False
            return "type" not in single or fnmatch.fnmatchcase(event["type"], single["type"])

        listed = sorted((e for e in self.events if keep(e)),
                        key=lambda e: (e["created"], e["id"]), reverse=True)
        ids = [e["id"] for e in listed]
        start, end = 0, len(listed)
        if "starting_after" in single:
            if single["starting_after"] not in ids:
                raise _error(400, f"No such event: '{single['starting_after'][:40]}'",
                             code="resource_missing", param="starting_after")
            start = ids.index(single["starting_after"]) + 1
        elif "ending_before" in single:
            if single["ending_before"] not in ids:
                raise _error(400, f"No such event: '{single['ending_before'][:40]}'",
                             code="resource_missing", param="ending_before")
            end = ids.index(single["ending_before"])
            start = max(0, end - limit)
        limit = min(limit, self.page_cap or limit)
        page = listed[start:min(end, start + limit)]
        self.pages += 1
        return {"object": "list", "url": "/v1/events", "has_more": start + limit < end,
                "data": page}


def line_item(price_id: str, product_id: str, name: str, unit: int, quantity: int,
              currency: str = "usd") -> dict[str, Any]:
    return {
        "id": f"li_{price_id[-8:]}", "object": "item", "amount_discount": 0, "amount_tax": 0,
        "amount_subtotal": unit * quantity, "amount_total": unit * quantity,
        "currency": currency, "description": name, "quantity": quantity,
        "price": {"id": price_id, "object": "price", "product": product_id,
                  "unit_amount": unit, "currency": currency},
    }
