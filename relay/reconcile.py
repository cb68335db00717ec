"""Reconcile: the worker process backfills by itself, so a missed webhook comes back without
anyone noticing.

For every source with `RELAY_<SOURCE>__RECONCILE_INTERVAL_SECONDS` > 0, `relay serve` and
`relay worker` run, every interval:

    take the source's lease (store.reconcile_lease) ── held elsewhere? skip this turn
      │
      ▼
    window = [mark − overlap, now − delay]      (no mark yet: the last interval)
      │
      ▼
    backfill.run(window) ── the same path as `relay backfill` and the webhook
      │                       ascending APIs (Chargebee) move the mark forward as they go
      ▼
    success: mark = window end      failure: the error is kept, the mark stays at the last
                                    good point, and the next run starts from there

The lease row (reconcile_state, one upsert) lets only one process reconcile a source at a
time, on SQLite and PostgreSQL alike; it is renewed while a run lasts and runs out by
itself if its holder dies. The delay leaves webhooks still being retried their chance to
arrive first (they carry more than the API: Lemon Squeezy's custom_data, the endpoint's
API version), the overlap catches events an API lists late. The processor's pace and
`Retry-After` are respected by the API client (relay/processors/). Each run is one log
line; the state is on `/metrics` (relay_reconcile_*), read from the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from relay import backfill
from relay.destinations import Destination
from relay.errors import ConfigError, ProcessorAPIError, StoreError
from relay.intake import Intake
from relay.processors import Processor, open_processor, stamp
from relay.settings import SOURCE_FIELDS, Settings
from relay.sources import source_for
from relay.store import Store

log = logging.getLogger("relay.reconcile")

LEASE_SECONDS = 120.0  # a run's lease; renewed every LEASE_SECONDS / 5 while it lasts
MIN_START_MARGIN = 60.0  # stay this far inside an API's history limit (Stripe: 30 days)


def reconciled_sources(settings: Settings) -> list[str]:
    return [n for n in SOURCE_FIELDS if getattr(settings, n).reconcile_interval_seconds > 0]


class Reconciler:
    """One task per reconciled source; `run()` until `stop()`."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        destinations: Mapping[str, Destination],
        *,
        wake: Callable[[], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        owner: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sources = reconciled_sources(settings)
        self.intake = Intake(
            settings, store, {n: source_for(settings, n) for n in self.sources}, destinations
        )
        self.wake = wake
        self.transport = transport
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stopping = asyncio.Event()
        for name in self.sources:  # fail at start, not at the first run, on missing keys
            open_processor_settings_check(settings, name)

    @property
    def enabled(self) -> bool:
        return bool(self.sources)

    async def run(self) -> None:
        if not self.sources:
            return
        log.info(
            "reconcile: %s",
            ", ".join(
                f"{n} every {getattr(self.settings, n).reconcile_interval_seconds:g} s"
                for n in self.sources
            ),
        )
        await asyncio.gather(*(self._loop(name) for name in self.sources))

    async def stop(self) -> None:
        self._stopping.set()

    async def _loop(self, source: str) -> None:
        interval = getattr(self.settings, source).reconcile_interval_seconds
        processor = open_processor(source, self.settings, self.transport)
        try:
            while not self._stopping.is_set():
                run = asyncio.create_task(self.run_once(source, processor))
                stop = asyncio.create_task(self._stopping.wait())
                await asyncio.wait({run, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not run.done():  # stopping: the run is cut where it is (each event is
                    run.cancel()  # its own record; the lease runs out, the mark stays)
                stop.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await run
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), interval)
        finally:
            await processor.aclose()

    async def run_once(self, source: str, processor: Processor) -> str:
        """One reconcile of `source`: 'ok', 'failed', 'busy' (another process holds the
        lease) or 'idle' (nothing to read yet)."""
        cfg = getattr(self.settings, source)
        now = time.time()
        try:
            state = await self.store.reconcile_lease(source, self.owner, now, now + LEASE_SECONDS)
        except StoreError as exc:
            log.warning("reconcile source=%s skipped: store unavailable (%s)", source, exc)
            return "failed"
        if state is None:
            log.debug("reconcile source=%s: another process is reconciling it", source)
            return "busy"
        end = now - cfg.reconcile_delay_seconds
        start = state.mark if state.mark is not None else end - cfg.reconcile_interval_seconds
        start -= cfg.reconcile_overlap_seconds
        if processor.history_seconds is not None:
            start = max(start, now - processor.history_seconds + MIN_START_MARGIN)
        if start >= end:
            await self._done(source, now, None, None)
            return "idle"
        report = backfill.Report(source, start, end)
        lost = asyncio.Event()

        async def checkpoint(at: float) -> None:
            if not await self.store.reconcile_progress(
                source, self.owner, at, time.time() + LEASE_SECONDS
            ):
                lost.set()

        heartbeat = asyncio.create_task(self._heartbeat(source, lost))
        started = time.monotonic()
        error: str | None = None
        work = asyncio.create_task(
            backfill.run(self.intake, processor, start, end, checkpoint=checkpoint, report=report)
        )
        watch = asyncio.create_task(lost.wait())
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():  # another process took the source over: stop here
                work.cancel()
            await work
        except asyncio.CancelledError:
            if not lost.is_set():  # relay is stopping: hand the lease over at once
                with contextlib.suppress(StoreError):
                    await asyncio.shield(
                        self.store.reconcile_progress(source, self.owner, None, time.time())
                    )
                raise
            error = "the lease was lost to another process"
        except ProcessorAPIError as exc:
            error = str(exc)
            if processor.ascending and report.last_at is not None and not report.failed_event:
                with contextlib.suppress(StoreError):  # what was recorded stays read
                    await checkpoint(report.last_at)
        except StoreError as exc:
            error = f"store: {exc}"
        except Exception as exc:  # never let one source's surprise stop the worker
            log.exception("reconcile source=%s: unexpected error", source)
            error = f"unexpected error ({type(exc).__name__})"
        finally:
            for task in (heartbeat, watch, work):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await heartbeat
        took = time.monotonic() - started
        if report.new and self.wake is not None:
            self.wake()
        if error is None:
            await self._done(source, time.time(), end, None)
            log.info(
                "reconcile source=%s window=%s..%s events=%d new=%d already=%d ignored=%d "
                "quarantined=%d unreadable=%d took=%.1fs",
                source,
                stamp(start),
                stamp(end),
                report.events,
                report.new,
                report.duplicates,
                report.ignored,
                report.quarantined,
                report.unreadable,
                took,
            )
            return "ok"
        await self._done(source, time.time(), None, error)
        resume = await self._mark(source)
        log.warning(
            "reconcile source=%s failed after %d events (new=%d): %s; the next run resumes from %s",
            source,
            report.events,
            report.new,
            error,
            stamp(resume - cfg.reconcile_overlap_seconds) if resume is not None else stamp(start),
        )
        return "failed"

    async def _heartbeat(self, source: str, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 5)
            try:
                if not await self.store.reconcile_progress(
                    source, self.owner, None, time.time() + LEASE_SECONDS
                ):
                    lost.set()
                    log.warning("reconcile source=%s: lease lost to another process", source)
            except StoreError as exc:
                log.warning("reconcile source=%s: cannot renew the lease (%s)", source, exc)

    async def _done(self, source: str, now: float, mark: float | None, error: str | None) -> None:
        try:
            await self.store.reconcile_done(source, self.owner, now, mark, error)
        except StoreError as exc:  # the lease runs out by itself; the mark stays
            log.warning("reconcile source=%s: cannot record the outcome (%s)", source, exc)

    async def _mark(self, source: str) -> float | None:
        with contextlib.suppress(StoreError):
            for state in await self.store.reconcile_states():
                if state.source == source:
                    return state.mark
        return None


def open_processor_settings_check(settings: Any, source: str) -> None:
    """ConfigError unless `source`'s API client can be built (its key is set)."""
    section = getattr(settings, source)
    if section.api_missing():
        from relay.settings import env_name

        raise ConfigError(
            f"{env_name(source, section.api_missing()[0])} is required when "
            f"{env_name(source, 'reconcile_interval_seconds')} is set"
        )
