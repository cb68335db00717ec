"""A Standard Webhooks receiver: verifies each request as a consumer should.

Verification uses the reference `standardwebhooks` package (HMAC-SHA256 over
`{webhook-id}.{webhook-timestamp}.{body}`, ±5 minutes tolerance). 400 on a
missing or bad signature, a `webhook-id` containing '.', a non-JSON body or a
payload that does not follow docs/webhook-schema.md (type `conversion.<kind>`,
version 1, money as decimal strings). Deduplicates on `webhook-id`
(`duplicates`). 200 on success; inject 410 with `fail_next(1, 410)` to play an
endpoint that is gone.
"""

from __future__ import annotations

import re
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.emulators.base import Emulator, Rejection, Seen, is_currency, real_datetime

MONEY = ("total", "subtotal", "discount", "tax", "shipping", "net")
DECIMAL = re.compile(r"^-?\d+(\.\d+)?$")
RFC3339_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
KINDS = ("purchase", "subscription_started", "subscription_renewed", "subscription_cancelled", "refund")


class WebhookReceiver(Emulator):
    def __init__(self, secret: str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", port: int | None = None) -> None:
        super().__init__(port)
        self.secret = secret
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.messages: dict[str, dict[str, Any]] = {}
        self.duplicates: list[str] = []

    def bad(self, message: str) -> Rejection:
        return Rejection(400, {"error": message})

    def validate(self, seen: Seen) -> None:
        if seen.method != "POST" or seen.path != "/hooks/relay":
            raise Rejection(404, {"error": "not found"})
        msg_id = seen.headers.get("webhook-id", "")
        if not msg_id or "." in msg_id:
            raise self.bad("webhook-id is required and must not contain '.'")
        if not re.fullmatch(r"\d+", seen.headers.get("webhook-timestamp", "")):
            raise self.bad("webhook-timestamp must be integer seconds")
        if not re.fullmatch(r"(v1,[A-Za-z0-9+/=]+)( v1a?,[A-Za-z0-9+/=]+)*", seen.headers.get("webhook-signature", "")):
            raise self.bad("webhook-signature must be a space-delimited list of v1,<base64>")
        if not seen.headers.get("content-type", "").startswith("application/json"):
            raise self.bad("Content-Type must be application/json")
        try:
            body = Webhook(self.secret).verify(seen.body, seen.headers)
        except WebhookVerificationError as exc:
            raise self.bad(f"signature: {exc}") from None
        except ValueError:
            raise self.bad("body is not JSON") from None
        self.check_schema(body, msg_id)
        seen.parsed = body

    def handle(self, seen: Seen) -> tuple[int, Any]:
        body, msg_id = seen.parsed, seen.headers["webhook-id"]
        if msg_id in self.messages:
            self.duplicates.append(msg_id)
        else:
            self.messages[msg_id] = body
        return 200, {}

    def check_schema(self, body: Any, msg_id: str) -> None:
        if not isinstance(body, dict) or body.get("version") != 1:
            raise self.bad("version 1 payload expected")
        if body.get("id") != msg_id:
            raise self.bad("payload id must equal webhook-id")
        data = body.get("data")
        if not isinstance(data, dict) or data.get("kind") not in KINDS:
            raise self.bad("data.kind missing or unknown")
        if body.get("type") != f"conversion.{data['kind']}":
            raise self.bad("type must be conversion.<kind>")
        for key in MONEY:
            value = data.get(key)
            if value is not None and (not isinstance(value, str) or not DECIMAL.match(value)):
                raise self.bad(f"data.{key} must be a decimal string or null")
        for key in ("source", "order_key", "occurred_at"):
            if not isinstance(data.get(key), str):
                raise self.bad(f"data.{key} must be a string")
        for where, value in (("timestamp", body.get("timestamp")), ("data.occurred_at", data["occurred_at"])):
            if not RFC3339_Z.match(str(value)) or real_datetime(str(value)) is None:
                raise self.bad(f"{where} must be an RFC 3339 UTC time")
        if data.get("currency") is not None and not is_currency(data["currency"]):
            raise self.bad("data.currency must be ISO 4217")
        for item in data.get("items", []):
            for key in ("price", "subtotal"):
                if item.get(key) is not None and not DECIMAL.match(str(item[key])):
                    raise self.bad(f"item {key} must be a decimal string")
