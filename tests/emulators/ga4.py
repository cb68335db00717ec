"""GA4 Measurement Protocol stand-in: `/mp/collect` and `/debug/mp/collect` (docs/ad-platforms.md).

Like Google's servers, `/mp/collect` answers 204 to everything, a valid hit or
not; a hit that breaks a rule (or carries a wrong `measurement_id`/`api_secret`,
which Google silently drops) is recorded in `rejected` with the reasons, so a
test can see what GA4 would have thrown away. `/debug/mp/collect` validates
the same body and answers `{"validationMessages": [{"fieldPath",
"description", "validationCode"}]}` (empty when valid); like Google's
validation server it does not check the API secret.

Rules (Google's #limitations list and the purchase/refund event reference,
enforced as `validation_behavior: ENFORCE_RECOMMENDATIONS` would): a JSON
object under 130 kB; `client_id` a non-empty string; `timestamp_micros` an
integer from 72 hours ago up to now; `events` 1–25; event names ≤ 40 of
`[A-Za-z0-9_]` starting with a letter, not reserved; ≤ 25 params per event,
names like event names and not `google_`/`ga_`/`firebase_`, string values ≤ 100
characters; `purchase` and `refund` need `transaction_id`, a numeric `value`
with an ISO 4217 `currency`, and (purchase) `items`; each item has `item_id`
or `item_name`, a numeric `price` and an integer `quantity`; ≤ 200 items.

`hits` lists the valid hits GA4 would count; it keeps one purchase per
`transaction_id`, so `purchases()` is what a report would show.
"""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

from relay.money import ISO_4217
from tests.emulators.base import Emulator, Rejection, Seen

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,39}$")
RESERVED_EVENTS = frozenset("""
ad_activeview ad_click ad_exposure ad_impression ad_query ad_reward adunit_exposure app_background
app_clear_data app_exception app_install app_remove app_store_refund app_update app_upgrade
dynamic_link_app_open dynamic_link_app_update dynamic_link_first_open error firebase_campaign
firebase_in_app_message_action firebase_in_app_message_dismiss firebase_in_app_message_impression
first_open first_visit in_app_purchase notification_dismiss notification_foreground
notification_open notification_receive notification_send os_update screen_view session_start
user_engagement
""".split())
RESERVED_PREFIXES = ("google_", "ga_", "firebase_")
MAX_BODY = 130_000
WINDOW = 72 * 3600 * 1_000_000


class GA4Emulator(Emulator):
    def __init__(self, measurement_id: str = "G-TEST12345", api_secret: str = "ga4-secret",
                 port: int | None = None) -> None:
        super().__init__(port)
        self.measurement_id = measurement_id
        self.api_secret = api_secret
        self.hits: list[dict[str, Any]] = []
        self.debug_requests: list[Seen] = []

    def purchases(self) -> dict[str, dict[str, Any]]:
        """transaction_id → the first purchase event with it (GA4 deduplicates on it)."""
        out: dict[str, dict[str, Any]] = {}
        for hit in self.hits:
            for event in hit["events"]:
                if event["name"] == "purchase":
                    out.setdefault(event["params"]["transaction_id"], event)
        return out

    def validate(self, seen: Seen) -> None:
        """/mp/collect's rules, before any injected fault (tests/emulators/base.py): a hit
        that breaks one is dropped (GA4 still answers 2xx). /debug/mp/collect answers its
        validation messages in `handle`."""
        if seen.method != "POST" or seen.path not in ("/mp/collect", "/debug/mp/collect"):
            raise Rejection(404, {"error": "not found"})
        if seen.path.startswith("/debug"):
            return
        query = {k: v[0] for k, v in parse_qs(seen.query).items()}
        messages, body = self.validation_messages(seen.body)
        if query.get("measurement_id") != self.measurement_id or query.get("api_secret") != self.api_secret:
            raise Rejection(204, None, reason="wrong measurement_id or api_secret: Google drops the hit")
        if messages:
            raise Rejection(204, None, reason=messages)
        seen.parsed = body

    def handle(self, seen: Seen) -> tuple[int, Any]:
        if seen.path.startswith("/debug"):
            messages, _ = self.validation_messages(seen.body)
            self.debug_requests.append(seen)
            return 200, {"validationMessages": messages}
        self.hits.append(seen.parsed)
        return 204, None

    # ---------------------------------------------------------------- validation

    def validation_messages(self, raw: bytes) -> tuple[list[dict[str, str]], Any]:
        out: list[dict[str, str]] = []

        def msg(path: str, description: str, code: str) -> None:
            out.append({"fieldPath": path, "description": description, "validationCode": code})

        if len(raw) >= MAX_BODY:
            msg("", "The request body must be smaller than 130kB.", "VALUE_OUT_OF_BOUNDS")
            return out, None
        try:
            body = json.loads(raw, parse_float=Decimal)
        except ValueError:
            msg("", "Unable to parse the request body as JSON.", "VALUE_INVALID")
            return out, None
        if not isinstance(body, dict):
            msg("", "The request body must be a JSON object.", "VALUE_INVALID")
            return out, None
        cid = body.get("client_id")
        if not isinstance(cid, str) or not cid.strip():
            msg("client_id", "client_id is required for web streams.", "VALUE_REQUIRED")
        if "timestamp_micros" in body:
            ts = body["timestamp_micros"]
            now = int(time.time() * 1_000_000)
            if isinstance(ts, bool) or not isinstance(ts, int):
                msg("timestamp_micros", "timestamp_micros must be an integer.", "VALUE_INVALID")
            elif ts < now - WINDOW or ts > now + 60_000_000:
                msg("timestamp_micros", "timestamp_micros must be within the last 72 hours and not "
                    "in the future.", "VALUE_OUT_OF_BOUNDS")
        events = body.get("events")
        if not isinstance(events, list) or not events:
            msg("events", "events is required.", "VALUE_REQUIRED")
            return out, body
        if len(events) > 25:
            msg("events", "A request can have at most 25 events.", "EXCEEDED_MAX_ENTITIES")
        for n, event in enumerate(events):
            self.check_event(event, n, msg)
        return out, body

    def check_event(self, event: Any, n: int, msg: Any) -> None:
        if not isinstance(event, dict):
            msg("events", f"Event at index: [{n}] must be an object.", "VALUE_INVALID")
            return
        name = event.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            msg("events", f"Event at index: [{n}] has invalid name [{name}]. Names must start with an "
                "alphabetic character and contain only alphanumeric characters and underscores.",
                "NAME_INVALID")
            return
        if name in RESERVED_EVENTS:
            msg("events", f"Event at index: [{n}] has name [{name}] which is reserved.", "NAME_RESERVED")
        params = event.get("params", {})
        if not isinstance(params, dict):
            msg(f"events[{n}].params", "params must be an object.", "VALUE_INVALID")
            return
        if len(params) > 25:
            msg(f"events[{n}].params", "An event can have at most 25 parameters.", "EXCEEDED_MAX_ENTITIES")
        for key, value in params.items():
            path = f"events[{n}].params.{key}"
            if not NAME.match(key):
                msg(path, f"Param [{key}] has an invalid name.", "NAME_INVALID")
            elif key.startswith(RESERVED_PREFIXES):
                msg(path, f"Param [{key}] uses a reserved prefix.", "NAME_RESERVED")
            if isinstance(value, str) and len(value) > 100:
                msg(path, f"Param [{key}] has a value longer than 100 characters.", "VALUE_OUT_OF_BOUNDS")
        if name in ("purchase", "refund"):
            self.check_commerce(name, params, n, msg)

    def check_commerce(self, name: str, params: dict[str, Any], n: int, msg: Any) -> None:
        base = f"events[{n}].params"
        if not isinstance(params.get("transaction_id"), str) or not params["transaction_id"]:
            msg(f"{base}.transaction_id", f"transaction_id is required for {name}.", "VALUE_REQUIRED")
        value = params.get("value")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, Decimal))):
            msg(f"{base}.value", "value must be a number.", "VALUE_INVALID")
        if value is not None:
            currency = params.get("currency")
            if not isinstance(currency, str) or currency not in ISO_4217:
                msg(f"{base}.currency", "currency is required (ISO 4217) when value is set.", "VALUE_REQUIRED")
        for key in ("tax", "shipping"):
            if key in params and (isinstance(params[key], bool) or not isinstance(params[key], (int, Decimal))):
                msg(f"{base}.{key}", f"{key} must be a number.", "VALUE_INVALID")
        items = params.get("items")
        if items is None:
            if name == "purchase":
                msg(f"{base}.items", "items is required for purchase.", "VALUE_REQUIRED")
            return
        if not isinstance(items, list) or not items:
            msg(f"{base}.items", "items must be a non-empty array.", "VALUE_INVALID")
            return
        if len(items) > 200:
            msg(f"{base}.items", "An event can have at most 200 items.", "EXCEEDED_MAX_ENTITIES")
        for i, item in enumerate(items):
            path = f"{base}.items[{i}]"
            if not isinstance(item, dict):
                msg(path, "Each item must be an object.", "VALUE_INVALID")
                continue
            if not item.get("item_id") and not item.get("item_name"):
                msg(path, "Each item needs item_id or item_name.", "VALUE_REQUIRED")
            price = item.get("price")
            if price is not None and (isinstance(price, bool) or not isinstance(price, (int, Decimal))):
                msg(f"{path}.price", "price must be a number.", "VALUE_INVALID")
            quantity = item.get("quantity", 1)
            if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
                msg(f"{path}.quantity", "quantity must be a positive integer.", "VALUE_INVALID")
            for key, val in item.items():
                if isinstance(val, str) and len(val) > 100:
                    msg(f"{path}.{key}", "Item parameter values are limited to 100 characters.",
                        "VALUE_OUT_OF_BOUNDS")
