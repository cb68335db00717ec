"""Meta Conversions API stand-in: `POST /{version}/{pixel_id}/events` (docs/ad-platforms.md).

Takes the body form-encoded (`data` = JSON array, `access_token`,
`test_event_code`) or as JSON, and the token in the body or the query string, as
the Graph API does. Answers like Meta:

- 200 `{"events_received": N, "messages": [], "fbtrace_id": …}`;
- 400 `{"error": {"message", "type", "code", "error_subcode", "error_user_title",
  "error_user_msg", "fbtrace_id"}}`: code 104 without a token, 190 for a wrong
  one (`OAuthException`), 100 (`Invalid parameter`) for every broken rule below.
  One invalid event rejects the whole request: nothing in it is counted.

Rules: `data` holds 1–1000 events; each has `event_name`, an integer
`event_time` (Unix seconds, not more than 7 days in the past, not in the
future), `action_source` from Meta's list, `user_data` with at least one
identifier Meta can match on (or the IP address with the user agent), contact
fields only as lowercase SHA-256 hex (never plain), `fbc`/`fbp` in Meta's
`fb.N.<ms>.…` form, a valid `client_ip_address`; `website` events carry
`event_source_url` (http/https) and `client_user_agent`; `Purchase` and
`RecurringSubscriptionPayment` carry `custom_data.currency` (ISO 4217) and a
numeric `value` >= 0; subscription lifecycle events carry
`user_data.subscription_id`. Faults: `fail_with(code, …)` answers the next
request with Meta's error for that code (1/2 transient, 4/17/32/613
throttling, 190 token, 100 parameter).

`poison` holds event ids refused as Meta refuses an event for a reason relay
cannot see beforehand. `events` lists every event counted; Meta keeps one per (event_name, event_id)
within 48 hours, so `unique()` is what a report would show.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import time
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

from relay.money import ISO_4217
from tests.emulators.base import Emulator, Rejection, Seen

ACTION_SOURCES = {"email", "website", "app", "phone_call", "chat", "physical_store",
                  "system_generated", "business_messaging", "other"}
HASHED = ("em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country")
MATCH = ("em", "ph", "external_id", "fbp", "fbc")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
FBP = re.compile(r"^fb\.[0-9]\.[0-9]{13}\.[0-9]+$")
FBC = re.compile(r"^fb\.[0-9]\.[0-9]{13}\.[A-Za-z0-9_-]+$")
VALUE_EVENTS = ("Purchase", "RecurringSubscriptionPayment")
SUBSCRIPTION_EVENTS = ("RecurringSubscriptionPayment", "CancelSubscription")
SEVEN_DAYS = 7 * 86400
MESSAGES = {
    1: ("An unknown error occurred", "OAuthException", 500),
    2: ("An unexpected error has occurred. Please retry your request later.", "OAuthException", 500),
    4: ("(#4) Application request limit reached", "OAuthException", 400),
    17: ("(#17) User request limit reached", "OAuthException", 400),
    32: ("(#32) Page request limit reached", "OAuthException", 400),
    613: ("(#613) Calls to this api have exceeded the rate limit.", "OAuthException", 400),
    190: ("Error validating access token: Session has expired.", "OAuthException", 400),
    100: ("Invalid parameter", "OAuthException", 400),
}


def error_body(code: int, message: str | None = None, subcode: int | None = None,
               user_msg: str | None = None) -> dict[str, Any]:
    default, kind, _ = MESSAGES.get(code, ("Error", "OAuthException", 400))
    error: dict[str, Any] = {"message": message or default, "type": kind, "code": code,
                             "fbtrace_id": "A" + secrets.token_urlsafe(15)}
    if subcode is not None:
        error["error_subcode"] = subcode
    if user_msg:
        error["error_user_title"] = "Invalid parameter"
        error["error_user_msg"] = user_msg
    return {"error": error}


class MetaEmulator(Emulator):
    def __init__(self, pixel_id: str = "1234567890", access_token: str = "EAAtoken",
                 port: int | None = None) -> None:
        super().__init__(port)
        self.pixel_id = pixel_id
        self.access_token = access_token
        self.events: list[dict[str, Any]] = []
        self.test_event_codes: list[str | None] = []
        # event_ids this "pixel" refuses (a rule relay cannot see, e.g. a domain not verified)
        self.poison: set[str] = set()

    def fail_with(self, code: int, count: int = 1, message: str | None = None,
                  headers: dict[str, str] | None = None) -> None:
        """Answer the next `count` requests with Meta's error for `code`."""
        status = MESSAGES.get(code, ("", "", 400))[2]
        self.fail_next(count, status, headers, error_body(code, message))

    def unique(self) -> set[tuple[str, str]]:
        return {(e["event_name"], e.get("event_id", "")) for e in self.events}

    def bad(self, user_msg: str, subcode: int = 2804019) -> Rejection:
        return Rejection(400, error_body(100, "Invalid parameter", subcode, user_msg))

    def validate(self, seen: Seen) -> None:
        """Every rule Meta applies, before any injected fault (tests/emulators/base.py)."""
        parts = seen.path.strip("/").split("/")
        if seen.method != "POST" or len(parts) != 3 or parts[2] != "events" \
                or not re.fullmatch(r"v[0-9]+\.[0-9]+", parts[0]):
            raise Rejection(400, error_body(100, "Unsupported post request.", 33))
        query = {k: v[0] for k, v in parse_qs(seen.query).items()}
        ctype = seen.headers.get("content-type", "")
        if ctype.startswith("application/x-www-form-urlencoded"):
            params: dict[str, Any] = {k: v[0] for k, v in parse_qs(seen.body.decode()).items()}
        elif ctype.startswith("application/json"):
            params = json.loads(seen.body, parse_float=Decimal)
        else:
            raise Rejection(400, error_body(100, "Unsupported content type"))
        token = params.get("access_token") or query.get("access_token")
        if not token:
            raise Rejection(400, error_body(104, "An access token is required to request this resource."))
        if token != self.access_token:
            raise Rejection(400, error_body(190, "Invalid OAuth access token - Cannot parse access token"))
        if parts[1] != self.pixel_id:
            raise Rejection(400, error_body(100, f"Unsupported post request. Object with ID '{parts[1]}' "
                                                 "does not exist", 33))
        data = params.get("data")
        if isinstance(data, str):
            try:
                data = json.loads(data, parse_float=Decimal)
            except ValueError:
                raise self.bad("data must be a JSON array of events") from None
        if not isinstance(data, list) or not 1 <= len(data) <= 1000:
            raise self.bad("data must hold 1 to 1000 events")
        now = time.time()
        for n, event in enumerate(data):
            self.check(event, n, now)
        seen.parsed = {"data": data, "test_event_code": params.get("test_event_code")}

    def handle(self, seen: Seen) -> tuple[int, Any]:
        data = seen.parsed["data"]
        self.events.extend(data)
        self.test_event_codes.append(seen.parsed["test_event_code"])
        return 200, {"events_received": len(data), "messages": [],
                     "fbtrace_id": "A" + secrets.token_urlsafe(15)}

    def check(self, event: Any, n: int, now: float) -> None:
        where = f"data[{n}]"
        if not isinstance(event, dict):
            raise self.bad(f"{where} must be an object")
        if event.get("event_id") in self.poison:
            raise self.bad(f"{where}: event_source_url does not belong to a verified domain", 2804060)
        name = event.get("event_name")
        if not isinstance(name, str) or not name.strip() or len(name) > 50:
            raise self.bad(f"{where}: event_name is required")
        at = event.get("event_time")
        if isinstance(at, bool) or not isinstance(at, int):
            raise self.bad(f"{where}: event_time must be an integer Unix timestamp in seconds")
        if at < now - SEVEN_DAYS:
            raise self.bad(f"{where}: event_time is more than 7 days in the past; no event in "
                           "this request was processed", 2804003)
        if at > now + 60:
            raise self.bad(f"{where}: event_time is in the future", 2804004)
        source = event.get("action_source")
        if source not in ACTION_SOURCES:
            raise self.bad(f"{where}: action_source must be one of {sorted(ACTION_SOURCES)}", 2804050)
        user = event.get("user_data")
        if not isinstance(user, dict) or not user:
            raise self.bad(f"{where}: user_data is required", 2804015)
        for key in (*HASHED, "external_id"):
            if key not in user:
                continue
            values = user[key] if isinstance(user[key], list) else [user[key]]
            if not values or not all(isinstance(v, str) for v in values):
                raise self.bad(f"{where}: user_data.{key} must be a string or list of strings")
            if key in HASHED and not all(SHA256.match(v) for v in values):
                raise self.bad(f"{where}: user_data.{key} is not hashed: contact information "
                               "must be SHA-256 hex of the normalized value", 2804020)
        if "fbp" in user and not (isinstance(user["fbp"], str) and FBP.match(user["fbp"])):
            raise self.bad(f"{where}: user_data.fbp is not in the fb.1.<ms>.<random> format")
        if "fbc" in user and not (isinstance(user["fbc"], str) and FBC.match(user["fbc"])):
            raise self.bad(f"{where}: user_data.fbc is not in the fb.1.<ms>.<fbclid> format")
        if "client_ip_address" in user:
            try:
                ipaddress.ip_address(user["client_ip_address"])
            except (ValueError, TypeError):
                raise self.bad(f"{where}: user_data.client_ip_address is not an IP address") from None
        if not (any(k in user for k in MATCH)
                or ("client_ip_address" in user and "client_user_agent" in user)):
            raise self.bad(f"{where}: user_data has no customer information parameter to match on", 2804015)
        if source == "website":
            url = event.get("event_source_url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise self.bad(f"{where}: event_source_url is required for website events", 2804051)
            if not isinstance(user.get("client_user_agent"), str) or not user["client_user_agent"]:
                raise self.bad(f"{where}: client_user_agent is required for website events", 2804052)
        custom = event.get("custom_data", {})
        if not isinstance(custom, dict):
            raise self.bad(f"{where}: custom_data must be an object")
        if name in VALUE_EVENTS or "value" in custom:
            currency, value = custom.get("currency"), custom.get("value")
            if not isinstance(currency, str) or currency.upper() not in ISO_4217:
                raise self.bad(f"{where}: custom_data.currency must be a valid ISO 4217 code", 2804008)
            if isinstance(value, bool) or not isinstance(value, (int, Decimal)) or value < 0:
                raise self.bad(f"{where}: custom_data.value must be a number >= 0", 2804009)
        if name in SUBSCRIPTION_EVENTS and not user.get("subscription_id"):
            raise self.bad(f"{where}: {name} needs user_data.subscription_id")
        for item in custom.get("contents", []):
            if not isinstance(item, dict) or not isinstance(item.get("id"), str) \
                    or not isinstance(item.get("quantity"), int):
                raise self.bad(f"{where}: each custom_data.contents entry needs id and quantity")
