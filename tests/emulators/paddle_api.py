"""Paddle Billing API stand-in: `GET /customers/{id}` with a Bearer API key.

Answers like api.paddle.com: 200 `{"data": {customer}, "meta": {"request_id"}}`,
403 `{"error": {"type": "request_error", "code": "forbidden", …}}` for a missing
or wrong key, 404 `{"error": {"code": "entity_not_found", …}}` for an unknown id.
`emu.customers` maps customer id → the customer entity to serve.
"""

from __future__ import annotations

import uuid
from typing import Any

from tests.emulators.base import Emulator, Rejection, Seen


def _error(code: str, detail: str) -> dict[str, Any]:
    return {"error": {"type": "request_error", "code": code, "detail": detail,
                      "documentation_url": f"https://developer.paddle.com/errors/shared/{code}"},
            "meta": {"request_id": str(uuid.uuid4())}}


class PaddleAPIEmulator(Emulator):
    def __init__(self, api_key: str, port: int | None = None) -> None:
        super().__init__(port)
        self.api_key = api_key
        self.customers: dict[str, dict[str, Any]] = {}

    def handle(self, seen: Seen) -> tuple[int, Any]:
        if seen.headers.get("authorization") != f"Bearer {self.api_key}":
            raise Rejection(403, _error("forbidden", "You aren't permitted to perform this request."))
        parts = seen.path.strip("/").split("/")
        if seen.method != "GET" or len(parts) != 2 or parts[0] != "customers":
            raise Rejection(404, _error("not_found", "Route not found"))
        customer = self.customers.get(parts[1])
        if customer is None:
            raise Rejection(404, _error("entity_not_found", f"Entity {parts[1]} not found"))
        return 200, {"data": customer, "meta": {"request_id": str(uuid.uuid4())}}
