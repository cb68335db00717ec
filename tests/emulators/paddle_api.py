"""Paddle Billing API stand-in: `GET /customers/{id}` and `GET /events`, Bearer API key.

Answers like api.paddle.com: `{"data": …, "meta": {"request_id", "pagination"?}}`, and
errors `{"error": {"type", "code", "detail", "documentation_url"}, "meta": {…}}`:
403 `authentication_missing` (no Authorization), `authentication_malformed` (not Bearer),
`invalid_token` (a wrong key); 404 `entity_not_found`; 400 `invalid_field` for a bad
query parameter; 429 `too_many_requests` with `Retry-After` (seconds) over
`emu.rate_limit_per_minute` (Paddle: 240 a minute, then 60 s blocked).

`GET /events`: `after=<event id>` (exclusive), `order_by=id[ASC]` (default) or
`id[DESC]`, `per_page` default 50, more than 200 gives 200. `meta.pagination.next` is
the original query plus `after=<last id>` (always present), `has_more`,
`estimated_total`. Events older than 90 days are not listed. `emu.events` holds them;
`emu.add_event(type, data, occurred_at)` gives each a time-ordered `evt_…` id as Paddle's are.
"""

from __future__ import annotations

import itertools
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.responses import JSONResponse, Response

from tests.emulators.base import Rejection, Seen
from tests.emulators.processor import ProcessorEmulator, query

HISTORY_SECONDS = 90 * 86400
_counter = itertools.count()


def _error(code: str, detail: str, kind: str = "request_error") -> dict[str, Any]:
    return {"error": {"type": kind, "code": code, "detail": detail,
                      "documentation_url": f"https://developer.paddle.com/errors/shared/{code}"},
            "meta": {"request_id": str(uuid.uuid4())}}


RATE_LIMITED = _error("too_many_requests", "IP address exceeded the allowed rate limit. Retry "
                      "after the number of seconds in the Retry-After header.", "api_error")


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class PaddleAPIEmulator(ProcessorEmulator):
    def __init__(self, api_key: str, port: int | None = None) -> None:
        super().__init__(port)
        self.api_key = api_key
        self.customers: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.link_base: str | None = None  # the host written into `next` links (default: ours)

    def add_event(self, event_type: str, data: dict[str, Any], occurred_at: float | None = None,
                  event_id: str | None = None) -> dict[str, Any]:
        at = time.time() if occurred_at is None else occurred_at
        # Paddle ids sort by creation time: a time prefix, then randomness.
        eid = event_id or f"evt_{int(at * 1000):013x}{next(_counter):05d}{uuid.uuid4().hex[:8]}"
        event = {"event_id": eid, "event_type": event_type, "occurred_at": iso(at),
                 "notification_id": f"ntf_{uuid.uuid4().hex[:26]}", "data": data}
        self.events.append(event)
        return event

    def rate_limited(self, wait: int) -> Response:
        return JSONResponse(RATE_LIMITED, status_code=429, headers={"Retry-After": "60"})

    def handle(self, seen: Seen) -> tuple[int, Any]:
        header = seen.headers.get("authorization")
        if not header:
            raise Rejection(403, _error("authentication_missing", "Authentication header missing."))
        scheme, _, key = header.partition(" ")
        if scheme != "Bearer" or not key.strip():
            raise Rejection(403, _error("authentication_malformed",
                                        "Authentication header included, but incorrectly formatted."))
        if key.strip() != self.api_key:
            raise Rejection(403, _error("invalid_token", "Invalid or revoked API key."))
        parts = seen.path.strip("/").split("/")
        if seen.method == "GET" and parts == ["events"]:
            return 200, self._events(query())
        if seen.method != "GET" or len(parts) != 2 or parts[0] != "customers":
            raise Rejection(404, _error("not_found", "Route not found"))
        customer = self.customers.get(parts[1])
        if customer is None:
            raise Rejection(404, _error("entity_not_found", f"Entity {parts[1]} not found"))
        return 200, {"data": customer, "meta": {"request_id": str(uuid.uuid4())}}

    def _events(self, params: list[tuple[str, str]]) -> dict[str, Any]:
        args = dict(params)
        unknown = set(args) - {"after", "order_by", "per_page"}
        if unknown:
            raise Rejection(400, _error("invalid_field", f"unknown query parameter {sorted(unknown)[0]}"))
        order = args.get("order_by", "id[ASC]")
        if order not in ("id[ASC]", "id[DESC]"):
            raise Rejection(400, _error("invalid_field", "order_by: valid fields for ordering: id"))
        try:
            per_page = int(args.get("per_page", "50"))
        except ValueError:
            raise Rejection(400, _error("invalid_field", "per_page must be an integer")) from None
        if per_page < 1:
            raise Rejection(400, _error("invalid_field", "per_page must be at least 1"))
        per_page = min(per_page, 200, self.page_cap or 200)
        oldest = time.time() - HISTORY_SECONDS
        listed = sorted((e for e in self.events
                         if datetime.fromisoformat(e["occurred_at"]).timestamp() >= oldest),
                        key=lambda e: e["event_id"], reverse=order == "id[DESC]")
        ids = [e["event_id"] for e in listed]
        start = 0
        if "after" in args:
            if args["after"] not in ids:
                raise Rejection(400, _error("invalid_field", f"after: {args['after'][:40]} not found"))
            start = ids.index(args["after"]) + 1
        page = listed[start:start + per_page]
        last = page[-1]["event_id"] if page else args.get("after", "")
        next_query = {k: v for k, v in args.items() if k != "after"} | {"after": last}
        self.pages += 1
        return {"data": page,
                "meta": {"request_id": str(uuid.uuid4()),
                         "pagination": {"per_page": per_page,
                                        "next": f"{self.link_base or self.url}/events?"
                                                f"{urlencode(next_query)}",
                                        "has_more": start + per_page < len(listed),
                                        "estimated_total": len(listed)}}}
