"""Stripe API stand-in: Checkout Session line items and promotion codes.

`GET /v1/checkout/sessions/{id}/line_items` answers a Stripe list object of
`item`s; `GET /v1/promotion_codes/{id}` a `promotion_code`. A missing or wrong
secret key is 401 and an unknown id 404, both with Stripe's `{"error": {…}}`.
"""

from __future__ import annotations

from typing import Any

from tests.emulators.base import Emulator, Rejection, Seen


def _error(status: int, message: str, kind: str = "invalid_request_error") -> Rejection:
    return Rejection(status, {"error": {"message": message, "type": kind}})


class StripeAPIEmulator(Emulator):
    def __init__(self, api_key: str, port: int | None = None) -> None:
        super().__init__(port)
        self.api_key = api_key
        self.line_items: dict[str, list[dict[str, Any]]] = {}  # session id → items
        self.promotion_codes: dict[str, str] = {}  # promo_… → code text

    def handle(self, seen: Seen) -> tuple[int, Any]:
        if seen.headers.get("authorization") != f"Bearer {self.api_key}":
            raise _error(401, "Invalid API Key provided", "invalid_request_error")
        parts = seen.path.strip("/").split("/")
        if seen.method != "GET":
            raise _error(404, "Unrecognized request URL")
        if parts[:3] == ["v1", "checkout", "sessions"] and len(parts) == 5 and parts[4] == "line_items":
            items = self.line_items.get(parts[3])
            if items is None:
                raise _error(404, f"No such checkout.session: '{parts[3]}'")
            return 200, {"object": "list", "data": items, "has_more": False,
                         "url": f"/v1/checkout/sessions/{parts[3]}/line_items"}
        if parts[:2] == ["v1", "promotion_codes"] and len(parts) == 3:
            code = self.promotion_codes.get(parts[2])
            if code is None:
                raise _error(404, f"No such promotion code: '{parts[2]}'")
            return 200, {"id": parts[2], "object": "promotion_code", "active": True, "code": code}
        raise _error(404, "Unrecognized request URL")


def line_item(price_id: str, product_id: str, name: str, unit: int, quantity: int,
              currency: str = "usd") -> dict[str, Any]:
    return {
        "id": f"li_{price_id[-8:]}", "object": "item", "amount_discount": 0, "amount_tax": 0,
        "amount_subtotal": unit * quantity, "amount_total": unit * quantity,
        "currency": currency, "description": name, "quantity": quantity,
        "price": {"id": price_id, "object": "price", "product": product_id,
                  "unit_amount": unit, "currency": currency},
    }
