"""Chargebee API: the Events API for backfill and reconcile.

- Auth: HTTP Basic with the API key as the user name and an empty password
  (RELAY_CHARGEBEE__API_KEY); base https://{RELAY_CHARGEBEE__SITE}.chargebee.com, or
  RELAY_CHARGEBEE__API_BASE. A refused key is a 401 `api_authentication_failed`.
- `GET /api/v2/events`: `limit` 1–100, `offset` = the previous page's `next_offset`
  (absent on the last page); filters `occurred_at[after]` / `occurred_at[before]` (Unix
  seconds, exclusive) and `event_type[in]=[…]`; `sort_by[asc]=occurred_at` lists the
  oldest first, so reconcile can move its mark forward page by page.
- The answer is `{"list": [{"event": {…}}, …], "next_offset": "…"}`; each event is the
  very object Chargebee POSTs to the webhook (`id`, `occurred_at`, `event_type`,
  `content`), so the parser and the order keys are the same.
- Rate limits depend on the plan (requests a minute and concurrent requests); over them
  Chargebee answers 429 `api_request_limit_exceeded` for about a minute.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from relay.processors import Found, Processor, dumps
from relay.sources.chargebee import HANDLERS

PAGE_LIMIT = 100
RELAYED_TYPES = tuple(HANDLERS)


class ChargebeeAPI(Processor):
    processor = "Chargebee"
    key_variable = "RELAY_CHARGEBEE__API_KEY"
    source = "chargebee"
    requests_per_second = 2.0  # well under the smallest plan's limit
    ascending = True

    def __init__(self, api_key: str, base_url: str, **kw: Any) -> None:
        self._key = api_key
        super().__init__(base_url, api_key, **kw)

    def headers(self) -> dict[str, str]:
        token = base64.b64encode(f"{self._key}:".encode()).decode()
        return {"Authorization": f"Basic {token}", "Accept": "application/json"}

    def describe_error(self, body: Any) -> tuple[str | None, str | None]:
        return body.get("api_error_code"), body.get("message")

    def auth_hint(self, status: int) -> str:
        return (
            f"the API key was refused; check {self.key_variable} and RELAY_CHARGEBEE__SITE "
            "(a test site's key works only on <site>-test)"
        )

    async def events(self, since: float, until: float) -> AsyncIterator[dict[str, Any]]:
        """Every relayed event that occurred in [since, until], oldest first."""
        params: dict[str, Any] = {
            "limit": PAGE_LIMIT,
            "occurred_at[after]": int(since) - 1,
            "occurred_at[before]": int(until) + 1,
            "event_type[in]": orjson.dumps(list(RELAYED_TYPES)).decode(),
            "sort_by[asc]": "occurred_at",
        }
        seen: set[str] = set()
        while True:
            page = await self.get("/api/v2/events", params)
            entries = page.get("list") if isinstance(page, dict) else None
            if not isinstance(entries, list):
                raise self.malformed("/api/v2/events", "no `list` of events")
            for entry in entries:
                event = entry.get("event") if isinstance(entry, dict) else None
                if not (
                    isinstance(event, dict)
                    and isinstance(event.get("id"), str)
                    and isinstance(event.get("occurred_at"), int)
                ):
                    raise self.malformed("/api/v2/events", "an entry is not an event object")
                if since <= event["occurred_at"] <= until:
                    yield event
            offset = page.get("next_offset")
            if offset is None:
                return
            if not isinstance(offset, str) or not offset or offset in seen or not entries:
                raise self.malformed("/api/v2/events", "`next_offset` does not move on")
            seen.add(offset)
            params["offset"] = offset

    async def history(self, since: float, until: float) -> AsyncIterator[Found]:
        async for event in self.events(since, until):
            yield Found(dumps(event), float(event["occurred_at"]), event["id"])


def build(settings: Any, transport: httpx.AsyncBaseTransport | None = None) -> ChargebeeAPI:
    return ChargebeeAPI(settings.api_key.get_secret_value(), settings.api_url, transport=transport)
