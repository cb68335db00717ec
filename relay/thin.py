"""Stripe thin events: the worker fetches the object a thin event names and records what
the snapshot event would have given.

A Stripe event destination can send thin events (`object: v2.core.event`, `v1.`-prefixed
types, a `related_object` reference and no snapshot; generally available for v1
resources with 2026-09-30.endive). The webhook path only verifies and stores one:

    POST /webhooks/stripe ── thin v1.checkout.session.completed ──▶ stored `fetching`
        (no RELAY_STRIPE__API_KEY: stored `quarantined`, the reason names the variable;
         `relay replay` once it is set makes it `fetching`)

and this task, in the worker process (`relay serve`, `relay worker`), then:

    GET related_object.url ──▶ the snapshot event it stands for (sources.stripe.snapshot_of)
        ──▶ the same parser ──▶ conversions recorded under the stored thin event
            (store.replay: deduped on order key, so a snapshot endpoint and a thin endpoint
             pointed at the same relay record one conversion)

`v1.customer.subscription.updated` also reads `changes` from `GET /v2/core/events/{id}`
(v1's previous_attributes), which decides whether an update is a start. The object is
fetched as it is now: where it moved on since the event (a session refunded since), the
conversion is the one relay records for that object anyway (same kind and order key).

A fetch that may pass (429, 5xx, timeout) is tried again later; a refused key, an object
Stripe does not have or a malformed answer quarantines the event with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import orjson

from relay.destinations import Destination
from relay.errors import PayloadError, ProcessorAPIError, StoreError
from relay.intake import Intake
from relay.processors.stripe import StripeAPI
from relay.settings import Settings
from relay.sources import source_for
from relay.sources.stripe import parse_thin, snapshot_of
from relay.store import FETCHING, QUARANTINED, Store, StoredEvent

log = logging.getLogger("relay.thin")

BATCH = 50  # fetching events read per round
RETRY_SECONDS = 30.0  # a fetch that may pass is tried again after this (or its Retry-After)
PREVIOUS_FROM_CHANGES = frozenset({"customer.subscription.updated"})


class ThinEvents:
    """Resolves stored `fetching` Stripe thin events; `run()` until `stop()`."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        destinations: Mapping[str, Destination],
        *,
        wake: Callable[[], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.intake = Intake(
            settings, store, {"stripe": source_for(settings, "stripe")}, destinations
        )
        self.wake_worker = wake
        self.transport = transport
        self.poll_seconds = settings.worker.poll_seconds
        self._kick = asyncio.Event()
        self._stopping = asyncio.Event()
        self._not_before: dict[int, float] = {}  # event row → when to try again

    @property
    def enabled(self) -> bool:
        stripe = self.settings.stripe
        return bool(stripe.api_key and stripe.api_key.get_secret_value())

    def wake(self) -> None:
        self._kick.set()

    async def stop(self) -> None:
        self._stopping.set()
        self._kick.set()

    async def run(self) -> None:
        if not self.enabled:
            return
        assert self.settings.stripe.api_key is not None
        api = StripeAPI(
            self.settings.stripe.api_key.get_secret_value(),
            self.settings.stripe.api_base,
            transport=self.transport,
            retries=1,
        )
        try:
            while not self._stopping.is_set():
                self._kick.clear()
                try:
                    await self.run_once(api)
                except StoreError as exc:
                    log.warning("thin events: store unavailable (%s)", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), self.poll_seconds)
        finally:
            await api.aclose()

    async def run_once(self, api: StripeAPI) -> int:
        """Resolve what is due; the number of events settled."""
        now = time.time()
        events = await self.store.events(
            statuses=[FETCHING], source="stripe", limit=BATCH, with_body=True, oldest_first=True
        )
        settled = 0
        for event in events:
            if self._stopping.is_set():
                break
            if self._not_before.get(event.id, 0.0) > now:
                continue
            settled += await self.resolve(api, event)
        return settled

    async def resolve(self, api: StripeAPI, event: StoredEvent) -> int:
        """Fetch the event's object and record what its snapshot gives: 1 when settled
        (accepted, ignored or quarantined), 0 when it is to be tried again or another
        worker settled it meanwhile (PostgreSQL: several workers read the same batch)."""
        now = time.time()
        if not await self._still_fetching(event):  # no second fetch, no second verdict
            return 0
        try:
            thin = orjson.loads(event.body or b"")
            fetch = parse_thin(thin).fetch
        except (orjson.JSONDecodeError, PayloadError, AttributeError, TypeError):
            fetch, thin = None, {}
        if fetch is None:
            return await self._settle(
                event,
                QUARANTINED,
                "thin event: its body no longer names an object to fetch",
                [],
                now,
            )
        what = f"{fetch.object_type} {fetch.object_id[:80]}"
        try:
            obj = await api.related_object(fetch.url)
            previous = None
            if fetch.snapshot_type in PREVIOUS_FROM_CHANGES:
                changes = (await api.v2_event(event.event_id)).get("changes")
                before = changes.get("before") if isinstance(changes, dict) else None
                previous = before if isinstance(before, dict) else None
        except ProcessorAPIError as exc:
            if exc.transient:
                wait = max(RETRY_SECONDS, exc.retry_after or 0.0)
                self._not_before[event.id] = now + wait
                log.warning(
                    "thin event=%s: fetching %s failed (%s); trying again in %.0f s",
                    event.event_id,
                    what,
                    exc,
                    wait,
                )
                return 0
            return await self._settle(
                event,
                QUARANTINED,
                f"thin event: fetching {what} failed: {exc}; relay replay it once fixed",
                [],
                now,
            )
        reading = self.intake.read("stripe", orjson.dumps(snapshot_of(thin, obj, previous)))
        return await self._settle(
            event, reading.status, reading.reason, reading.conversions, now, what
        )

    async def _still_fetching(self, event: StoredEvent) -> bool:
        """Whether the event still waits for its fetch. Another worker may have settled it
        since this one read its batch: its verdict stands (an accepted event is never
        turned quarantined by a later fetch that failed), and nothing is fetched twice."""
        rows = await self.store.events(ids=[event.id], limit=1)
        if rows and rows[0].status == FETCHING:
            return True
        self._not_before.pop(event.id, None)
        return False

    async def _settle(
        self,
        event: StoredEvent,
        status: str,
        reason: str | None,
        conversions: list[Any],
        now: float,
        what: str = "",
    ) -> int:
        if not await self._still_fetching(event):  # settled elsewhere while we fetched
            return 0
        recorded = await self.store.replay(
            event.id, status, reason, event.event_id, conversions, self.intake.plan, now
        )
        self._not_before.pop(event.id, None)
        log_line = log.warning if status == QUARANTINED else log.info
        log_line(
            "thin event=%s type=%s %s%s conversions=%s known=%s deliveries=%d%s",
            event.event_id,
            event.event_type,
            status,
            f" ({what})" if what else "",
            ",".join(f"{c.kind}:{c.order_key}" for c in recorded.conversions) or "-",
            ",".join(f"{c.kind}:{c.order_key}" for c in recorded.known) or "-",
            recorded.deliveries,
            f": {reason}" if reason and status != "accepted" else "",
        )
        if recorded.deliveries and self.wake_worker is not None:
            self.wake_worker()
        return 1
