"""Paddle Billing API: the Events API for backfill, customers for enrichment.

- Auth: `Authorization: Bearer <API key>` (RELAY_PADDLE__API_KEY), base
  RELAY_PADDLE__API_BASE (default https://api.paddle.com; sandbox:
  https://sandbox-api.paddle.com). A missing or refused key is a 403 at Paddle
  (`authentication_missing`, `invalid_token`).
- `GET /events`: `per_page` up to 200, `order_by=id[DESC]` (ids are the only sort field
  and grow with time), the next page from `meta.pagination.next` (an `after=<id>` cursor)
  while `meta.pagination.has_more`. The list has no time filter: `occurred_at` is
  compared here, and paging stops at the first page wholly older than --since. Events
  are kept 90 days.
- Each listed entity is the webhook's envelope (`event_id`, `event_type`, `occurred_at`,
  `data`) and `data` is the same entity, so the parser and the order keys are the same.
- Rate limit: 240 requests a minute per IP; a 429 carries `Retry-After` (seconds).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from relay.destinations import path_segment
from relay.processors import Found, Processor, dumps, iso_seconds
from relay.sources.paddle import HANDLERS

HISTORY_SECONDS = 90 * 86400
PER_PAGE = 200
RELAYED_TYPES = frozenset(HANDLERS)


class PaddleAPI(Processor):
    processor = "Paddle"
    key_variable = "RELAY_PADDLE__API_KEY"
    source = "paddle"
    requests_per_second = 3.5  # under 240 a minute
    history_seconds = HISTORY_SECONDS

    def __init__(self, api_key: str, base_url: str, **kw: Any) -> None:
        self._key = api_key
        super().__init__(base_url, api_key, **kw)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}", "Accept": "application/json"}

    def describe_error(self, body: Any) -> tuple[str | None, str | None]:
        error = body["error"]
        return error.get("code"), error.get("detail")

    def auth_hint(self, status: int) -> str:
        return (
            f"the API key was refused; check {self.key_variable} "
            "(and RELAY_PADDLE__API_BASE: sandbox keys work only on the sandbox API)"
        )

    async def events(self, since: float, until: float) -> AsyncIterator[dict[str, Any]]:
        """Every event that occurred in [since, until], newest first (all types)."""
        path = "/events"
        params: dict[str, Any] | None = {"order_by": "id[DESC]", "per_page": PER_PAGE}
        seen_cursor: set[str] = set()
        while True:
            page = await self.get(path, params)
            data = page.get("data") if isinstance(page, dict) else None
            pagination = page.get("meta", {}).get("pagination") if isinstance(page, dict) else None
            if not isinstance(data, list) or not isinstance(pagination, dict):
                raise self.malformed("/events", "no `data` list or `meta.pagination`")
            reached_since = False
            for event in data:
                at = iso_seconds(event.get("occurred_at")) if isinstance(event, dict) else None
                if at is None or not isinstance(event.get("event_id"), str):
                    raise self.malformed("/events", "an entry has no event_id or occurred_at")
                if at < since:
                    continue
                reached_since = True
                if at <= until:
                    yield event
            has_more, link = pagination.get("has_more"), pagination.get("next")
            if has_more is not True or (data and not reached_since):
                return
            if not data or not isinstance(link, str) or link in seen_cursor:
                raise self.malformed("/events", "`has_more` without a usable `next` link")
            seen_cursor.add(link)
            path, params = self.relative(link), None

    async def history(self, since: float, until: float) -> AsyncIterator[Found]:
        async for event in self.events(since, until):
            if event.get("event_type") in RELAYED_TYPES:
                at = iso_seconds(event["occurred_at"])
                assert at is not None
                yield Found(dumps(event), at, event["event_id"])

    async def customer(self, customer_id: str) -> dict[str, Any]:
        """`GET /customers/{id}`: the customer entity (email, name)."""
        path = f"/customers/{path_segment(customer_id)}"
        body = await self.get(path, retries=0)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise self.malformed(path, "answered 200 without a customer object")
        return data


def build(settings: Any, transport: httpx.AsyncBaseTransport | None = None) -> PaddleAPI:
    return PaddleAPI(settings.api_key.get_secret_value(), settings.api_base, transport=transport)
