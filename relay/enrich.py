"""Enrichment: processor API look-ups done in the worker, never on the webhook path.

The worker calls `enricher(conversion, destination)` before it builds each
delivery. Look-ups are cached in memory (per process, with a TTL), so one
conversion fanned out to several destinations costs one API call.

- Paddle (`RELAY_PADDLE__API_KEY`): Paddle webhooks carry only `customer_id`;
  `GET {api_base}/customers/{id}` (Bearer key) supplies the email and name.
  Destinations that need an email skip a conversion without one for good, so a
  look-up failure that may pass (transport error, timeout, 429, 5xx) raises
  `EnrichmentUnavailable` and is *not* cached: the worker retries the delivery
  later. A definitive answer (404 customer not found, 401/403 key rejected,
  another 4xx) is logged (never the key or the customer's data), cached
  briefly, and the conversion goes out without the email.
- Stripe (`RELAY_STRIPE__API_KEY`): Checkout webhooks carry no line items and
  only the promotion-code *id*; `GET /v1/checkout/sessions/{id}/line_items`
  and `GET /v1/promotion_codes/{id}` (through the `stripe` package, with a
  10 s timeout and no SDK retries) fill them in. That data is optional: any
  failure is logged and cached briefly, and the conversion goes out without it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from relay.conversion import PURCHASE, Conversion, Item
from relay.destinations import path_segment
from relay.errors import EnrichmentUnavailable
from relay.logs import short
from relay.retry import parse_retry_after
from relay.settings import Settings

log = logging.getLogger("relay.enrich")

TTL_SECONDS = 3600.0
FAILURE_TTL_SECONDS = 30.0
TIMEOUT_SECONDS = 10.0  # each Paddle request; each Stripe request (the SDK default is 80 s)
STRIPE_MAX_NETWORK_RETRIES = 0  # the worker's own retry schedule is the retry
MAX_CACHE = 10_000
TRANSIENT_STATUSES = frozenset({408, 425, 429})  # and every 5xx
STRIPE_ID = re.compile(r"[A-Za-z0-9_]{1,255}")  # what Stripe's object ids are made of


class _Cache:
    """Values by key with a TTL: a None value (no data) is kept FAILURE_TTL_SECONDS,
    anything else TTL_SECONDS. An exception from `load` is never cached."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[float, Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, key: str, load: Callable[[], Awaitable[Any]]) -> Any:
        hit = self._items.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # one look-up per key even when deliveries run in parallel
            hit = self._items.get(key)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]
            try:
                value = await load()
            finally:
                self._locks.pop(key, None)
            if len(self._items) >= MAX_CACHE:
                self._items.clear()
            ttl = TTL_SECONDS if value is not None else FAILURE_TTL_SECONDS
            self._items[key] = (time.monotonic() + ttl, value)
            return value


class Enricher:
    """An async callable (conversion, destination name) -> conversion."""

    def __init__(
        self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        paddle, stripe_settings = settings.paddle, settings.stripe
        self.paddle_key = paddle.api_key.get_secret_value() if paddle.api_key else None
        self.paddle_base = paddle.api_base.rstrip("/")
        self.stripe_key = (
            stripe_settings.api_key.get_secret_value() if stripe_settings.api_key else None
        )
        self.stripe_base = stripe_settings.api_base.rstrip("/")
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._stripe: Any = None
        self._cache = _Cache()

    @property
    def enabled(self) -> bool:
        return bool(self.paddle_key or self.stripe_key)

    async def __call__(self, conversion: Conversion, destination: str) -> Conversion:
        """The conversion with the looked-up data added.

        Raises EnrichmentUnavailable when a Paddle customer look-up failed in a way
        that may pass: retry the delivery later rather than send it without an email.
        """
        if conversion.source == "paddle" and self.paddle_key:
            return await self._paddle(conversion)
        if conversion.source == "stripe" and self.stripe_key:
            try:
                return await self._stripe_checkout(conversion)
            except Exception as exc:  # optional data: deliver without it
                _degraded(conversion, exc)
        return conversion

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # ------------------------------------------------------------ Paddle

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(TIMEOUT_SECONDS),
                transport=self._transport,
                follow_redirects=False,
            )
        return self._http

    async def _paddle(self, conversion: Conversion) -> Conversion:
        customer_id = conversion.customer.id
        if conversion.customer.email or not customer_id:
            return conversion

        async def load() -> dict[str, Any] | None:
            try:
                response = await self._client().get(
                    f"{self.paddle_base}/customers/{path_segment(customer_id)}",
                    headers={
                        "Authorization": f"Bearer {self.paddle_key}",
                        "Accept": "application/json",
                    },
                )
            except httpx.TimeoutException:
                raise EnrichmentUnavailable("Paddle GET /customers timed out") from None
            except httpx.TransportError as exc:
                raise EnrichmentUnavailable(
                    f"Paddle GET /customers failed ({type(exc).__name__})"
                ) from None
            status = response.status_code
            if status in TRANSIENT_STATUSES or status >= 500:
                raise EnrichmentUnavailable(
                    f"Paddle GET /customers answered {status}",
                    retry_after=parse_retry_after(response.headers.get("retry-after")),
                )
            if status == 200:
                try:
                    data = response.json().get("data")
                except (ValueError, AttributeError):
                    data = None
                if isinstance(data, dict):
                    return data
                why = "answered 200 without a customer object"
            elif status in (401, 403):
                why = (
                    f"answered {status} ({_error_code(response)}): the API key was refused; "
                    "check RELAY_PADDLE__API_KEY"
                )
            elif status == 404:
                why = f"answered 404 ({_error_code(response)}): customer not found"
            else:
                why = f"answered {status} ({_error_code(response)})"
            log.warning(
                "enrich source=paddle order=%s customer=%s: GET /customers %s; "
                "delivering without the email",
                short(conversion.order_key),
                short(customer_id),
                why,
            )
            return None

        data = await self._cache.get(f"paddle:customer:{customer_id}", load)
        if not data:
            return conversion
        email = data.get("email") if isinstance(data.get("email"), str) else None
        name = data.get("name") if isinstance(data.get("name"), str) else None
        return conversion.replace(
            customer=dataclasses.replace(
                conversion.customer,
                email=email or None,
                name=conversion.customer.name or name or None,
            )
        )

    # ------------------------------------------------------------ Stripe

    def _stripe_client(self) -> Any:
        if self._stripe is None:
            import stripe

            self._stripe = stripe.StripeClient(
                self.stripe_key or "",
                base_addresses={"api": self.stripe_base},
                max_network_retries=STRIPE_MAX_NETWORK_RETRIES,
                http_client=stripe.new_default_http_client(timeout=TIMEOUT_SECONDS),
            )
        return self._stripe

    async def _stripe_checkout(self, conversion: Conversion) -> Conversion:
        if conversion.kind != PURCHASE or not conversion.order_key.startswith("cs_"):
            return conversion
        if not STRIPE_ID.fullmatch(conversion.order_key):
            return conversion  # not an id Stripe issues: never put it into an API path
        session_id = conversion.order_key
        changes: dict[str, Any] = {}
        if not conversion.items:
            items = await self._cache.get(
                f"stripe:line_items:{session_id}",
                lambda: self._optional(
                    conversion, self._line_items, session_id, conversion.currency
                ),
            )
            if items:
                changes["items"] = items
        promo_id = conversion.refs.get("promotion_code")
        if promo_id and not conversion.promo_code and STRIPE_ID.fullmatch(promo_id):
            code = await self._cache.get(
                f"stripe:promotion_code:{promo_id}",
                lambda: self._optional(conversion, self._promotion_code, promo_id),
            )
            if code:
                changes["promo_code"] = code
        return conversion.replace(**changes) if changes else conversion

    async def _optional(self, conversion: Conversion, fetch: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking Stripe look-up in a thread; a failure is logged and gives None."""
        try:
            return await asyncio.to_thread(fetch, *args)
        except Exception as exc:
            _degraded(conversion, exc)
            return None

    def _line_items(self, session_id: str, currency: str | None) -> tuple[Item, ...]:
        from relay import money

        client = self._stripe_client()
        page = client.v1.checkout.sessions.line_items.list(session_id, {"limit": 100})
        items = []
        for row in page.to_dict().get("data") or ():
            price = row.get("price") or {}
            product = price.get("product")
            quantity = row.get("quantity")
            quantity = quantity if isinstance(quantity, int) and quantity > 0 else 1
            unit = price.get("unit_amount")
            cur = currency or money.currency_code(row.get("currency"))
            items.append(
                Item(
                    quantity=quantity,
                    price=money.from_minor(unit, cur) if isinstance(unit, int) else None,
                    subtotal=money.from_minor(row["amount_subtotal"], cur)
                    if isinstance(row.get("amount_subtotal"), int)
                    else None,
                    sku=price.get("id") if isinstance(price.get("id"), str) else None,
                    name=row.get("description")
                    if isinstance(row.get("description"), str)
                    else None,
                    product_id=product if isinstance(product, str) else None,
                )
            )
        return tuple(items)

    def _promotion_code(self, promo_id: str) -> str | None:
        promo = self._stripe_client().v1.promotion_codes.retrieve(promo_id).to_dict()
        code = promo.get("code")
        return code if isinstance(code, str) and code else None


def _degraded(conversion: Conversion, exc: Exception) -> None:
    log.warning(
        "enrich source=%s order=%s failed (%s); delivering without it",
        conversion.source,
        short(conversion.order_key),
        _describe(exc),
    )


def _error_code(response: httpx.Response) -> str:
    """Paddle's `error.code` ("entity_not_found", "forbidden"…), or "no error code"."""
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "no error code"
    return str(code)[:64] if isinstance(code, str) else "no error code"


def _describe(exc: Exception) -> str:
    """The error class and a short message: never the key, never customer data."""
    name = type(exc).__name__
    if isinstance(exc, LookupError):
        return f"{name}: {exc}"[:200]
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    return name


def build_enricher(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> Enricher | None:
    """The enricher when an API key is configured for a source that needs one, else None."""
    enricher = Enricher(settings, transport)
    return enricher if enricher.enabled else None
