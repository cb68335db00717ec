"""Stripe API: the Events API for backfill, objects for thin events, look-ups for enrichment.

- Auth: `Authorization: Bearer <secret key>` (RELAY_STRIPE__API_KEY), base
  RELAY_STRIPE__API_BASE (default https://api.stripe.com).
- `GET /v1/events`: newest first, `limit` 1–100, `starting_after=<last id>` for the next
  page while `has_more`; `created[gte]`/`created[lte]` bound the period and `types[]`
  (up to 20) asks only for the types relay relays. Events are kept 30 days: an older
  --since is clamped, with a note.
- Each listed event's `data` is rendered in the API version current when the event was
  created (the account's default then), not the webhook endpoint's pinned version;
  relay/sources/stripe.py reads the old and new shapes alike, so the order keys agree.
- Objects fetched for thin events (a `related_object.url`) are rendered in the version
  sent as `Stripe-Version` — pinned here to the stripe package's own version, whose
  shape the parser reads — so a fetch never depends on the account's default.
- 429s carry no Retry-After at Stripe (back off), 409 is a lock timeout (retry).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from relay.destinations import path_segment
from relay.processors import Found, Processor, dumps, stamp
from relay.sources.stripe import HANDLERS

HISTORY_SECONDS = 30 * 86400
PAGE_LIMIT = 100
MAX_TYPES = 20  # types[] accepts at most 20 entries
RELAYED_TYPES = tuple(HANDLERS)


def api_version() -> str:
    """The API version the stripe package is built for (Stripe-Version of object fetches)."""
    import stripe

    return str(stripe.api_version)


class StripeAPI(Processor):
    processor = "Stripe"
    key_variable = "RELAY_STRIPE__API_KEY"
    source = "stripe"
    requests_per_second = 20.0  # under 25/s, the sandbox limit (live: 100/s)
    history_seconds = HISTORY_SECONDS
    secret_patterns = (re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9*_]+"),)

    def __init__(self, api_key: str, base_url: str, **kw: Any) -> None:
        self._key = api_key
        super().__init__(base_url, api_key, **kw)

    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._key}",
            "Stripe-Version": api_version(),
            "Accept": "application/json",
        }

    def describe_error(self, body: Any) -> tuple[str | None, str | None]:
        error = body["error"]
        return error.get("code") or error.get("type"), error.get("message")

    # -------------------------------------------------------------- events

    async def events(
        self, since: float, until: float, types: Sequence[str] = RELAYED_TYPES
    ) -> AsyncIterator[dict[str, Any]]:
        """Every event created in [since, until] of these types, newest first."""
        params: list[tuple[str, Any]] = [
            ("limit", PAGE_LIMIT),
            ("created[gte]", int(since)),
            ("created[lte]", int(until) + (0 if until == int(until) else 1)),
        ]
        params += [("types[]", t) for t in list(types)[:MAX_TYPES]]
        after: str | None = None
        cursors: set[str] = set()  # every page's cursor so far: none may come round again
        while True:
            page = await self.get(
                "/v1/events", params + ([("starting_after", after)] if after else [])
            )
            data = page.get("data") if isinstance(page, dict) else None
            has_more = page.get("has_more") if isinstance(page, dict) else None
            if not isinstance(data, list) or not isinstance(has_more, bool):
                raise self.malformed("/v1/events", "no `data` list or `has_more` flag")
            for event in data:
                if not (
                    isinstance(event, dict)
                    and isinstance(event.get("id"), str)
                    and isinstance(event.get("type"), str)
                    and isinstance(event.get("created"), int)
                ):
                    raise self.malformed("/v1/events", "an entry is not an event object")
                yield event
            if not has_more:
                return
            if not data or data[-1]["id"] == after:
                raise self.malformed("/v1/events", "`has_more` without a next page")
            after = data[-1]["id"]
            if after in cursors:
                raise self.malformed("/v1/events", "`has_more` leads back to an earlier page")
            cursors.add(after)

    async def history(self, since: float, until: float) -> AsyncIterator[Found]:
        async for event in self.events(since, until):
            yield Found(dumps(event), float(event["created"]), event["id"])

    # -------------------------------------------------------------- objects

    async def related_object(self, url: str) -> dict[str, Any]:
        """The object a thin event's `related_object.url` points to (`/v1/…` only)."""
        path = self.relative(url)
        bare = path.split("?", 1)[0]
        if not re.fullmatch(r"/v1/[A-Za-z0-9_/.\-]+", bare) or {".", ".."} & set(bare.split("/")):
            raise self.malformed("/v1/…", f"related_object.url is not a /v1 path: {path[:80]!r}")
        obj = await self.get(path)
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            raise self.malformed(path, "not an object with an id")
        return obj

    async def v2_event(self, event_id: str) -> dict[str, Any]:
        """`GET /v2/core/events/{id}`: a thin event with its fetched attributes (`changes`:
        the related object's fields before and after, i.e. v1's previous_attributes)."""
        path = f"/v2/core/events/{event_id}"
        if not re.fullmatch(r"[A-Za-z0-9_]+", event_id):
            raise self.malformed("/v2/core/events/…", "the event id is not an id")
        event = await self.get(path)
        if not isinstance(event, dict) or event.get("id") != event_id:
            raise self.malformed("/v2/core/events/…", "not the event asked for")
        return event

    async def line_items(self, session_id: str) -> list[dict[str, Any]]:
        """A Checkout Session's line items (first page, up to 100)."""
        path = f"/v1/checkout/sessions/{path_segment(session_id)}/line_items"
        page = await self.get(path, {"limit": PAGE_LIMIT})
        data = page.get("data") if isinstance(page, dict) else None
        if not isinstance(data, list):
            raise self.malformed(path, "no `data` list")
        return [row for row in data if isinstance(row, dict)]

    async def promotion_code(self, promo_id: str) -> dict[str, Any]:
        path = f"/v1/promotion_codes/{path_segment(promo_id)}"
        promo = await self.get(path)
        if not isinstance(promo, dict):
            raise self.malformed(path, "not an object")
        return promo


def clamp_note(since: float, now: float) -> str | None:
    """What to tell the user when --since is older than the 30 days Stripe keeps events."""
    oldest = now - HISTORY_SECONDS
    if since >= oldest:
        return None
    return (
        f"Stripe's Events API keeps 30 days of events: reading from {stamp(oldest)}, "
        f"not {stamp(since)}"
    )


def build(settings: Any, transport: httpx.AsyncBaseTransport | None = None) -> StripeAPI:
    return StripeAPI(settings.api_key.get_secret_value(), settings.api_base, transport=transport)
