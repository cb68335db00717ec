"""pagent server-side conversions, v2: `POST {url}/v2/conversions` and `/v2/conversions/bulk`.

Rules kept (seed document, DESTINATIONS.md §2): Bearer API key; JSON;
`session_data` = {session_id, user_id, conversion_id, visit_id when known}, the
output of `_pgnt.variables(label)` captured in the browser and passed through
the processor's metadata (relay.attribution fills `pagent_*`). Without
session_id and user_id pagent cannot attribute the event: skipped ("no pagent
session ids"). A missing conversion_id means `_pgnt.variables()` returned null
because the goal label matched no goal: skipped, never sent. `revenue` is an
integer in the currency's minor units (999 = $9.99, ¥800 = 800), `time` Unix
milliseconds of the conversion, `label` from settings; absent values are
omitted, never sent as null. Bulk: 1–100 events per request.

pagent has no currency field (the value is read in the project's currency), so
`RELAY_PAGENT__CURRENCY` is required: a conversion in another currency is
skipped rather than sent as a number pagent would misread (¥10,000 as $100).

Retry policy. pagent documents no idempotency key, so a second send of the
same event double counts. The relay therefore:

- retries only when the request certainly did not count: 429, 5xx (pagent:
  "retry on 500"), and connection failures before anything was sent;
- never resends after an ambiguous failure (a timeout or reset after the
  request was sent, or a worker that died mid-request): the delivery is
  marked failed with "ambiguous: …" (`resend_ambiguous = False`) so an
  operator can check pagent and `relay retry` it by hand if it is missing;
- 400 and 401 are permanent.

Several due conversions are sent together through the bulk endpoint (up to
100); the one response settles them all. A single one goes to `/v2/conversions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import httpx
import orjson

from relay.conversion import Conversion
from relay.destinations import USER_AGENT, Destination, Skip
from relay.money import to_minor
from relay.settings import PagentSettings

MAX_BATCH = 100


def unix_ms(moment: datetime) -> int:
    return int(moment.timestamp()) * 1000 + moment.microsecond // 1000


class Pagent(Destination):
    name = "pagent"
    settings: PagentSettings
    resend_ambiguous = False
    max_batch = MAX_BATCH

    def event(self, conversion: Conversion) -> dict[str, Any] | Skip:
        a = conversion.attribution
        session_id, user_id = a.get("pagent_session_id"), a.get("pagent_user_id")
        if not session_id or not user_id:
            return Skip("no pagent session ids (pagent_session_id and pagent_user_id are needed)")
        conversion_id = a.get("pagent_conversion_id")
        if not conversion_id:
            return Skip("pagent conversion_id is null: the goal label matched nothing")
        session: dict[str, str] = {
            "session_id": session_id,
            "user_id": user_id,
            "conversion_id": conversion_id,
        }
        if a.get("pagent_visit_id"):
            session["visit_id"] = a["pagent_visit_id"]
        event: dict[str, Any] = {"session_data": session, "label": self.settings.label}
        if conversion.total is not None and conversion.currency:
            wanted = self.settings.currency
            if wanted and conversion.currency != wanted:
                return Skip(
                    f"currency {conversion.currency} differs from the pagent project "
                    f"currency {wanted}"
                )
            if conversion.total < 0:
                return Skip("negative revenue")
            event["revenue"] = to_minor(conversion.total, conversion.currency)
        event["time"] = unix_ms(conversion.occurred_at)
        event["properties"] = {
            "source": conversion.source,
            "kind": conversion.kind,
            "order_key": conversion.order_key,
        }
        return event

    def build(self, conversion: Conversion, now: datetime) -> httpx.Request | Skip:
        event = self.event(conversion)
        if isinstance(event, Skip):
            return event
        return self._post("/v2/conversions", event)

    def build_batch(self, conversions: Sequence[Conversion], now: datetime) -> httpx.Request:
        events = [self.event(c) for c in conversions]
        assert 1 <= len(events) <= MAX_BATCH and not any(isinstance(e, Skip) for e in events)
        return self._post("/v2/conversions/bulk", {"events": events})

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Request:
        key = self.settings.api_key.get_secret_value() if self.settings.api_key else ""
        return httpx.Request(
            "POST",
            self.settings.url.rstrip("/") + path,
            content=orjson.dumps(body),
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            },
        )
