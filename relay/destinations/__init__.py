"""Destinations: one module per conversion API, behind one small interface.

A destination is pure: `build(conversion, now)` returns the `httpx.Request` to
send, or a `Skip` saying why this conversion cannot go there (it is then never
sent); `classify(response)` turns the answer into an `Outcome`. Only the worker
does network I/O. Adding a destination is one module, one registry line, one
settings section and one stand-in server in the tests.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import httpx

from relay.conversion import Conversion
from relay.retry import parse_retry_after
from relay.settings import DestinationSettings

USER_AGENT = "relay/0.1 (+conversion relay)"

DELIVERED: Literal["delivered"] = "delivered"
RETRY: Literal["retry"] = "retry"
FAILED: Literal["failed"] = "failed"


@dataclass(frozen=True, slots=True)
class Skip:
    """This conversion cannot go to this destination; never sent."""

    reason: str


@dataclass(frozen=True, slots=True)
class Defer:
    """Not now, and no attempt spent: try again in `seconds` (a refund waiting for its
    purchase to be confirmed by the destination first)."""

    seconds: float
    reason: str


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Literal["delivered", "retry", "failed"]
    detail: str = ""
    retry_after: float | None = None  # seconds, from the destination
    # The endpoint is gone (Standard Webhooks 410): the worker disables the destination
    # and this delivery waits with the others, instead of failing alone.
    gone: bool = False
    # Accepted for processing only (impact.com's QueuedUri): (the submission to follow,
    # what was submitted: conversion | modification | reversal).
    follow_up: tuple[str, str] | None = None


class Destination:
    """Base class: settings, kinds filter and the default response classifier."""

    name: ClassVar[str]
    # Whether a request may be sent again after an attempt whose outcome is unknown
    # (timeout after sending, crash mid-request): true when the destination
    # deduplicates on a key we send.
    resend_ambiguous: ClassVar[bool] = True
    # Destinations with a bulk endpoint set this above 1 and implement
    # `build_batch`: the worker then sends up to `max_batch` due deliveries in
    # one request and settles each of them from the one response.
    max_batch: ClassVar[int] = 1
    # The oldest conversion the API takes (Simmer: 7 days), if it has such a window:
    # `relay backfill --destination` plans nothing older and defaults `--since` to it.
    max_age: ClassVar[timedelta | None] = None

    def __init__(self, settings: DestinationSettings) -> None:
        self.settings = settings

    def accepts(self, conversion: Conversion) -> bool:
        return conversion.kind in self.settings.kinds

    def build(self, conversion: Conversion, now: datetime) -> httpx.Request | Skip:
        raise NotImplementedError

    def build_batch(self, conversions: Sequence[Conversion], now: datetime) -> httpx.Request:
        """One request for several conversions that `build` accepted (2..max_batch)."""
        raise NotImplementedError

    def classify(self, response: httpx.Response) -> Outcome:
        return classify(response)

    def fingerprint(self) -> str | None:
        """A hash of the endpoint URL: a destination disabled by its endpoint (410) is
        enabled again when the worker starts with another URL. None: no URL setting."""
        url = getattr(self.settings, "url", None)
        return hashlib.sha256(url.encode()).hexdigest()[:32] if isinstance(url, str) else None

    # A destination that answers "queued" (impact.com) and can be asked later how it went
    # sets `follows` and implements the two below; relay/followup.py does the looking.
    follows: ClassVar[bool] = False

    def following(self) -> bool:
        """Whether this destination's queued answers are followed now (its settings)."""
        return self.follows

    def submission_request(self, uri: str) -> httpx.Request:
        """The request that looks at a followed submission."""
        raise NotImplementedError

    def read_submission(self, response: httpx.Response, submitted: str) -> Look:
        """What the answer to `submission_request` says (`submitted`: conversion,
        modification or reversal)."""
        raise NotImplementedError

    def rate_limit(self, response: httpx.Response) -> tuple[int, int | None, float | None] | None:
        """(requests remaining, the limit, seconds until the reset) when the answer says:
        follow-ups spend what conversions leave."""
        return None

    # A destination that turns refunds into changes of the purchase it was sent (impact's
    # Actions API) sets `reverses`: the worker then calls `build_refund` with what the
    # ledger knows about that purchase (store.refund_target) instead of `build`.
    reverses: ClassVar[bool] = False

    def build_refund(
        self, refund: Conversion, target: Any, recorded_at: float, now: datetime
    ) -> httpx.Request | Skip | Defer:
        raise NotImplementedError


class Look:
    """What one look at a followed submission found (`read_submission`): `state` is
    following (no outcome yet), accepted, duplicate or rejected, or "wait" (rate
    limited: no look was made, try after `retry_after`)."""

    __slots__ = ("detail", "error_reason", "error_type", "retry_after", "state")

    def __init__(
        self,
        state: str,
        detail: str,
        error_type: str | None = None,
        error_reason: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.state = state
        self.detail = detail
        self.error_type = error_type
        self.error_reason = error_reason
        self.retry_after = retry_after


RETRYABLE_4XX = frozenset({408, 425, 429})


def classify(response: httpx.Response) -> Outcome:
    """2xx delivered; 408/425/429/5xx retry (with Retry-After); a redirect (never followed:
    the request carries credentials) and other statuses failed."""
    status = response.status_code
    if httpx.codes.is_success(status):
        return Outcome(DELIVERED, excerpt(response))
    if status in RETRYABLE_4XX or httpx.codes.is_server_error(status):
        return Outcome(RETRY, f"HTTP {status}: {excerpt(response)}", retry_after(response))
    if 300 <= status < 400:
        return Outcome(FAILED, redirected(response))
    return Outcome(FAILED, f"HTTP {status}: {excerpt(response)}")


def redirected(response: httpx.Response, *, path: bool = True) -> str:
    """What a 3xx said, for `relay deliveries`: where it points (no credentials, no query;
    without the path when the path itself may be a secret, as Converge's postback URL)."""
    target = redirect_target(response.headers.get("location", ""), path=path)
    return (
        f"HTTP {response.status_code}: redirected to {target or '(no Location)'}; relay does not"
        " follow redirects (the request carries credentials): set the destination's URL to"
        " the new address"
    )


def redirect_target(location: str, *, path: bool = True) -> str:
    location = location.strip()
    if not location:
        return ""
    try:
        url = httpx.URL(location)
    except (httpx.InvalidURL, TypeError, ValueError):
        return ""
    if not url.host:  # relative: only the path is known
        return redact(url.path)[:200] if path else ""
    netloc = url.netloc.decode("ascii", "replace")  # host[:port], without user:password
    return redact(f"{url.scheme}://{netloc}{url.path if path else ''}")[:200]


EMAIL = re.compile(r"[^\s\"'<>@,;:]+@[^\s\"'<>@,;:]+\.[A-Za-z]{2,}")


# Secrets some APIs take in the query string (GA4's api_secret) or body (Meta's token).
SECRET_PARAM = re.compile(r"((?:api_secret|access_token)=)[^&\s\"']+")


def redact(value: str) -> str:
    """Blank out anything that looks like an email address or a secret URL parameter."""
    return SECRET_PARAM.sub(r"\1********", EMAIL.sub("[email]", value))


def excerpt(response: httpx.Response, limit: int = 300) -> str:
    try:
        body = response.text
    except Exception:  # undecodable body
        body = ""
    body = " ".join(body.split())
    return redact(body[:limit])


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After as seconds (delta-seconds or HTTP-date, capped); None when absent or
    unreadable (see relay.retry.parse_retry_after)."""
    return parse_retry_after(response.headers.get("retry-after"))


def path_segment(value: object) -> str:
    """`value` as one URL path segment: every reserved character percent-encoded, and
    "." / ".." encoded too (httpx would otherwise resolve them), so an id from a payload
    can never reach another path, query or host. Use it for every id put into a URL."""
    segment = quote(str(value), safe="")
    if segment in (".", ".."):
        segment = segment.replace(".", "%2E")
    return segment


def iso_utc(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z, second precision: accepted by every destination here."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_destinations(settings: Any) -> dict[str, Destination]:
    """The enabled destinations, by name."""
    from relay.destinations.converge import Converge
    from relay.destinations.ga4 import GA4
    from relay.destinations.impact import Impact
    from relay.destinations.meta import Meta
    from relay.destinations.pagent import Pagent
    from relay.destinations.simmer import Simmer
    from relay.destinations.topmail import Topmail
    from relay.destinations.webhook import Webhook

    registry: dict[str, type[Destination]] = {
        "simmer": Simmer,
        "impact": Impact,
        "pagent": Pagent,
        "topmail": Topmail,
        "converge": Converge,
        "webhook": Webhook,
        "meta": Meta,
        "ga4": GA4,
    }
    return {
        name: cls(getattr(settings, name))
        for name, cls in registry.items()
        if getattr(settings, name).enabled
    }
