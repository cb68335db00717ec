"""Generic signed webhook: the normalized conversion, POSTed to any URL per Standard Webhooks.

Body: the versioned JSON documented in docs/webhook-schema.md
(`{"id", "type": "conversion.<kind>", "version": 1, "timestamp", "data": {…}}`,
money as decimal strings). Headers (Standard Webhooks spec):

- `webhook-id`: `msg_` + 32 hex digits of SHA-256(source:kind:order_key) —
  the same on every retry (the receiver's idempotency key), never a `.`;
- `webhook-timestamp`: Unix seconds of this attempt (each attempt is re-signed);
- `webhook-signature`: `v1,<base64 HMAC-SHA256>` over `{id}.{timestamp}.{body}`
  with the base64-decoded part of the `whsec_…` secret (the `standardwebhooks`
  reference package signs).

Delivery semantics per the spec: any 2xx is success; 410 Gone means the
endpoint is gone: the worker disables the destination (this delivery and every
other one wait, pending) until `relay retry --destination webhook` or a new
`RELAY_WEBHOOK__URL`; every other answer and network errors are failures that
are retried with backoff, honouring Retry-After. A 3xx is one of those: the
redirect is never followed (it would carry the signed payload elsewhere) and its
target is shown in the error, so the operator can point the URL there.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import orjson
from standardwebhooks.webhooks import Webhook as Signer

from relay.conversion import Conversion
from relay.destinations import (
    DELIVERED,
    FAILED,
    RETRY,
    USER_AGENT,
    Destination,
    Outcome,
    Skip,
    excerpt,
    iso_utc,
    redirected,
    retry_after,
)
from relay.money import fmt
from relay.settings import WebhookSettings

SCHEMA_VERSION = 1


def message_id(conversion: Conversion) -> str:
    key = f"{conversion.source}:{conversion.kind}:{conversion.order_key}"
    return "msg_" + hashlib.sha256(key.encode()).hexdigest()[:32]


def _money(value: Decimal | None) -> str | None:
    return None if value is None else fmt(value)


def payload(conversion: Conversion) -> dict[str, Any]:
    """The normalized conversion as documented in docs/webhook-schema.md (version 1)."""
    c = conversion.customer
    return {
        "id": message_id(conversion),
        "type": f"conversion.{conversion.kind}",
        "version": SCHEMA_VERSION,
        "timestamp": iso_utc(conversion.occurred_at),
        "data": {
            "source": conversion.source,
            "kind": conversion.kind,
            "order_key": conversion.order_key,
            "occurred_at": iso_utc(conversion.occurred_at),
            "livemode": conversion.livemode,
            "currency": conversion.currency,
            "total": _money(conversion.total),
            "subtotal": _money(conversion.subtotal),
            "discount": _money(conversion.discount),
            "tax": _money(conversion.tax),
            "shipping": _money(conversion.shipping),
            "net": _money(conversion.net),
            "promo_code": conversion.promo_code,
            "new_customer": conversion.new_customer,
            "customer": {
                "id": c.id,
                "email": c.email,
                "name": c.name,
                "phone": c.phone,
                "city": c.city,
                "country": c.country,
                "state": c.state,
                "postal_code": c.postal_code,
            },
            "items": [
                {
                    "quantity": i.quantity,
                    "price": _money(i.price),
                    "subtotal": _money(i.subtotal),
                    "sku": i.sku,
                    "name": i.name,
                    "category": i.category,
                    "product_id": i.product_id,
                    "variant_id": i.variant_id,
                }
                for i in conversion.items
            ],
            "attribution": dict(conversion.attribution),
            "refs": dict(conversion.refs),
            "metadata": dict(conversion.metadata),
        },
    }


class Webhook(Destination):
    name = "webhook"
    settings: WebhookSettings

    def build(self, conversion: Conversion, now: datetime) -> httpx.Request | Skip:
        secret = self.settings.secret.get_secret_value() if self.settings.secret else ""
        msg_id = message_id(conversion)
        body = orjson.dumps(payload(conversion))
        moment = now.astimezone(UTC).replace(microsecond=0)
        signature = Signer(secret).sign(msg_id, moment, body.decode())
        return httpx.Request(
            "POST",
            self.settings.url or "",
            content=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "webhook-id": msg_id,
                "webhook-timestamp": str(int(moment.timestamp())),
                "webhook-signature": signature,
            },
        )

    def classify(self, response: httpx.Response) -> Outcome:
        status = response.status_code
        if httpx.codes.is_success(status):
            return Outcome(DELIVERED, excerpt(response))
        if status == 410:
            return Outcome(
                FAILED,
                "HTTP 410: endpoint gone; destination disabled until `relay retry --destination"
                f" webhook` or a new RELAY_WEBHOOK__URL: {excerpt(response)}",
                gone=True,
            )
        if 300 <= status < 400:
            return Outcome(RETRY, redirected(response), retry_after(response))
        return Outcome(RETRY, f"HTTP {status}: {excerpt(response)}", retry_after(response))
