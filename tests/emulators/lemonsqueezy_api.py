"""Lemon Squeezy API stand-in: `GET /v1/orders`, `/v1/subscriptions`, `/v1/subscription-invoices`.

As docs.lemonsqueezy.com/api documents it: `Authorization: Bearer <API key>` (missing or
wrong → 401 with a JSON:API `errors` array), `Accept: application/vnd.api+json` required
(else 406, JSON:API's answer), newest `created_at` first, `page[number]` (from 1) and
`page[size]` (1–100, default 10), `links` `first`/`last` and `next`/`prev` when there is
one, `meta.page` (`currentPage`, `from`, `lastPage`, `perPage`, `to`, `total`). Filters:
orders `store_id`, `user_email`; subscriptions `store_id`, `order_id`, `product_id`,
`variant_id`, `user_email`, `status`; subscription invoices `store_id`, `status`,
`refunded`, `subscription_id`. An unknown filter → 400. 429 over
`emu.rate_limit_per_minute` (Lemon Squeezy: 300 a minute).

`emu.add("orders", attributes, id=…)` adds a JSON:API resource with its relationships links.
"""

from __future__ import annotations

import itertools
import math
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from starlette.responses import JSONResponse, Response

from tests.emulators.base import Rejection, Seen
from tests.emulators.processor import ProcessorEmulator, query

FILTERS = {
    "orders": {"store_id", "user_email"},
    "subscriptions": {"store_id", "order_id", "order_item_id", "product_id", "variant_id",
                      "user_email", "status"},
    "subscription-invoices": {"store_id", "status", "refunded", "subscription_id"},
}
_ids = itertools.count(1000)


def _errors(status: int, title: str, detail: str) -> Rejection:
    return Rejection(status, {"jsonapi": {"version": "1.0"},
                              "errors": [{"detail": detail, "status": str(status), "title": title}]})


class LemonSqueezyAPIEmulator(ProcessorEmulator):
    def __init__(self, api_key: str, port: int | None = None) -> None:
        super().__init__(port)
        self.api_key = api_key
        self.objects: dict[str, list[dict[str, Any]]] = {kind: [] for kind in FILTERS}

    def add(self, kind: str, attributes: dict[str, Any], object_id: int | None = None) -> dict[str, Any]:
        oid = str(object_id if object_id is not None else next(_ids))
        base = f"https://api.lemonsqueezy.com/v1/{kind}/{oid}"
        obj = {"type": kind, "id": oid, "attributes": attributes,
               "relationships": {"store": {"links": {"related": f"{base}/store",
                                                     "self": f"{base}/relationships/store"}}},
               "links": {"self": base}}
        self.objects[kind].append(obj)
        return obj

    def rate_limited(self, wait: int) -> Response:
        return JSONResponse({"jsonapi": {"version": "1.0"},
                             "errors": [{"detail": "Too Many Attempts.", "status": "429",
                                         "title": "Too Many Requests"}]},
                            status_code=429, headers={"Retry-After": str(wait)})

    def handle(self, seen: Seen) -> tuple[int, Any]:
        header = seen.headers.get("authorization", "")
        if header != f"Bearer {self.api_key}":
            raise _errors(401, "Unauthorized", "Unauthenticated.")
        if "application/vnd.api+json" not in seen.headers.get("accept", ""):
            raise _errors(406, "Not Acceptable", "The Accept header must be application/vnd.api+json")
        parts = seen.path.strip("/").split("/")
        if seen.method != "GET" or len(parts) != 2 or parts[0] != "v1" or parts[1] not in FILTERS:
            raise _errors(404, "Not Found", "The route could not be found.")
        return 200, self._list(parts[1], query())

    def _list(self, kind: str, params: list[tuple[str, str]]) -> dict[str, Any]:
        args = dict(params)
        filters = {}
        for key, value in args.items():
            if key.startswith("filter[") and key.endswith("]"):
                name = key[len("filter["):-1]
                if name not in FILTERS[kind]:
                    raise _errors(400, "Bad Request", f"Filter {name} is not allowed.")
                filters[name] = value
            elif key not in ("page[number]", "page[size]", "sort", "include"):
                raise _errors(400, "Bad Request", f"Query parameter {key} is not allowed.")
        try:
            number = int(args.get("page[number]", "1"))
            size = int(args.get("page[size]", "10"))
        except ValueError:
            raise _errors(400, "Bad Request", "page[number] and page[size] must be integers") from None
        if number < 1 or not 1 <= size <= 100:
            raise _errors(400, "Bad Request", "page[size] must be between 1 and 100")

        def keep(obj: dict[str, Any]) -> bool:
            attrs = obj["attributes"]
            return all(str(attrs.get(name)).lower() == value.lower() for name, value in filters.items())

        listed = sorted((o for o in self.objects[kind] if keep(o)),
                        key=lambda o: (datetime.fromisoformat(o["attributes"]["created_at"]), int(o["id"])),
                        reverse=True)
        size = min(size, self.page_cap or size)
        last_page = max(1, math.ceil(len(listed) / size))
        page = listed[(number - 1) * size: number * size]

        def link(n: int) -> str:
            q = {k: v for k, v in args.items() if not k.startswith("page[")}
            return f"{self.url}/v1/{kind}?" + urlencode({"page[number]": n, "page[size]": size, **q,
                                                         "sort": "-createdAt"})

        links = {"first": link(1), "last": link(last_page)}
        if number < last_page:
            links["next"] = link(number + 1)
        if number > 1:
            links["prev"] = link(number - 1)
        start = (number - 1) * size
        self.pages += 1
        return {"meta": {"page": {"currentPage": number, "from": start + 1 if page else None,
                                  "lastPage": last_page, "perPage": size,
                                  "to": start + len(page) if page else None, "total": len(listed)}},
                "jsonapi": {"version": "1.0"}, "links": links, "data": page}
