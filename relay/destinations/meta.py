"""Meta Conversions API: `POST {url}/{api_version}/{pixel_id}/events`.

Form-encoded as in Meta's own example: `data` (a JSON array of events),
`access_token`, and `test_event_code` when set. The token travels in the body,
never in the URL, so no log line, error or `relay deliveries` row can show it;
Meta's answers are scrubbed of it too. Rules kept (docs/ad-platforms.md):

- `event_name` per kind: purchase → `Purchase`, subscription_started →
  `Subscribe` (standard events); subscription_renewed →
  `RecurringSubscriptionPayment`, subscription_cancelled → `CancelSubscription`
  (Meta's subscription lifecycle events, linked by `user_data.subscription_id`).
  Refunds are skipped: Meta has no event that takes revenue back.
- `event_time`: the conversion's time in Unix seconds (never later than the
  request). A conversion older than 7 days is skipped (Meta rejects the whole
  request when one event is).
- `event_id`: relay.destinations.ids.order_id, the same on every retry and the
  id the merchant gives the pixel (`fbq('track', 'Purchase', {...}, {eventID})`),
  so Meta keeps one of the two.
- `action_source`: renewals and cancellations happen without the buyer
  (`system_generated`); a purchase or start is `website` only when
  `event_source_url` and `client_user_agent` are known (Meta requires both for
  website events), else `other`.
- `user_data`: em/ph/fn/ln/ct/st/zp/country/external_id normalized as Meta
  specifies and SHA-256 hex hashed; fbp/fbc/client_ip_address/
  client_user_agent/subscription_id as they are. `fbc` is formed from `fbclid`
  (`fb.1.{ms}.{fbclid}`, the time relay first saw it: the conversion's) when
  only the click id is known. Without any identifier Meta can match on, skipped.
- `custom_data`: `currency`, `value` (exact, major units, as a JSON number),
  `order_id`, `contents`, `num_items`.

Answers: 2xx delivered. Meta's `error.code` 1/2 (transient) are retried; 4, 17,
32, 613 (throttling) are retried later (Retry-After, else 5 minutes); 190 (token
invalid or expired) and 100 (invalid parameter, with Meta's message) are dead
letters. A rejected batch (one invalid event rejects every event in it, HTTP
400) is resent one by one by the worker, so one bad conversion blocks no other.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import unicodedata
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import orjson
import phonenumbers

from relay.conversion import (
    PURCHASE,
    REFUND,
    SUBSCRIPTION_CANCELLED,
    SUBSCRIPTION_RENEWED,
    SUBSCRIPTION_STARTED,
    Conversion,
)
from relay.destinations import (
    DELIVERED,
    FAILED,
    RETRY,
    USER_AGENT,
    Destination,
    Outcome,
    Skip,
    classify,
    excerpt,
    redact,
    retry_after,
)
from relay.destinations.ids import order_id, subscription_id
from relay.money import fmt
from relay.settings import MetaSettings

EVENT_NAMES = {
    PURCHASE: "Purchase",
    SUBSCRIPTION_STARTED: "Subscribe",
    SUBSCRIPTION_RENEWED: "RecurringSubscriptionPayment",
    SUBSCRIPTION_CANCELLED: "CancelSubscription",
}
NEEDS_VALUE = frozenset({"Purchase", "RecurringSubscriptionPayment"})
SYSTEM_KINDS = frozenset({SUBSCRIPTION_RENEWED, SUBSCRIPTION_CANCELLED})
MAX_AGE = timedelta(days=7)
AGE_MARGIN = timedelta(minutes=1)  # the request must still be inside Meta's window on arrival
MAX_BATCH = 1000  # "up to 1,000 events in data"
TRANSIENT = frozenset({1, 2})
THROTTLED = frozenset({4, 17, 32, 613})
THROTTLE_WAIT = 300.0
FBP = re.compile(r"^fb\.[0-9]\.[0-9]{10,16}\.[0-9]+$", re.ASCII)
FBC = re.compile(r"^fb\.[0-9]\.[0-9]{10,16}\.[A-Za-z0-9_-]{1,500}$", re.ASCII)
FBCLID = re.compile(r"^[A-Za-z0-9_-]{1,500}$", re.ASCII)
EMAIL = re.compile(r"^[^\s@]+@[^\s@]+\.[^\s@]+$")


# ------------------------------------------------------------ normalization (Meta's rules)


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _letters(value: str) -> str:
    """Lowercase letters only (any script: Meta takes UTF-8), no punctuation, digits or spaces."""
    return "".join(ch for ch in value.lower() if unicodedata.category(ch).startswith("L"))


def norm_email(raw: str | None) -> str | None:
    value = (raw or "").strip().lower()
    return value if EMAIL.match(value) else None


def norm_phone(raw: str | None, country: str | None) -> str | None:
    """Digits with the country calling code, no leading zeros or symbols (`16505551212`).
    A national number is completed with the buyer's country; without one it is dropped,
    since Meta matches only numbers that carry a country code."""
    if not raw or not raw.strip():
        return None
    region = country.strip().upper() if country and len(country.strip()) == 2 else None
    text = raw.strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, None if text.startswith("+") else region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164).lstrip("+")


def norm_name(raw: str | None) -> str | None:
    """Lowercase, no punctuation (UTF-8 letters kept: `Valéry` → `valéry`)."""
    if not raw:
        return None
    kept = "".join(
        ch for ch in raw.lower() if not unicodedata.category(ch).startswith(("P", "S", "C"))
    )
    value = " ".join(kept.split())
    return value or None


def norm_city(raw: str | None) -> str | None:
    """Lowercase, no punctuation, no special characters, no spaces (`Menlo Park` → `menlopark`)."""
    value = _letters(raw or "")
    return value or None


def norm_state(raw: str | None) -> str | None:
    """The 2-letter code in lowercase for the US; elsewhere lowercase letters only."""
    value = _letters(raw or "")
    return value or None


def norm_zip(raw: str | None, country: str | None) -> str | None:
    """Lowercase, no spaces or dashes; a US zip keeps its first 5 digits only."""
    if not raw:
        return None
    value = raw.strip().lower()
    if (country or "").strip().upper() == "US":
        value = value.split("-")[0]
        value = "".join(ch for ch in value if ch.isdigit())[:5]
    else:
        value = "".join(ch for ch in value if not ch.isspace() and ch != "-")
    return value or None


def norm_country(raw: str | None) -> str | None:
    value = (raw or "").strip().lower()
    return value if len(value) == 2 and value.isascii() and value.isalpha() else None


def norm_external_id(raw: str | None) -> str | None:
    value = (raw or "").strip().lower()
    return value or None


def fbc_value(attribution: dict[str, str], occurred_at: datetime) -> str | None:
    """The `_fbc` value relay.js passed, else one formed from `fbclid` (Meta's format
    `fb.{subdomain index}.{creation time ms}.{fbclid}`, index 1 when formed on a server,
    creation time = when relay first saw the click id: the conversion's time)."""
    fbc = (attribution.get("fbc") or "").strip()
    if FBC.match(fbc):
        return fbc
    fbclid = (attribution.get("fbclid") or "").strip()
    if FBCLID.match(fbclid):
        millis = int(occurred_at.timestamp()) * 1000 + occurred_at.microsecond // 1000
        return f"fb.1.{millis}.{fbclid}"
    return None


def user_data(conversion: Conversion) -> dict[str, Any]:
    c, a = conversion.customer, conversion.attribution
    out: dict[str, Any] = {}
    hashed = (
        ("em", norm_email(c.email)),
        ("ph", norm_phone(c.phone, c.country)),
        ("fn", norm_name(c.first_name)),
        ("ln", norm_name(c.last_name)),
        ("ct", norm_city(c.city)),
        ("st", norm_state(c.state)),
        ("zp", norm_zip(c.postal_code, c.country)),
        ("country", norm_country(c.country)),
        ("external_id", norm_external_id(c.id)),
    )
    for key, value in hashed:
        if value:
            out[key] = [sha256(value)]
    ip = (a.get("client_ip_address") or "").strip()
    if ip:
        try:
            out["client_ip_address"] = str(ipaddress.ip_address(ip))
        except ValueError:
            pass  # not an address: Meta would refuse the event
    agent = (a.get("client_user_agent") or "").strip()
    if agent:
        out["client_user_agent"] = agent
    fbp = (a.get("fbp") or "").strip()
    if FBP.match(fbp):
        out["fbp"] = fbp
    fbc = fbc_value(a, conversion.occurred_at)
    if fbc:
        out["fbc"] = fbc
    sub = subscription_id(conversion)
    if sub:
        out["subscription_id"] = sub
    return out


# Enough for Meta to match the event to a person (its baseline: a contact or browser
# identifier, or the IP address together with the user agent).
MATCH_KEYS = ("em", "ph", "external_id", "fbp", "fbc")


def matchable(data: dict[str, Any]) -> bool:
    if any(k in data for k in MATCH_KEYS):
        return True
    return "client_ip_address" in data and "client_user_agent" in data


def number(value: Decimal) -> orjson.Fragment:
    """An exact JSON number in major units (`12.345`, `800`), never a binary float."""
    return orjson.Fragment(fmt(value).encode())


# ------------------------------------------------------------ destination


class Meta(Destination):
    name = "meta"
    max_age = MAX_AGE - AGE_MARGIN  # relay backfill --destination plans within it
    settings: MetaSettings
    max_batch = MAX_BATCH

    def event(self, conversion: Conversion, now: datetime) -> dict[str, Any] | Skip:
        if conversion.kind == REFUND:
            return Skip("Meta has no refund event (the Conversions API cannot take revenue back)")
        name = EVENT_NAMES.get(conversion.kind)
        if name is None:
            return Skip(f"Meta has no event for {conversion.kind}")
        if conversion.occurred_at < now - MAX_AGE + AGE_MARGIN:
            return Skip(
                "older than 7 days: Meta rejects events whose event_time is more than "
                "7 days in the past"
            )
        data = user_data(conversion)
        if not matchable(data):
            return Skip(
                "no customer information Meta can match on (email, phone, customer id, "
                "fbp/fbc, or IP address with user agent)"
            )
        a = conversion.attribution
        event: dict[str, Any] = {
            "event_name": name,
            # never after the request: a processor clock ahead of ours would sink the batch
            "event_time": int(min(conversion.occurred_at, now).timestamp()),
            "event_id": order_id(conversion),
            "user_data": data,
        }
        url = (a.get("event_source_url") or "").strip()
        if conversion.kind in SYSTEM_KINDS:
            event["action_source"] = "system_generated"
        elif url.startswith(("http://", "https://")) and "client_user_agent" in data:
            event["action_source"] = "website"
            event["event_source_url"] = url
        else:
            event["action_source"] = "other"
        custom = self.custom_data(conversion, name)
        if isinstance(custom, Skip):
            return custom
        if custom:
            event["custom_data"] = custom
        return event

    def custom_data(self, conversion: Conversion, name: str) -> dict[str, Any] | Skip:
        custom: dict[str, Any] = {}
        if name == "CancelSubscription":
            return custom
        if conversion.total is not None and conversion.currency:
            if conversion.total < 0:
                return Skip("negative value: Meta takes value >= 0")
            custom["currency"] = conversion.currency
            custom["value"] = number(conversion.total)
        elif name in NEEDS_VALUE:
            return Skip(f"no order amount: Meta requires currency and value for {name}")
        custom["order_id"] = order_id(conversion)
        contents = []
        for item in conversion.items:
            ident = item.sku or item.product_id or item.name
            if not ident:
                continue
            entry: dict[str, Any] = {"id": ident, "quantity": item.quantity}
            price = item.price
            if price is None and item.subtotal is not None and item.quantity:
                price = item.subtotal / item.quantity
            if price is not None:
                entry["item_price"] = number(price)
            contents.append(entry)
        if contents:
            custom["contents"] = contents
            custom["num_items"] = sum(e["quantity"] for e in contents)
        return custom

    def build(self, conversion: Conversion, now: datetime) -> httpx.Request | Skip:
        event = self.event(conversion, now)
        if isinstance(event, Skip):
            return event
        return self._post([event])

    def build_batch(self, conversions: Sequence[Conversion], now: datetime) -> httpx.Request:
        events = [self.event(c, now) for c in conversions]
        assert 1 <= len(events) <= MAX_BATCH and not any(isinstance(e, Skip) for e in events)
        return self._post(events)  # type: ignore[arg-type]

    def _post(self, events: list[dict[str, Any]]) -> httpx.Request:
        s = self.settings
        form = {"data": orjson.dumps(events).decode(), "access_token": self.token}
        if s.test_event_code:
            form["test_event_code"] = s.test_event_code
        return httpx.Request(
            "POST",
            f"{s.url.rstrip('/')}/{s.api_version}/{s.pixel_id}/events",
            data=form,
            headers={"Accept": "application/json", "User-Agent": USER_AGENT},
        )

    @property
    def token(self) -> str:
        return self.settings.access_token.get_secret_value() if self.settings.access_token else ""

    def scrub(self, text: str) -> str:
        token = self.token
        return text.replace(token, "********") if token else text

    def classify(self, response: httpx.Response) -> Outcome:
        status = response.status_code
        if httpx.codes.is_success(status):
            return Outcome(DELIVERED, self.scrub(excerpt(response)))
        error = _error(response)
        if error is None:
            outcome = classify(response)
            return Outcome(outcome.kind, self.scrub(outcome.detail), outcome.retry_after)
        code, text = error
        detail = self.scrub(f"HTTP {status} Meta error {code}: {text}")
        if code in TRANSIENT:
            return Outcome(RETRY, detail, retry_after(response))
        if code in THROTTLED:
            return Outcome(RETRY, "throttled: " + detail, retry_after(response) or THROTTLE_WAIT)
        if code == 190:
            return Outcome(
                FAILED,
                detail + " (set a new RELAY_META__ACCESS_TOKEN, then "
                "`relay retry --failed --destination meta`)",
            )
        if code == 100:
            return Outcome(FAILED, detail)
        outcome = classify(response)
        return Outcome(outcome.kind, detail, outcome.retry_after)


def _error(response: httpx.Response) -> tuple[int | None, str] | None:
    """Meta's {"error": {"message", "type", "code", "error_subcode", "error_user_msg",
    "fbtrace_id"}} as (code, readable text); None when the body is not that."""
    try:
        error = orjson.loads(response.content).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if not isinstance(error, dict):
        return None
    code = error.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    parts = [str(error.get("message") or "")[:300]]
    if error.get("error_subcode"):
        parts.append(f"subcode {error['error_subcode']}")
    if error.get("error_user_msg"):
        parts.append(str(error["error_user_msg"])[:300])
    if error.get("fbtrace_id"):
        parts.append(f"fbtrace_id {str(error['fbtrace_id'])[:40]}")
    return code, redact(" ".join(" ".join(parts).split()) or "no message")
