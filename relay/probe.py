"""`relay check --probe ga4|meta`: send one sample conversion, built by the real
destination module, to the platform's checking endpoint and say what it answered.

- ga4: GA4's `/mp/collect` answers 2xx even to an invalid hit, so the probe posts
  to the validation server (`{url}/debug/mp/collect`, with
  `validation_behavior: ENFORCE_RECOMMENDATIONS`) and prints its
  validationMessages. Google's validation server does not check the API secret
  or the measurement id, and debug hits never reach reports.
- meta: posts a sample Purchase with `RELAY_META__TEST_EVENT_CODE` (required,
  so the probe shows up in Events Manager → Test events, not as a sale); Meta
  checks the token (190) and the pixel id (100) for real.

Nothing is written to the ledger. Exit status 0 when the platform accepted the
sample; 1 when it did not, could not be reached, or the destination is not
configured (the message says what to set).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import orjson

from relay.conversion import PURCHASE, Conversion, Customer, Item
from relay.destinations import DELIVERED, Skip, redact
from relay.errors import ConfigError
from relay.settings import Settings, mask_url

PLATFORMS = ("ga4", "meta")


def sample(now: datetime) -> Conversion:
    return Conversion(
        source="stripe",
        kind=PURCHASE,
        order_key=f"relay-probe-{uuid.uuid4().hex[:12]}",
        occurred_at=now - timedelta(seconds=5),
        currency="USD",
        total=Decimal("1.00"),
        tax=Decimal("0"),
        customer=Customer(id="relay-probe"),
        attribution={"ga_client_id": f"{uuid.uuid4().int % 10**9}.{int(now.timestamp())}"},
        items=(Item(quantity=1, price=Decimal("1.00"), sku="relay-probe", name="relay probe"),),
    )


def run(settings: Settings, platform: str, out: Any = print) -> int:
    from relay.destinations.ga4 import GA4
    from relay.destinations.meta import Meta

    if platform not in PLATFORMS:
        raise ConfigError(f"--probe takes one of {list(PLATFORMS)}")
    section = getattr(settings, platform)
    if not section.enabled:
        needs = " and ".join(f"RELAY_{platform.upper()}__{f.upper()}" for f in section.required)
        raise ConfigError(f"--probe {platform}: set {needs} first")
    now = datetime.now(UTC)
    if platform == "ga4":
        dest = GA4(section)
        body = dest.body(sample(now), now)
        assert not isinstance(body, Skip), body
        body["validation_behavior"] = "ENFORCE_RECOMMENDATIONS"
        request = dest.request(body, "/debug/mp/collect")
    else:
        if not section.test_event_code:
            raise ConfigError(
                "--probe meta sends a test event: set RELAY_META__TEST_EVENT_CODE "
                "(Events Manager → Test events) so it is not counted as a sale"
            )
        meta = Meta(section)
        built = meta.build(sample(now), now)
        assert not isinstance(built, Skip), built
        request = built
    shown = mask_url(str(request.url))
    started = time.monotonic()
    try:
        with httpx.Client(timeout=section.timeout_seconds, follow_redirects=False) as client:
            response = client.send(request)
    except httpx.HTTPError as exc:
        out(f"{platform}: cannot reach {shown}: {type(exc).__name__}: {redact(str(exc))[:200]}")
        return 1
    ms = (time.monotonic() - started) * 1000
    if platform == "ga4":
        return _ga4_answer(response, shown, ms, out)
    outcome = meta.classify(response)
    if outcome.kind == DELIVERED:
        out(f"meta: {shown} accepted the test event ({ms:.0f} ms): {outcome.detail}")
        out(f"meta: look for it under Test events with code {section.test_event_code}")
        return 0
    out(f"meta: {shown} refused the test event: {outcome.detail}")
    return 1


def _ga4_answer(response: httpx.Response, shown: str, ms: float, out: Any) -> int:
    try:
        messages = orjson.loads(response.content).get("validationMessages")
    except (orjson.JSONDecodeError, AttributeError):
        messages = None
    if response.status_code != 200 or not isinstance(messages, list):
        out(f"ga4: {shown} answered HTTP {response.status_code}, not a validation result")
        return 1
    if not messages:
        out(f"ga4: {shown} validated a sample purchase: no validation messages ({ms:.0f} ms)")
        out(
            "ga4: note: Google's validation server does not check the API secret or the "
            "measurement id; compare them with Admin → Data streams"
        )
        return 0
    for m in messages:
        if isinstance(m, dict):
            out(f"ga4: {m.get('validationCode')}: {m.get('fieldPath')}: {m.get('description')}")
    return 1
