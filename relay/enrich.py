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
  and `GET /v1/promotion_codes/{id}` fill them in. That data is optional: any
  failure is logged and cached briefly, and the conversion goes out without it.

Both go through the processor API clients of relay/processors/ (auth, base URL,
error texts, Retry-After parsing shared with backfill), with a 10 s timeout and no
retries of their own: the worker's retry schedule is the retry.
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
from relay.errors import EnrichmentUnavailable, ProcessorAPIError
from relay.logs import short
from relay.processors.paddle import PaddleAPI
from relay.processors.stripe import StripeAPI
from relay.settings import Settings

log = logging.getLogger("relay.enrich")

TTL_SECONDS = 3600.0
FAILURE_TTL_SECONDS = 30.0
TIMEOUT_SECONDS = 10.0  # each Paddle request; each Stripe request
MAX_CACHE = 10_000
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
        self._paddle_api: PaddleAPI | None = None
        self._stripe_api: StripeAPI | None = None
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
        for client in (self._paddle_api, self._stripe_api):
            if client is not None:
                await client.aclose()
        self._paddle_api = self._stripe_api = None

    # ------------------------------------------------------------ Paddle

    def _paddle_client(self) -> PaddleAPI:
        if self._paddle_api is None:
            self._paddle_api = PaddleAPI(
                self.paddle_key or "",
                self.paddle_base,
                transport=self._transport,
                timeout=TIMEOUT_SECONDS,
                retries=0,
                pace=False,
            )
        return self._paddle_api

    async def _paddle(self, conversion: Conversion) -> Conversion:
        customer_id = conversion.customer.id
        if conversion.customer.email or not customer_id:
            return conversion

        async def load() -> dict[str, Any] | None:
            try:
                return await self._paddle_client().customer(customer_id)
            except ProcessorAPIError as exc:
                if exc.transient:  # may pass: retry the delivery rather than lose the email
                    raise EnrichmentUnavailable(str(exc), retry_after=exc.retry_after) from None
                status, code = exc.status, exc.code or "no error code"
            if status is None:
                why = "answered 200 without a customer object"
            elif status in (401, 403):
                why = (
                    f"answered {status} ({code}): the API key was refused; "
                    "check RELAY_PADDLE__API_KEY"
                )
            elif status == 404:
                why = f"answered 404 ({code}): customer not found"
            else:
                why = f"answered {status} ({code})"
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

    def _stripe_client(self) -> StripeAPI:
        if self._stripe_api is None:
            self._stripe_api = StripeAPI(
                self.stripe_key or "",
                self.stripe_base,
                transport=self._transport,
                timeout=TIMEOUT_SECONDS,
                retries=0,
                pace=False,
            )
        return self._stripe_api

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
        """Run an optional Stripe look-up; a failure is logged and gives None."""
        try:
            return await fetch(*args)
        except Exception as exc:
            _degraded(conversion, exc)
            return None

    async def _line_items(self, session_id: str, currency: str | None) -> tuple[Item, ...]:
        from relay import money

        items = []
        for row in await self._stripe_client().line_items(session_id):
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

    async def _promotion_code(self, promo_id: str) -> str | None:
        promo = await self._stripe_client().promotion_code(promo_id)
        code = promo.get("code")
        return code if isinstance(code, str) and code else None


def _degraded(conversion: Conversion, exc: Exception) -> None:
    log.warning(
        "enrich source=%s order=%s failed (%s); delivering without it",
        conversion.source,
        short(conversion.order_key),
        _describe(exc),
    )


def _describe(exc: Exception) -> str:
    """The error class and a short message: never the key, never customer data."""
    name = type(exc).__name__
    if isinstance(exc, ProcessorAPIError):
        return str(exc)[:200]
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
