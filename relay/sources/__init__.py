"""Sources: one module per payment processor, behind one small interface.

A source is two pure steps, kept apart so a stored raw body can be re-parsed
later without re-verifying:

- `verify_headers(headers, now)` raises SignatureError (or AuthError) when the
  headers alone show the request cannot be authentic (no signature header, one
  that cannot be a signature, wrong Basic credentials). It runs before the body
  is read, so an unsigned request costs no body buffer.
- `verify(body, headers, now)` raises SignatureError (or AuthError) unless the
  raw bytes are authentic. It runs before anything is parsed.
- `parse(body)` returns a ParsedEvent: the processor's event id and type, and
  0..n Conversions, or an `ignored` reason. It raises NotJSONObject on a body
  that is not a JSON object, and PayloadError on one it cannot read exactly
  (unknown currency, a shape it does not know, missing amounts): Intake then
  quarantines the event.

Sources never do network I/O; enrichment (API look-ups) happens in the worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

import orjson

from relay import money
from relay.conversion import Conversion
from relay.errors import NotJSONObject, PayloadError

# Envelope key set by `relay simulate` on samples for processors without a test flag
# (Paddle, Chargebee) so a simulated event is test-mode like Stripe's and LS's.
SIMULATED_KEY = "relay_simulated"

# A shape no check in a parser foresaw is still the payload's fault, never a 500.
UNREADABLE = (ValueError, TypeError, ArithmeticError, LookupError, AttributeError)


@dataclass(slots=True)
class Fetch:
    """An event that names an object instead of carrying it (a Stripe thin event): the
    worker fetches the object with the source's API key and records what a snapshot event
    of `snapshot_type` carrying it would give (relay/thin.py). Never on the webhook path."""

    url: str  # the API path of the object (`related_object.url`)
    object_type: str  # "checkout.session"
    object_id: str
    snapshot_type: str  # the snapshot event type it stands for ("checkout.session.completed")


@dataclass(slots=True)
class ParsedEvent:
    event_id: str
    event_type: str
    livemode: bool = True
    conversions: list[Conversion] = field(default_factory=list)
    ignored: str | None = None  # why a valid event is not relayed
    fetch: Fetch | None = None  # its object must be fetched before it has conversions


class Source(Protocol):
    name: str

    def verify_headers(self, headers: Mapping[str, str], now: float) -> object: ...

    def verify(self, body: bytes, headers: Mapping[str, str], now: float) -> None: ...

    def parse(self, body: bytes) -> ParsedEvent: ...


# What a handler returns: its conversion(s), or why the event is not relayed.
HandlerResult = Conversion | Iterable[Conversion] | str


def dispatch(
    parsed: ParsedEvent,
    handlers: Mapping[str, Callable[..., HandlerResult]],
    run: Callable[[Callable[..., HandlerResult]], HandlerResult],
    noun: str = "event type",
) -> ParsedEvent:
    """Find the handler for `parsed.event_type` and fill `parsed` from `run(handler)`.

    No handler: ignored, "<noun> '<type>' is not relayed". A str result is the
    ignored reason; otherwise the conversion, or the list of them. A handler that
    cannot read its object raises PayloadError carrying the event's id and type, so
    the quarantined event keeps them.
    """
    handler = handlers.get(parsed.event_type)
    if handler is None:
        parsed.ignored = f"{noun} {parsed.event_type[:64]!r} is not relayed"
        return parsed
    try:
        result = run(handler)
    except PayloadError as exc:
        exc.event_id, exc.event_type = parsed.event_id, parsed.event_type
        raise
    except UNREADABLE as exc:
        raise unreadable(
            f"cannot read the {parsed.event_type[:64]!r} event ({type(exc).__name__})",
            parsed.event_id,
            parsed.event_type,
        ) from None
    if isinstance(result, str):
        parsed.ignored = result
    elif isinstance(result, Conversion):
        parsed.conversions = [result]
    else:
        parsed.conversions = list(result)
    return parsed


def event_envelope(
    body: bytes, processor: str, id_key: str, payload_key: str
) -> tuple[dict[str, Any], dict[str, Any], ParsedEvent]:
    """(event, payload, ParsedEvent) of an `{<id_key>, event_type, <payload_key>: {…}}` body
    (Paddle, Chargebee). Those processors have no test flag: `relay simulate` marks its
    signed samples with SIMULATED_KEY, which makes them test events."""
    event = load_json(body)
    event_id = text(event.get(id_key))
    event_type = text(event.get("event_type"))
    payload = event.get(payload_key)
    if not event_id or not event_type or not isinstance(payload, dict):
        raise unreadable(
            f"not a {processor} event: {id_key}, event_type or {payload_key} is missing",
            event_id,
            event_type,
        )
    parsed = ParsedEvent(
        event_id=event_id, event_type=event_type, livemode=event.get(SIMULATED_KEY) is not True
    )
    return event, payload, parsed


def unreadable(message: str, event_id: str | None, event_type: str | None) -> PayloadError:
    """A PayloadError that keeps what the envelope did say (a quarantined event is then
    stored under the processor's own id)."""
    error = PayloadError(message)
    error.event_id, error.event_type = event_id, event_type
    return error


def amount(value: Any, currency: str, name: str, required: bool = False) -> Decimal | None:
    """Minor units → Decimal (money.from_minor); None when absent, unless `required`."""
    if value is None:
        if required:
            raise PayloadError(f"{name} is missing")
        return None
    return money.from_minor(value, currency)


def optional_currency(value: Any) -> str | None:
    """A validated currency code, or None when the object has none (subscriptions)."""
    return money.currency_code(value) if value else None


def pick_refs(obj: Mapping[str, Any], *keys: str, **renamed: str) -> dict[str, str]:
    """obj's non-empty values as strings: each of `keys` under its own name, and each
    `name=key` of `renamed` under `name`."""
    pairs = [(key, key) for key in keys] + list(renamed.items())
    return {name: str(obj[key]) for name, key in pairs if obj.get(key) not in (None, "")}


def load_json(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise NotJSONObject("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise NotJSONObject("body is not a JSON object")
    return data


def dig(data: Any, *path: str) -> Any:
    """data[path[0]][path[1]]…, or None where any step is missing or not an object."""
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def text(value: Any) -> str | None:
    """A non-empty string, or None."""
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def string_map(value: Any) -> dict[str, str]:
    """Processor metadata as str → str (nested objects kept as compact JSON)."""
    if not isinstance(value, dict):
        return {}
    out: dict[str, str] = {}
    for key, item in value.items():
        if item is None:
            continue
        out[str(key)] = item if isinstance(item, str) else orjson.dumps(item).decode()
    return out


def typed_key(object_type: str, object_id: str, native_prefix: str | None = None) -> str:
    """An order key that names its object type, so ids stay distinct across types.

    Ids that already carry the processor's type prefix (`txn_…`, `sub_…`) are kept
    as they are; plain ids (Lemon Squeezy's and Chargebee's sequential or site-chosen
    ids) become `"{object_type}-{id}"`: invoice 5 → "invoice-5".
    """
    if native_prefix and object_id.startswith(native_prefix):
        return object_id
    return f"{object_type}-{object_id}"


def iso_time(value: Any, name: str) -> datetime:
    """An ISO 8601 / RFC 3339 timestamp ('…Z' included) as an aware datetime (UTC if naive)."""
    if not isinstance(value, str) or not value.strip():
        raise PayloadError(f"{name} is missing")
    try:
        moment = datetime.fromisoformat(value.strip())
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        moment.astimezone(UTC)  # "9999-12-31T23:59:59-14:00" is past the last UTC datetime
    except (ValueError, OverflowError):
        raise PayloadError(f"{name} is not an ISO 8601 timestamp in range") from None
    return moment


def unix_time(value: Any, name: str) -> datetime:
    """Unix seconds (an integer) as an aware UTC datetime; out of range is a PayloadError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{name} is not a Unix timestamp")
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, ValueError, OSError):
        raise PayloadError(f"{name} is not a Unix timestamp in range") from None


def _registry() -> dict[str, Any]:
    from relay.sources.chargebee import ChargebeeSource
    from relay.sources.lemonsqueezy import LemonSqueezySource
    from relay.sources.paddle import PaddleSource
    from relay.sources.stripe import StripeSource

    return {
        "stripe": StripeSource,
        "lemonsqueezy": LemonSqueezySource,
        "paddle": PaddleSource,
        "chargebee": ChargebeeSource,
    }


def build_sources(settings: Any) -> dict[str, Source]:
    """The enabled sources, by path name (`POST /webhooks/<name>`)."""
    return {
        name: cls(getattr(settings, name))
        for name, cls in _registry().items()
        if getattr(settings, name).enabled
    }


def source_for(settings: Any, name: str) -> Source:
    """One source's parser, whether or not its webhook secrets are set: backfill and
    reconcile read the processor's API with its API key, and parse what they fetch with
    the same code as the webhook path."""
    return _registry()[name](getattr(settings, name))
