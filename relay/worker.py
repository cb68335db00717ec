"""The delivery worker: claim due deliveries → build → send → classify → settle.

- Claims are leased: a worker that dies loses its claims when the lease ends,
  and the next claim of such a delivery is marked `recovered` (that attempt's
  fate is unknown).
- New work wakes the worker at once (`wake()`, called by the web app in the same
  process, or by the store's notifications); polling every `poll_seconds` is the
  safety net, never the hot path.
- A small fixed set of long-lived `httpx.AsyncClient`s per destination, used in
  turn (PERFORMANCE.md: one pool shared by many requests in flight slows down as
  concurrency grows; bench/delivery.py: 1 client with 32 in flight ~350/s, 8 ~1.1k/s).
- Client-side rate limits per destination; a delivery that would wait long is
  put back with a due time instead of holding a slot.
- Shutdown: stop claiming, let in-flight requests finish for the grace period,
  then return what is left to pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from relay.conversion import Conversion
from relay.destinations import DELIVERED, FAILED, RETRY, Destination, Outcome, Skip, redact
from relay.retry import RetryPolicy
from relay.settings import WorkerSettings
from relay.store import Attempt, Claim, Settlement, Store
from relay.store import DELIVERED as S_DELIVERED
from relay.store import FAILED as S_FAILED
from relay.store import PENDING as S_PENDING
from relay.store import SKIPPED as S_SKIPPED

log = logging.getLogger("relay.worker")

SHORT_RATE_WAIT = 2.0  # wait in place for a rate-limit slot up to this long
IN_FLIGHT_PER_CLIENT = 4  # a destination gets one client per this many concurrent requests…
MAX_CLIENTS = 8  # …up to this many

Enricher = Callable[[Conversion, str], Any]  # async (conversion, destination) -> Conversion


class Worker:
    def __init__(
        self,
        store: Store,
        destinations: Mapping[str, Destination],
        settings: WorkerSettings,
        *,
        metrics: Any = None,
        enrich: Enricher | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store = store
        self.destinations = dict(destinations)
        self.settings = settings
        self.metrics = metrics
        self.enrich = enrich
        self.policy = RetryPolicy(
            base=settings.retry_base_seconds,
            maximum=settings.retry_max_seconds,
            retry_after_max=settings.retry_after_max_seconds,
        )
        self._transport = transport
        self._clients: dict[str, list[httpx.AsyncClient]] = {}
        self._turn: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._inflight: dict[asyncio.Task[None], Claim] = {}
        self._slot_free = asyncio.Event()
        self._paused_until: dict[str, float] = {}

    # ------------------------------------------------------------ control

    def _client(self, name: str) -> httpx.AsyncClient:
        """The destination's clients in turn."""
        clients = self._clients[name]
        turn = self._turn.get(name, 0)
        self._turn[name] = turn + 1
        return clients[turn % len(clients)]

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        names = list(self.destinations)
        if not names:
            log.info("worker: no destination configured; nothing to deliver")
            await self._stopping.wait()
            return
        count = max(1, min(MAX_CLIENTS, self.settings.concurrency // IN_FLIGHT_PER_CLIENT))
        for name, dest in self.destinations.items():
            self._clients[name] = [
                httpx.AsyncClient(
                    timeout=httpx.Timeout(dest.settings.timeout_seconds),
                    follow_redirects=False,
                    transport=self._transport,
                    limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
                )
                for _ in range(count)
            ]
        await self.store.watch(self.wake)
        log.info("worker: delivering to %s", ", ".join(names))
        try:
            await self._loop(names)
        finally:
            await self._drain()
            for clients in self._clients.values():
                for client in clients:
                    await client.aclose()
            self._clients.clear()

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    # ------------------------------------------------------------ loop

    async def _loop(self, names: list[str]) -> None:
        s = self.settings
        while not self._stopping.is_set():
            free = s.concurrency - len(self._inflight)
            claimed = 0
            if free > 0:
                self._wake.clear()
                now = time.time()
                ready = [n for n in names if self._paused_until.get(n, 0) <= now]
                try:
                    claims = await self.store.claim(
                        ready, min(free, s.batch_size), s.lease_seconds, now
                    )
                except Exception as exc:
                    log.warning("worker: claim failed (%s); retrying", exc)
                    claims = []
                    await self._sleep(min(s.poll_seconds, 1.0))
                for group in self._groups(claims):
                    if len(group) == 1:
                        task = asyncio.create_task(self._deliver(group[0]))
                    else:
                        task = asyncio.create_task(self._deliver_batch(group))
                    self._inflight[task] = group[0]
                    task.add_done_callback(self._done)
                claimed = len(claims)
                if claimed == min(free, s.batch_size) and claimed:
                    continue  # more may be due right now
            if free <= claimed:  # every slot busy: wait for one to free up
                self._slot_free.clear()
                await self._wait_any(self._slot_free.wait(), timeout=s.poll_seconds)
                continue
            now = time.time()
            ready = [n for n in names if self._paused_until.get(n, 0) <= now]
            timeout = s.poll_seconds
            try:
                due = await self.store.next_due(ready) if ready else None
            except Exception:
                due = None
            if due is not None:
                timeout = min(timeout, due - now)
            paused = [t for t in self._paused_until.values() if t > now]
            if paused:
                timeout = min(timeout, min(paused) - now)
            if timeout > 0:
                await self._wait_any(self._wake.wait(), timeout=timeout)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        self._slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("worker: delivery task crashed: %r", task.exception())

    async def _wait_any(self, waiter: Any, timeout: float) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        wait = asyncio.ensure_future(waiter)
        try:
            await asyncio.wait({stop, wait}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (stop, wait):
                fut.cancel()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _drain(self) -> None:
        if not self._inflight:
            return
        grace = self.settings.shutdown_grace_seconds
        log.info("worker: waiting up to %.0f s for %d in-flight deliveries", grace, len(self._inflight))
        _, pending = await asyncio.wait(set(self._inflight), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)

    def _groups(self, claims: list[Claim]) -> list[list[Claim]]:
        """Claims of a batching destination (max_batch > 1) in chunks; others alone."""
        groups: list[list[Claim]] = []
        open_: dict[str, list[Claim]] = {}
        for claim in claims:
            size = self.destinations[claim.destination].max_batch
            if size <= 1:
                groups.append([claim])
                continue
            group = open_.get(claim.destination)
            if group is None or len(group) >= size:
                group = open_[claim.destination] = []
                groups.append(group)
            group.append(claim)
        return groups

    # ------------------------------------------------------------ batched delivery

    async def _deliver_batch(self, claims: list[Claim]) -> None:
        """Several deliveries of one batching destination in one request.

        Each claim goes through the same gates as `_deliver` (recovered and not
        resendable → ambiguous; Skip → skipped); the rest share one request,
        one rate slot and one response, and each is settled from it."""
        dest = self.destinations[claims[0].destination]
        started = time.time()
        ready: list[tuple[Claim, Conversion]] = []
        now = datetime.now(UTC)
        for claim in claims:
            tag = _tag(claim)
            if claim.recovered and not dest.resend_ambiguous:
                detail = "ambiguous: an earlier attempt was interrupted; not resent (no idempotency key)"
                await self._settle(claim, Settlement(S_FAILED, error=detail, attempt=Attempt(
                    started, 0.0, "ambiguous", None, detail)), tag)
                continue
            conv = claim.conversion
            if self.enrich is not None:
                conv = await self.enrich(conv, claim.destination)
            built = dest.build(conv, now)
            if isinstance(built, Skip):
                status = S_SKIPPED if claim.attempt <= 1 else S_FAILED
                await self._settle(claim, Settlement(status, error=built.reason, attempt=Attempt(
                    started, 0.0, "skipped", None, built.reason)), tag)
                continue
            ready.append((claim, conv))
        if not ready:
            return
        if len(ready) == 1:
            request = dest.build(ready[0][1], now)
            assert not isinstance(request, Skip)
        else:
            request = dest.build_batch([conv for _, conv in ready], now)
        per_minute = dest.settings.rate_limit_per_minute
        if per_minute:
            wait = await self._rate_slot(claims[0].destination, per_minute)
            if wait > 0:
                for claim, _ in ready:
                    await self._settle(claim, Settlement(
                        S_PENDING, next_attempt_at=time.time() + wait, error=None,
                        count_attempt=False), _tag(claim))
                return
        started = time.time()
        sending = True
        try:
            outcome, code, ambiguous = await self._send(claims[0].destination, dest, request)
            sending = False
            elapsed = (time.time() - started) * 1000
            for claim, _ in ready:
                detail = f"batch of {len(ready)}: {outcome.detail}" if len(ready) > 1 else outcome.detail
                await self._conclude(claim, dest, Outcome(outcome.kind, detail, outcome.retry_after),
                                     code, ambiguous, started, elapsed, _tag(claim))
        except asyncio.CancelledError:
            for claim, _ in ready:
                await self._hand_back(claim, dest, sending, started)
            raise

    async def _send(
        self, name: str, dest: Destination, request: httpx.Request
    ) -> tuple[Outcome, int | None, bool]:
        """Send one request: (outcome, status code, ambiguous)."""
        try:
            response = await self._client(name).send(request)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            return Outcome(RETRY, f"connect: {_err(exc)}"), None, False
        except httpx.TransportError as exc:  # sent, or partly sent: fate unknown
            return Outcome(RETRY, f"{_kind(exc)}: {_err(exc)}"), None, True
        await response.aread()
        return dest.classify(response), response.status_code, False

    async def _hand_back(self, claim: Claim, dest: Destination, sending: bool, started: float) -> None:
        """Shutdown: return the delivery. A request cut off mid-send is ambiguous."""
        detail = "interrupted by shutdown"
        if sending and not dest.resend_ambiguous:
            settlement = Settlement(S_FAILED, error="ambiguous: " + detail, attempt=Attempt(
                started, 0.0, "ambiguous", None, detail))
        else:
            settlement = Settlement(S_PENDING, next_attempt_at=time.time(), count_attempt=sending)
        with contextlib.suppress(Exception):
            await asyncio.shield(self.store.settle(claim, settlement, time.time()))

    # ------------------------------------------------------------ one delivery

    async def _deliver(self, claim: Claim) -> None:
        dest = self.destinations[claim.destination]
        conv = claim.conversion
        tag = f"destination={claim.destination} order={conv.order_key} attempt={claim.attempt}"
        started = time.time()
        sending = False
        try:
            if claim.recovered and not dest.resend_ambiguous:
                detail = "ambiguous: an earlier attempt was interrupted; not resent (no idempotency key)"
                await self._settle(claim, Settlement(S_FAILED, error=detail, attempt=Attempt(
                    started, 0.0, "ambiguous", None, detail)), tag)
                return
            if self.enrich is not None:
                try:
                    conv = await self.enrich(conv, claim.destination)
                except Exception as exc:  # never lose a delivery to a failed look-up
                    log.warning("enrich failed %s (%s); delivering without it", tag,
                                type(exc).__name__)
            built = dest.build(conv, datetime.now(UTC))
            if isinstance(built, Skip):
                status = S_SKIPPED if claim.attempt <= 1 else S_FAILED
                await self._settle(claim, Settlement(status, error=built.reason, attempt=Attempt(
                    started, 0.0, "skipped", None, built.reason)), tag)
                return
            per_minute = dest.settings.rate_limit_per_minute
            if per_minute:
                wait = await self._rate_slot(claim.destination, per_minute)
                if wait > 0:
                    # Stop claiming for this destination until a slot frees up.
                    self._pause(claim.destination, wait)
                    await self._settle(
                        claim,
                        Settlement(S_PENDING, next_attempt_at=time.time() + wait,
                                   error=None, count_attempt=False),
                        tag,
                    )
                    return
            started = time.time()
            sending = True
            try:
                response = await self._client(claim.destination).send(built)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                outcome, code, ambiguous = Outcome(RETRY, f"connect: {_err(exc)}"), None, False
            except httpx.TransportError as exc:  # sent, or partly sent: fate unknown
                outcome, code, ambiguous = Outcome(RETRY, f"{_kind(exc)}: {_err(exc)}"), None, True
            else:
                sending = False
                await response.aread()
                outcome, code, ambiguous = dest.classify(response), response.status_code, False
            sending = False
            elapsed = (time.time() - started) * 1000
            await self._conclude(claim, dest, outcome, code, ambiguous, started, elapsed, tag)
        except asyncio.CancelledError:
            # Shutdown: hand the delivery back. A request cut off mid-send is ambiguous.
            detail = "interrupted by shutdown"
            if sending and not dest.resend_ambiguous:
                settlement = Settlement(S_FAILED, error="ambiguous: " + detail, attempt=Attempt(
                    started, 0.0, "ambiguous", None, detail))
            else:
                settlement = Settlement(
                    S_PENDING, next_attempt_at=time.time(), count_attempt=sending
                )
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.settle(claim, settlement, time.time()))
            raise
        except Exception as exc:  # a bug or a store failure: hand it back for a later try
            log.exception("delivery error %s", tag)
            detail = f"internal error: {_err(exc)}"
            with contextlib.suppress(Exception):
                await self.store.settle(claim, Settlement(
                    S_PENDING, next_attempt_at=time.time() + self.settings.retry_base_seconds,
                    error=detail, count_attempt=not sending,
                    attempt=Attempt(started, 0.0, "error", None, detail)), time.time())

    async def _conclude(
        self,
        claim: Claim,
        dest: Destination,
        outcome: Outcome,
        code: int | None,
        ambiguous: bool,
        started: float,
        elapsed: float,
        tag: str,
    ) -> None:
        label = "ambiguous" if ambiguous else outcome.kind
        attempt = Attempt(started, elapsed, label, code, outcome.detail)
        if outcome.kind == DELIVERED:
            settlement = Settlement(S_DELIVERED, status_code=code, attempt=attempt)
            if self.metrics is not None:
                self.metrics.delivered(claim.destination, time.time() - claim.created_at)
        elif outcome.kind == RETRY and not (ambiguous and not dest.resend_ambiguous):
            if code == 429:
                self._pause(
                    claim.destination,
                    min(outcome.retry_after or 1.0, self.settings.retry_after_max_seconds),
                )
            delay = self.policy.next_delay(
                claim.attempt, dest.settings.max_attempts, outcome.retry_after
            )
            if delay is None:
                settlement = Settlement(
                    S_FAILED, status_code=code, attempt=attempt,
                    error=f"gave up after {claim.attempt} attempts: {outcome.detail}",
                )
            else:
                settlement = Settlement(
                    S_PENDING, next_attempt_at=time.time() + delay, status_code=code,
                    error=outcome.detail, attempt=attempt,
                )
        else:
            prefix = "ambiguous: " if ambiguous else ""
            settlement = Settlement(
                S_FAILED, status_code=code, error=prefix + outcome.detail, attempt=attempt
            )
        await self._settle(claim, settlement, tag, elapsed)

    async def _settle(
        self, claim: Claim, settlement: Settlement, tag: str, elapsed: float = 0.0
    ) -> None:
        ok = await self.store.settle(claim, settlement, time.time())
        if not ok:
            log.warning("delivery lease lost %s (another worker took it over)", tag)
            return
        if self.metrics is not None:
            self.metrics.settled(claim.destination, settlement.status if settlement.count_attempt else "deferred")
        if settlement.status == S_DELIVERED:
            log.info("delivered %s status=%s ms=%.1f", tag, settlement.status_code, elapsed)
        elif settlement.status == S_PENDING and settlement.count_attempt:
            log.warning(
                "retry %s in %.0f s: %s", tag,
                (settlement.next_attempt_at or 0) - time.time(), settlement.error,
            )
        elif settlement.status in (S_FAILED, S_SKIPPED):
            log.warning("%s %s: %s", settlement.status, tag, settlement.error)

    def _pause(self, destination: str, seconds: float) -> None:
        until = time.time() + seconds
        self._paused_until[destination] = max(self._paused_until.get(destination, 0.0), until)

    async def _rate_slot(self, destination: str, per_minute: int) -> float:
        """0 when a send slot is taken now; otherwise seconds until one frees up."""
        deadline = time.time() + SHORT_RATE_WAIT
        while True:
            wait = await self.store.rate_acquire(destination, per_minute, time.time())
            if wait <= 0:
                return 0.0
            if time.time() + wait > deadline:
                return wait
            await asyncio.sleep(wait)


def _tag(claim: Claim) -> str:
    return (f"destination={claim.destination} order={claim.conversion.order_key}"
            f" attempt={claim.attempt}")


def _kind(exc: Exception) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    return type(exc).__name__


def _err(exc: Exception) -> str:
    return redact(str(exc) or type(exc).__name__)[:200]
