"""Processor API clients: one module per processor, over one small HTTP client.

Used by `relay backfill`, the worker's reconcile (relay/reconcile.py), Stripe thin events
and enrichment (relay/enrich.py). Each processor module (stripe.py, paddle.py,
lemonsqueezy.py, chargebee.py) knows its API's auth, pagination and filters, and turns
what the API lists into `Found` items: the body the processor's webhook would have
carried, when it happened, and the API's id for it. `backfill.py` feeds those bodies to
`Intake.accept`, exactly the path a verified webhook takes.

The shared `Client` does what is the same everywhere:

- one `httpx.AsyncClient` per client (timeouts, no redirects: an API key is never sent to
  a host the user did not configure; pagination links are followed on the configured base);
- a client-side pace (`requests_per_second`) under the processor's documented rate limit;
- retries with tenacity on what may pass — transport errors, timeouts, 408/409/425/429 and
  5xx — waiting the API's `Retry-After` when it sends one (`retry_after_seconds`: seconds or
  an HTTP date, parsed defensively, capped), exponential backoff with jitter otherwise;
- every failure becomes a `ProcessorAPIError` whose message says what to fix: a refused
  key names its variable (RELAY_STRIPE__API_KEY…), other errors carry the API's own error
  code and message (secrets redacted, one line), and a page relay cannot read is an error,
  never a crash.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from relay.errors import ProcessorAPIError
from relay.retry import parse_retry_after

TIMEOUT_SECONDS = 20.0  # one request
RETRIES = 4  # after the first try, for what may pass
RETRY_AFTER_MAX_SECONDS = 120.0  # a Retry-After longer than this is clamped
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429})  # and every 5xx
Params = Mapping[str, Any] | Sequence[tuple[str, Any]]


@dataclass(slots=True)
class Found:
    """One event fetched from a processor API, as its webhook would have carried it."""

    body: bytes
    at: float  # when it happened, epoch seconds (for the reconcile high-water mark)
    ref: str  # the API's id for it (event id, "orders/123"), for messages


def retry_after_seconds(
    value: str | None, now: float | None = None, cap: float = RETRY_AFTER_MAX_SECONDS
) -> float | None:
    """A `Retry-After` header as seconds to wait, or None when absent or unreadable.

    RFC 9110 allows delay-seconds (`120`) or an HTTP date (`Wed, 21 Oct 2026 07:28:00 GMT`).
    Decimals are tolerated, a date in the past or a negative value means 0, and anything
    larger than `cap` is clamped, so a bogus header can neither crash nor park a run."""
    return parse_retry_after(value, now=now, cap=cap)


def one_line(text: Any, limit: int = 200) -> str:
    """An API's error text fit for a message or a log line: one line, bounded."""
    return " ".join(str(text).split())[:limit]


def iso_seconds(value: Any) -> float | None:
    """An RFC 3339 / ISO 8601 string ('…Z' included) as epoch seconds, or None."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.timestamp()
    except (OverflowError, ValueError):
        return None


def stamp(seconds: float) -> str:
    """Epoch seconds as an ISO 8601 UTC time, for messages."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


class _Pace:
    """At most `rate` request starts per second (None: no pacing)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = time.monotonic()
            if self._next > now:
                await asyncio.sleep(self._next - now)
            self._next = max(now, self._next) + self.interval


class Client:
    """An HTTP client for one processor API. Subclasses set the class attributes and
    `headers()`, and may refine `describe_error()`."""

    processor = "API"  # the processor's name in messages
    key_variable = "RELAY_…__API_KEY"  # what to fix when the key is refused
    requests_per_second: float | None = 10.0
    secret_patterns: tuple[re.Pattern[str], ...] = ()  # API texts that may echo a key

    def __init__(
        self,
        base_url: str,
        secret: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = TIMEOUT_SECONDS,
        retries: int = RETRIES,
        pace: bool = True,
    ) -> None:
        self.base = base_url.rstrip("/")
        self._secret = secret
        self.retries = retries
        self._pace = _Pace(self.requests_per_second if pace else None)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
            headers=self.headers(),
        )

    # -------------------------------------------------------------- for subclasses

    def headers(self) -> dict[str, str]:
        raise NotImplementedError

    def describe_error(self, body: Any) -> tuple[str | None, str | None]:
        """(error code, error message) from an error body; None where the API gave none."""
        return None, None

    def auth_hint(self, status: int) -> str:
        return f"the API key was refused; check {self.key_variable}"

    # -------------------------------------------------------------- life cycle

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # -------------------------------------------------------------- requests

    def relative(self, link: str) -> str:
        """A pagination link (absolute or not) as a path + query on the configured base:
        the key only ever goes to the host the user configured."""
        parts = urlsplit(link)
        path = parts.path or "/"
        base_path = urlsplit(self.base).path.rstrip("/")
        if base_path and path.startswith(base_path + "/"):
            path = path[len(base_path) :]
        return path + (f"?{parts.query}" if parts.query else "")

    async def get(
        self, path: str, params: Params | None = None, *, retries: int | None = None
    ) -> Any:
        """GET `path` on the base URL and return its JSON; retried on what may pass.

        Raises ProcessorAPIError (transient=True when retries ran out on something that
        may pass later)."""
        attempts = (self.retries if retries is None else retries) + 1
        backoff = wait_exponential_jitter(
            multiplier=BACKOFF_BASE_SECONDS, max=BACKOFF_MAX_SECONDS, jitter=BACKOFF_BASE_SECONDS
        )

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, ProcessorAPIError) and exc.retry_after is not None:
                # waited here, in place: at most RETRY_AFTER_MAX_SECONDS (the error keeps the
                # API's own figure, for the worker to defer a delivery that long)
                return min(exc.retry_after, RETRY_AFTER_MAX_SECONDS)
            return float(backoff(state))

        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=wait,
            retry=retry_if_exception(
                lambda exc: isinstance(exc, ProcessorAPIError) and exc.transient
            ),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._get_once(path, params)
        raise AssertionError("unreachable")  # pragma: no cover - reraise=True

    async def _get_once(self, path: str, params: Params | None) -> Any:
        what = f"{self.processor} GET {path.split('?', 1)[0]}"
        await self._pace.wait()
        try:
            response = await self._http.get(self.base + path, params=params)  # type: ignore[arg-type]
        except httpx.TimeoutException:
            raise ProcessorAPIError(f"{what} timed out", transient=True) from None
        except httpx.TransportError as exc:
            raise ProcessorAPIError(
                f"{what} failed ({type(exc).__name__}): is {self._host()} reachable?",
                transient=True,
            ) from None
        status = response.status_code
        if status == 200:
            try:
                return orjson.loads(response.content)
            except orjson.JSONDecodeError:
                raise ProcessorAPIError(
                    f"{what} answered 200 with a body that is not JSON", status=200
                ) from None
        transient = status in TRANSIENT_STATUSES or status >= 500
        code, message = self._error_of(response)
        detail = ": ".join(p for p in (code, message) if p)
        text = f"{what} answered {status}" + (f" ({detail})" if detail else "")
        if status in (401, 403):
            text += f": {self.auth_hint(status)}"
        elif status == 429:
            text += ": rate limited"
        raise ProcessorAPIError(
            text,
            status=status,
            code=code,
            transient=transient,
            retry_after=parse_retry_after(response.headers.get("retry-after"))
            if transient
            else None,
        )

    def _error_of(self, response: httpx.Response) -> tuple[str | None, str | None]:
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return None, None
        try:
            code, message = self.describe_error(body)
        except (AttributeError, LookupError, TypeError, ValueError):
            return None, None
        return (
            self.redact(one_line(code, 64)) if code else None,
            self.redact(one_line(message)) if message else None,
        )

    def redact(self, text: str) -> str:
        if self._secret and len(self._secret) >= 4:
            text = text.replace(self._secret, "********")
        for pattern in self.secret_patterns:
            text = pattern.sub("********", text)
        return text

    def _host(self) -> str:
        return urlsplit(self.base).netloc or self.base

    def malformed(self, path: str, why: str) -> ProcessorAPIError:
        """A page relay cannot read: an error that stops the run (nothing after it is
        recorded; what came before stays recorded, and a rerun dedupes)."""
        return ProcessorAPIError(
            f"{self.processor} GET {path.split('?', 1)[0]} answered a malformed page: {why}"
        )


class Processor(Client):
    """A client that can list what happened in a period, for backfill and reconcile."""

    source = ""  # the relay source name ("stripe")
    history_seconds: float | None = None  # how far back the API keeps events, when it says
    ascending = False  # True when `history` yields oldest first (progressive checkpoints)
    notes: tuple[str, ...] = ()  # what a user should know about what the API returns

    def history(self, since: float, until: float) -> AsyncIterator[Found]:
        raise NotImplementedError


def open_processor(
    source: str, settings: Any, transport: httpx.AsyncBaseTransport | None = None
) -> Processor:
    """The API client for `source` from its settings; ConfigError naming what is missing."""
    from relay.errors import ConfigError
    from relay.settings import env_name

    section = getattr(settings, source, None)
    if source not in PROCESSORS or section is None:
        raise ConfigError(f"unknown source {source[:40]!r}: one of {', '.join(sorted(PROCESSORS))}")
    missing = section.api_missing()
    if missing:
        raise ConfigError(
            f"{env_name(source, missing[0])} is not set: relay reads {source}'s API with it"
        )
    module = __import__(f"relay.processors.{PROCESSORS[source]}", fromlist=["build"])
    return module.build(section, transport)


PROCESSORS = {
    "stripe": "stripe",
    "paddle": "paddle",
    "lemonsqueezy": "lemonsqueezy",
    "chargebee": "chargebee",
}
