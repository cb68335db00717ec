"""Lemon Squeezy API: no events API, so orders, subscriptions and subscription invoices are
listed and each object is turned into the body its webhook would have carried.

- Auth: `Authorization: Bearer <API key>` (RELAY_LEMONSQUEEZY__API_KEY), JSON:API headers
  (`Accept: application/vnd.api+json`), base RELAY_LEMONSQUEEZY__API_BASE (default
  https://api.lemonsqueezy.com). A missing or refused key is a 401. API keys are live-
  or test-mode specific.
- Lists: `GET /v1/orders`, `/v1/subscriptions`, `/v1/subscription-invoices`, newest
  `created_at` first, `page[number]` / `page[size]` (100 here), the next page from
  `links.next` until it is absent; `filter[store_id]` (RELAY_LEMONSQUEEZY__STORE_ID)
  keeps one store; `filter[status]=cancelled` lists subscriptions in their grace period.
  There is no date filter: paging stops at the first page wholly created before --since.
- Rate limit: 300 calls a minute; over it, 429.

What each object becomes (the webhook's `data` is the same JSON:API resource, so
relay/sources/lemonsqueezy.py gives the same event ids and order keys):

- an order created in the period → `order_created` at created_at, with the status it had
  when placed (a since-refunded order was `paid`, nothing refunded);
- an order refunded in the period → `order_refunded` at refunded_at (the cumulative
  refunded_amount, as the webhook carries it);
- a subscription created in the period → `subscription_created` at created_at;
- a subscription in its grace period (status `cancelled`) → `subscription_cancelled`
  at updated_at;
- a subscription invoice paid in the period → `subscription_payment_success`, and one
  refunded in the period → `subscription_payment_refunded`.

API objects carry no `custom_data` (the checkout's custom data is only in the webhook's
`meta`): a conversion recorded from the API has no attribution ids. Reconcile therefore
waits (`reconcile_delay_seconds`) so that webhooks still being retried arrive first.
Refunds are found on objects created within the period (the API cannot list by refund
date); a subscription that is already expired is not listed as cancelled.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import httpx

from relay.processors import Found, Processor, dumps, iso_seconds

PAGE_SIZE = 100
PLACED_STATUSES = frozenset({"paid", "refunded", "partial_refund"})  # paid when placed
MARK = "relay_backfilled"  # in meta: this body was built from the API, not delivered

NOTES = (
    "Lemon Squeezy API objects carry no custom_data: conversions recorded from them have no "
    "attribution ids (simmer_anonymous_id, irclickid…)",
)


class LemonSqueezyAPI(Processor):
    processor = "Lemon Squeezy"
    key_variable = "RELAY_LEMONSQUEEZY__API_KEY"
    source = "lemonsqueezy"
    requests_per_second = 4.0  # under 300 a minute
    notes = NOTES

    def __init__(self, api_key: str, base_url: str, store_id: int | None = None, **kw: Any) -> None:
        self._key = api_key
        self.store_id = store_id
        super().__init__(base_url, api_key, **kw)

    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._key}",
            "Accept": "application/vnd.api+json",
            "Content-Type": "application/vnd.api+json",
        }

    def describe_error(self, body: Any) -> tuple[str | None, str | None]:
        error = body["errors"][0]
        return error.get("title"), error.get("detail")

    async def listing(
        self, resource: str, since: float | None, **filters: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Every `resource` object, newest first, down to the first page wholly created
        before `since` (None: all of them)."""
        path = f"/v1/{resource}"
        first: dict[str, Any] = {"page[size]": PAGE_SIZE, "page[number]": 1}
        if self.store_id is not None:
            first["filter[store_id]"] = self.store_id
        first.update({f"filter[{k}]": v for k, v in filters.items()})
        params: dict[str, Any] | None = first
        seen: set[str] = set()
        while True:
            page = await self.get(path, params)
            data = page.get("data") if isinstance(page, dict) else None
            links = page.get("links") if isinstance(page, dict) else None
            if not isinstance(data, list) or not isinstance(links, dict):
                raise self.malformed(f"/v1/{resource}", "no `data` list or `links` object")
            newer = False
            for obj in data:
                attrs = obj.get("attributes") if isinstance(obj, dict) else None
                created = iso_seconds(attrs.get("created_at")) if isinstance(attrs, dict) else None
                if created is None or not isinstance(obj.get("id"), str | int):
                    raise self.malformed(f"/v1/{resource}", "an entry has no id or created_at")
                newer = newer or since is None or created >= since
                yield obj
            link = links.get("next")
            if not link or (since is not None and data and not newer):
                return
            if not isinstance(link, str) or link in seen or not data:
                raise self.malformed(f"/v1/{resource}", "`links.next` does not move on")
            seen.add(link)
            path, params = self.relative(link), None

    async def history(self, since: float, until: float) -> AsyncIterator[Found]:
        def inside(at: float | None) -> bool:
            return at is not None and since <= at <= until

        async for order in self.listing("orders", since):
            attrs = order["attributes"]
            created = iso_seconds(attrs.get("created_at"))
            if inside(created) and attrs.get("status") in PLACED_STATUSES:
                yield _found("order_created", _as_placed(order), created, "orders")
            refunded = iso_seconds(attrs.get("refunded_at"))
            if inside(refunded) and attrs.get("refunded_amount"):
                yield _found("order_refunded", order, refunded, "orders")
        async for sub in self.listing("subscriptions", since):
            created = iso_seconds(sub["attributes"].get("created_at"))
            if inside(created):
                yield _found("subscription_created", sub, created, "subscriptions")
        async for sub in self.listing("subscriptions", None, status="cancelled"):
            updated = iso_seconds(sub["attributes"].get("updated_at"))
            if inside(updated):
                yield _found("subscription_cancelled", sub, updated, "subscriptions")
        async for invoice in self.listing("subscription-invoices", since):
            attrs = invoice["attributes"]
            created = iso_seconds(attrs.get("created_at"))
            if inside(created) and attrs.get("status") in PLACED_STATUSES:
                yield _found(
                    "subscription_payment_success",
                    _as_placed(invoice),
                    created,
                    "subscription-invoices",
                )
            refunded = iso_seconds(attrs.get("refunded_at"))
            if inside(refunded) and attrs.get("refunded_amount"):
                yield _found(
                    "subscription_payment_refunded", invoice, refunded, "subscription-invoices"
                )


def _as_placed(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as its creation webhook carried it: a since-refunded order or invoice
    was `paid` then, with nothing refunded."""
    attrs = obj["attributes"]
    if attrs.get("status") == "paid" and not attrs.get("refunded"):
        return obj
    placed = copy.deepcopy(obj)
    placed["attributes"].update(status="paid", refunded=False, refunded_at=None, refunded_amount=0)
    return placed


def webhook_body(event_name: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The webhook body for `obj`: JSON:API `{meta, data}`, no custom_data (the API has none)."""
    attrs = obj.get("attributes") or {}
    return {
        "meta": {"event_name": event_name, "test_mode": bool(attrs.get("test_mode")), MARK: True},
        "data": {**obj, "id": str(obj.get("id"))},
    }


def _found(event_name: str, obj: dict[str, Any], at: float | None, resource: str) -> Found:
    assert at is not None
    return Found(dumps(webhook_body(event_name, obj)), at, f"{resource}/{obj.get('id')}")


def build(settings: Any, transport: httpx.AsyncBaseTransport | None = None) -> LemonSqueezyAPI:
    return LemonSqueezyAPI(
        settings.api_key.get_secret_value(),
        settings.api_base,
        settings.store_id,
        transport=transport,
    )
