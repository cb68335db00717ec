"""The delivery worker: claim due deliveries → build → send → classify → settle.

- Claims are leased (and the lease renewed while the worker works): a worker
  that dies loses its claims when the lease ends. For a destination without an
  idempotency key (pagent) a claim is marked sent just before its request goes
  out, so a later claim of it knows whether that request may have counted.
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
- A destination whose endpoint answers that it is gone (Standard Webhooks 410) is
  disabled in the ledger: no worker claims its deliveries, which wait, until
  `relay retry --destination D` enables it or a worker starts with another URL.
- A destination that answers "queued" (impact.com) has its submission recorded with
  the delivered settlement, and the Follower (relay/followup.py, a task of this
  worker) looks at it until the destination says how it went.
- A refund going to a destination that `reverses` (impact.com) is built from the
  ledger's view of its purchase (`store.refund_target`): sent, skipped, or deferred
  without spending an attempt while the purchase is still on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import SecretStr

from relay import retention
from relay.conversion import REFUND, Conversion
from relay.destinations import (
    DELIVERED,
    FAILED,
    RETRY,
    Defer,
    Destination,
    Outcome,
    Skip,
    classify,
    redact,
)
from relay.errors import EnrichmentUnavailable, StoreError
from relay.followup import Follower
from relay.logs import short
from relay.retry import RetryPolicy
from relay.settings import WorkerSettings, env_name
from relay.store import DELIVERED as S_DELIVERED
from relay.store import FAILED as S_FAILED
from relay.store import PENDING as S_PENDING
from relay.store import SKIPPED as S_SKIPPED
from relay.store import Attempt, Claim, DisabledDestination, FollowUp, Settlement, Store

log = logging.getLogger("relay.worker")

SHORT_RATE_WAIT = 2.0  # wait in place for a rate-limit slot up to this long
STATES_SECONDS = 1.0  # re-read which destinations are disabled at most this often
IN_FLIGHT_PER_CLIENT = 4  # a destination gets one client per this many concurrent requests…
MAX_CLIENTS = 8  # …up to this many
MAINTENANCE_SECONDS = 3600.0  # retention and store housekeeping: at start, then this often

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
        retention_days: float = 0,
        maintenance_seconds: float = MAINTENANCE_SECONDS,
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
        self._inflight: dict[asyncio.Task[None], list[Claim]] = {}  # task → claims it holds
        self._concluding: dict[asyncio.Task[None], list[Claim]] = {}  # shielded settlements
        self._slot_free = asyncio.Event()
        self._paused_until: dict[str, float] = {}
        self.retention_days = retention_days  # 0: personal data is kept
        self.maintenance_seconds = maintenance_seconds
        self._disabled: dict[str, DisabledDestination] = {}  # by their endpoint (410)
        self._states_read = 0.0
        # Queued answers (impact.com) followed to their outcome: relay/followup.py.
        self.follower = Follower(
            store, self.destinations, settings, transport=transport, on_rate_limited=self._pause
        )

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
        maintenance = asyncio.create_task(self._maintain(), name="relay-maintenance")
        try:
            await self._run()
        finally:
            maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await maintenance

    async def _maintain(self) -> None:
        """Retention (when relay starts, then every `maintenance_seconds`) and the store's
        housekeeping, in their own task: never on the delivery path. A failure is logged
        and tried again a minute later."""
        while not self._stopping.is_set():
            wait = self.maintenance_seconds
            try:
                if self.retention_days > 0:
                    await retention.run_once(
                        self.store, self.retention_days, stopping=self._stopping.is_set
                    )
                await self.store.compact()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("retention: failed (%s); trying again in a minute", exc)
                wait = min(wait, 60.0)
            await self._sleep(wait)

    async def _run(self) -> None:
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
        await self._enable_changed_urls()
        log.info("worker: delivering to %s", ", ".join(names))
        heartbeat = asyncio.create_task(self._heartbeat(), name="relay-lease-heartbeat")
        following = asyncio.create_task(self.follower.run(), name="relay-follow-ups")
        try:
            await self._loop(names)
        finally:
            await self.follower.stop()
            await self._drain()
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            with contextlib.suppress(Exception):
                await asyncio.wait_for(following, self.settings.lease_seconds)
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
            await self._read_disabled()
            free = s.concurrency - sum(map(len, self._inflight.values()))
            claimed = 0
            if free > 0:
                self._wake.clear()
                now = time.time()
                ready = self._ready(names, now)
                try:
                    claims = await self.store.claim(
                        ready, min(free, s.batch_size), s.lease_seconds, now
                    )
                except Exception as exc:
                    log.warning("worker: claim failed (%s); retrying", exc)
                    claims = []
                    await self._sleep(min(s.poll_seconds, 1.0))
                for group in self._groups(claims):
                    task = asyncio.create_task(self._deliver(group))
                    self._inflight[task] = group
                    task.add_done_callback(self._done)
                claimed = len(claims)
                if claimed == min(free, s.batch_size) and claimed:
                    continue  # more may be due right now
            if free <= claimed:  # every slot busy: wait for one to free up
                self._slot_free.clear()
                await self._wait_any(self._slot_free.wait(), timeout=s.poll_seconds)
                continue
            now = time.time()
            ready = self._ready(names, now)
            timeout = s.poll_seconds
            if self._disabled:  # notice `relay retry --destination D` soon
                timeout = min(timeout, STATES_SECONDS)
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

    def _ready(self, names: list[str], now: float) -> list[str]:
        """The destinations to claim for now: not paused (429), not disabled (410)."""
        return [n for n in names if self._paused_until.get(n, 0) <= now and n not in self._disabled]

    # ------------------------------------------------------------ disabled destinations

    async def _read_disabled(self, force: bool = False) -> None:
        """Which destinations are disabled (by any worker, or enabled again by `relay
        retry --destination D`): read from the ledger at most every STATES_SECONDS."""
        now = time.time()
        if not force and now - self._states_read < STATES_SECONDS:
            return
        try:
            states = await self.store.disabled_destinations()
        except Exception as exc:
            log.warning("worker: could not read disabled destinations (%s)", exc)
            return
        self._states_read = now
        states = {n: d for n, d in states.items() if n in self.destinations}
        for name in self._disabled.keys() - states.keys():
            log.info("destination %s enabled again: its waiting deliveries go out now", name)
        for name in states.keys() - self._disabled.keys():
            log.warning("destination %s is disabled: %s", name, states[name].reason)
        self._disabled = states

    async def _enable_changed_urls(self) -> None:
        """At start: a destination disabled by its endpoint is enabled again when its URL
        is no longer the one that answered 410 (the operator configured a new one)."""
        await self._read_disabled(force=True)
        for name, state in list(self._disabled.items()):
            current = self.destinations[name].fingerprint()
            if state.fingerprint and current and current != state.fingerprint:
                with contextlib.suppress(Exception):
                    await self.store.enable_destination(name)
                    log.info("destination %s enabled again: its URL changed since then", name)
                    del self._disabled[name]

    async def _disable(self, name: str, dest: Destination, reason: str) -> None:
        now, fingerprint = time.time(), dest.fingerprint()
        self._disabled.setdefault(name, DisabledDestination(name, now, reason, fingerprint))
        try:
            if await self.store.disable_destination(name, reason, fingerprint, now):
                log.error("destination %s disabled: %s", name, reason)
        except Exception as exc:  # this worker holds off anyway; the next 410 tries again
            log.error("destination %s: could not record it disabled (%s)", name, exc)

    async def _heartbeat(self) -> None:
        """Extend the leases of in-flight claims, so a slow request (long timeouts, a
        look-up, a rate-limit wait) is never taken over by another worker while this
        one is still working on it. Only a dead worker's leases run out."""
        lease = self.settings.lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            claims = [
                c for group in (*self._inflight.values(), *self._concluding.values()) for c in group
            ]
            if not claims:
                continue
            try:
                await self.store.extend(claims, time.time() + lease)
            except Exception as exc:
                log.warning("worker: could not extend leases (%s)", exc)

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
        """Let in-flight deliveries finish for the grace period, cancel the rest (they hand
        their claims back), then wait for every answered request's outcome to be written
        (the heartbeat keeps those leases meanwhile)."""
        if self._inflight:
            grace = self.settings.shutdown_grace_seconds
            log.info(
                "worker: waiting up to %.0f s for %d in-flight deliveries",
                grace,
                sum(map(len, self._inflight.values())),
            )
            _, pending = await asyncio.wait(set(self._inflight), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self._concluding:  # answered requests: their outcome must be written
            await asyncio.wait(set(self._concluding), timeout=self.settings.lease_seconds)

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

    # ------------------------------------------------------------ delivery

    async def _deliver(self, claims: list[Claim]) -> None:
        """Deliver claims of one destination: one request for a single claim, one batch
        request (`build_batch`) for several claims of a batching destination.

        Each claim passes the same gates first (a claim whose earlier attempt was marked
        sent before its worker died, for a destination that cannot take a resend → ambiguous; enrichment; a Skip → skipped); the rest share
        one rate slot, one request and one response, and each is settled from it. Once
        a response is in hand its settlement is shielded from shutdown and retried on
        store errors: an answered request is never handed back to be sent again.
        `on_wire` holds the claims whose request may have reached the destination; only
        those are ambiguous when something goes wrong."""
        name = claims[0].destination
        dest = self.destinations[name]
        unsettled = list(claims)
        on_wire: set[int] = set()  # delivery ids whose request is (or was) being sent
        started = time.time()

        async def settle(claim: Claim, settlement: Settlement) -> None:
            await self._settle(claim, settlement, _tag(claim))
            unsettled.remove(claim)

        async def send(
            batch: list[Claim], request: httpx.Request
        ) -> tuple[Outcome, int | None, bool]:
            if not dest.resend_ambiguous:
                # Durably "sent" first: if this worker dies now, the next claim knows the
                # request may have counted and does not send it again.
                await self.store.mark_sent(batch)
            on_wire.update(c.delivery_id for c in batch)
            return await self._send(name, dest, request)

        async def conclude(
            answers: list[tuple[Claim, tuple[Outcome, int | None, bool]]],
            batch: int,
            sent_at: float,
        ) -> None:
            elapsed = (time.time() - sent_at) * 1000
            for claim, _ in answers:
                unsettled.remove(claim)
            task = asyncio.create_task(self._conclude_all(dest, answers, batch, sent_at, elapsed))
            self._concluding[task] = [claim for claim, _ in answers]
            task.add_done_callback(self._concluded)
            await asyncio.shield(task)

        try:
            now = datetime.now(UTC)
            ready: list[tuple[Claim, httpx.Request]] = []
            conversions: list[Conversion] = []
            for claim in claims:
                if claim.in_doubt and not dest.resend_ambiguous:
                    detail = "ambiguous: an earlier attempt was interrupted after sending; not resent (no idempotency key)"
                    await settle(
                        claim,
                        Settlement(
                            S_FAILED,
                            error=detail,
                            attempt=Attempt(started, 0.0, "ambiguous", None, detail),
                        ),
                    )
                    continue
                if claim.erased is not None:  # retention or `relay forget` took the buyer's data
                    detail = _erased_reason(claim.erased)
                    await settle(
                        claim,
                        Settlement(
                            S_FAILED,
                            error=detail,
                            attempt=Attempt(started, 0.0, "failed", None, detail),
                        ),
                    )
                    continue
                conv = claim.conversion
                if self.enrich is not None:
                    try:
                        conv = await self.enrich(conv, name)
                    except EnrichmentUnavailable as exc:  # the data exists; try again later
                        await self._conclude(
                            claim,
                            dest,
                            Outcome(RETRY, str(exc), exc.retry_after),
                            None,
                            False,
                            started,
                            0.0,
                        )
                        unsettled.remove(claim)
                        continue
                    except Exception as exc:  # optional data: deliver without it
                        log.warning(
                            "enrich failed %s (%s); delivering without it",
                            _tag(claim),
                            type(exc).__name__,
                        )
                try:
                    if conv.kind == REFUND and dest.reverses:  # a change of the purchase there
                        target = await self.store.refund_target(claim.conversion_id, name)
                        built = dest.build_refund(conv, target, claim.created_at, now)
                    else:
                        built = dest.build(conv, now)
                except Exception as exc:  # an internal error: it spends this attempt
                    await settle(claim, self._internal(claim, dest, exc, started, sent=False))
                    continue
                if isinstance(built, Defer):  # not yet, and no attempt spent
                    await settle(
                        claim,
                        Settlement(
                            S_PENDING,
                            next_attempt_at=time.time() + built.seconds,
                            error=built.reason,
                            count_attempt=False,
                            attempt=Attempt(started, 0.0, "deferred", None, built.reason),
                        ),
                    )
                    continue
                if isinstance(built, Skip):
                    status = S_SKIPPED if claim.attempt <= 1 else S_FAILED
                    await settle(
                        claim,
                        Settlement(
                            status,
                            error=built.reason,
                            attempt=Attempt(started, 0.0, "skipped", None, built.reason),
                        ),
                    )
                    continue
                ready.append((claim, built))
                conversions.append(conv)
            if not ready:
                return
            try:
                request = ready[0][1] if len(ready) == 1 else dest.build_batch(conversions, now)
            except Exception as exc:  # an internal error: each claim spends this attempt
                for claim, _ in ready:
                    await settle(claim, self._internal(claim, dest, exc, started, sent=False))
                return
            if not await self._take_slot(name, dest, [claim for claim, _ in ready], settle):
                return
            started = time.time()
            result = await send([claim for claim, _ in ready], request)
            if len(ready) > 1 and result[0].kind == FAILED and result[1] == 400:
                # The batch was refused whole (nothing accepted): one bad event must not
                # sink the others, so each goes on its own, with its own rate slot.
                log.warning(
                    "batch of %d refused by %s (%s); sending one by one",
                    len(ready),
                    name,
                    result[0].detail,
                )
                on_wire.clear()
                for i, (claim, single) in enumerate(ready):
                    if not await self._take_slot(name, dest, [c for c, _ in ready[i:]], settle):
                        return
                    sent_at = time.time()
                    answer = await send([claim], single)
                    await conclude([(claim, answer)], 1, sent_at)
                return
            await conclude([(claim, result) for claim, _ in ready], len(ready), started)
        except asyncio.CancelledError:
            # Shutdown: hand back what was not answered. A request cut off mid-send is ambiguous.
            for claim in list(unsettled):
                await self._hand_back(claim, dest, claim.delivery_id in on_wire, started)
            raise
        except StoreError as exc:  # the ledger failed: hand them back, no attempt spent
            log.warning("delivery destination=%s: store error (%s); handing back", name, exc)
            for claim in list(unsettled):
                sent = claim.delivery_id in on_wire
                with contextlib.suppress(Exception):
                    await self.store.settle(
                        claim,
                        Settlement(
                            S_PENDING,
                            next_attempt_at=time.time() + self.settings.retry_base_seconds,
                            count_attempt=sent,
                        ),
                        time.time(),
                    )
        except Exception as exc:  # an internal error: each claim spends its attempt
            for claim in list(unsettled):
                settlement = self._internal(
                    claim, dest, exc, started, sent=claim.delivery_id in on_wire
                )
                with contextlib.suppress(Exception):
                    await self._settle(claim, settlement, _tag(claim))

    def _internal(
        self, claim: Claim, dest: Destination, exc: Exception, started: float, *, sent: bool
    ) -> Settlement:
        """An error in relay's own handling of a claim (building the request, a bug): the
        attempt is spent and the retry policy applies, so it ends in the dead letter after
        max_attempts with a reason a person can act on. One log line per attempt (the
        settlement's); the traceback only at DEBUG."""
        if log.isEnabledFor(logging.DEBUG):  # where it happened; the message may hold a secret
            log.debug(
                "internal error %s: %s at\n%s",
                _tag(claim),
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)).rstrip(),
            )
        detail = internal_reason(exc, dest)
        if sent and not dest.resend_ambiguous:  # it may have counted: never resent
            return Settlement(
                S_FAILED,
                error="ambiguous: " + detail,
                attempt=Attempt(started, 0.0, "ambiguous", None, detail),
            )
        attempt = Attempt(started, 0.0, "error", None, detail)
        delay = self.policy.next_delay(claim.attempt, dest.settings.max_attempts)
        if delay is None:
            return Settlement(
                S_FAILED,
                error=f"gave up after {claim.attempt} attempts: {detail}",
                attempt=attempt,
            )
        return Settlement(
            S_PENDING, next_attempt_at=time.time() + delay, error=detail, attempt=attempt
        )

    async def _take_slot(
        self,
        name: str,
        dest: Destination,
        claims: list[Claim],
        settle: Callable[[Claim, Settlement], Awaitable[None]],
    ) -> bool:
        """A rate-limit slot for one request; without one, these claims go back to wait for
        it (not a spent attempt) and the destination is paused. True when the slot is ours."""
        per_minute = dest.settings.rate_limit_per_minute
        if not per_minute:
            return True
        wait = await self._rate_slot(name, per_minute)
        if wait <= 0:
            return True
        self._pause(name, wait)  # stop claiming for this destination until a slot frees up
        for claim in claims:
            await settle(
                claim,
                Settlement(S_PENDING, next_attempt_at=time.time() + wait, count_attempt=False),
            )
        return False

    def _concluded(self, task: asyncio.Task[None]) -> None:
        self._concluding.pop(task, None)

    async def _conclude_all(
        self,
        dest: Destination,
        answers: list[tuple[Claim, tuple[Outcome, int | None, bool]]],
        batch: int,
        started: float,
        elapsed: float,
    ) -> None:
        for claim, (outcome, code, ambiguous) in answers:
            if batch > 1:
                outcome = Outcome(
                    outcome.kind, f"batch of {batch}: {outcome.detail}", outcome.retry_after
                )
            try:
                await self._conclude(claim, dest, outcome, code, ambiguous, started, elapsed)
            except Exception as exc:  # the store stayed down: the lease will bring it back
                log.error("could not record the outcome of %s: %s", _tag(claim), exc)

    async def _send(
        self, name: str, dest: Destination, request: httpx.Request
    ) -> tuple[Outcome, int | None, bool]:
        """Send one request: (outcome, status code, ambiguous).

        The whole exchange is bounded (twice the per-phase timeout), so a server that
        trickles its answer cannot hold a delivery forever. Once the status line has
        arrived, that status is the answer even when the body cannot be read."""
        deadline = 2 * dest.settings.timeout_seconds
        response: httpx.Response | None = None
        try:
            async with asyncio.timeout(deadline):
                response = await self._client(name).send(request, stream=True)
                try:
                    await response.aread()
                except httpx.HTTPError:
                    pass  # a broken or cut-off body: the status still says what happened
                finally:
                    await response.aclose()
                self.follower.observe(name, response)  # its rate budget, for follow-ups
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            return Outcome(RETRY, f"connect: {_err(exc)}"), None, False
        except httpx.TransportError as exc:  # sent, or partly sent: fate unknown
            return Outcome(RETRY, f"{_kind(exc)}: {_err(exc)}"), None, True
        except TimeoutError:
            if response is None:
                return Outcome(RETRY, f"timeout: no answer within {deadline:.0f} s"), None, True
        try:
            return dest.classify(response), response.status_code, False
        except Exception as exc:  # a classifier that needed the body it could not read
            log.warning(
                "destination=%s: its answer could not be read (%s); judged by its status %s",
                name,
                type(exc).__name__,
                response.status_code,
            )
            return classify(response), response.status_code, False

    async def _hand_back(
        self, claim: Claim, dest: Destination, sending: bool, started: float
    ) -> None:
        """Shutdown: return the delivery. A request cut off mid-send is ambiguous."""
        detail = "interrupted by shutdown"
        if sending and not dest.resend_ambiguous:
            settlement = Settlement(
                S_FAILED,
                error="ambiguous: " + detail,
                attempt=Attempt(started, 0.0, "ambiguous", None, detail),
            )
        else:
            settlement = Settlement(S_PENDING, next_attempt_at=time.time(), count_attempt=sending)
        with contextlib.suppress(Exception):
            await asyncio.shield(self.store.settle(claim, settlement, time.time()))

    async def _conclude(
        self,
        claim: Claim,
        dest: Destination,
        outcome: Outcome,
        code: int | None,
        ambiguous: bool,
        started: float,
        elapsed: float,
    ) -> None:
        label = "ambiguous" if ambiguous else "gone" if outcome.gone else outcome.kind
        attempt = Attempt(started, elapsed, label, code, outcome.detail)
        if outcome.gone:  # the endpoint is gone: stop sending there; this one waits too
            await self._disable(claim.destination, dest, outcome.detail)
            settlement = Settlement(
                S_PENDING,
                next_attempt_at=time.time(),
                status_code=code,
                error=outcome.detail,
                attempt=attempt,
            )
        elif outcome.kind == DELIVERED:
            settlement = Settlement(S_DELIVERED, status_code=code, attempt=attempt)
            if dest.following():  # queued, not yet credited: follow it (same transaction)
                uri, submitted = outcome.follow_up or (None, "conversion")
                settlement.follow_up = FollowUp(
                    uri, self.follower.first_look(claim.destination, time.time()), submitted
                )
            if self.metrics is not None:
                self.metrics.delivered(claim.destination, time.time() - claim.created_at)
        elif outcome.kind == RETRY and not (ambiguous and not dest.resend_ambiguous):
            if code == 429:
                wait = min(outcome.retry_after or 1.0, self.settings.retry_after_max_seconds)
                self._pause(claim.destination, wait)
                await self.follower.hold(claim.destination, wait)  # the same budget
                per_minute = dest.settings.rate_limit_per_minute
                if per_minute:  # every other worker holds off too, through the shared window
                    with contextlib.suppress(Exception):
                        await self.store.rate_block(
                            claim.destination, per_minute, time.time() + wait
                        )
            delay = self.policy.next_delay(
                claim.attempt, dest.settings.max_attempts, outcome.retry_after
            )
            if delay is None:
                settlement = Settlement(
                    S_FAILED,
                    status_code=code,
                    attempt=attempt,
                    error=f"gave up after {claim.attempt} attempts: {outcome.detail}",
                )
            else:
                settlement = Settlement(
                    S_PENDING,
                    next_attempt_at=time.time() + delay,
                    status_code=code,
                    error=outcome.detail,
                    attempt=attempt,
                )
        else:
            prefix = "ambiguous: " if ambiguous else ""
            settlement = Settlement(
                S_FAILED, status_code=code, error=prefix + outcome.detail, attempt=attempt
            )
        await self._settle(claim, settlement, _tag(claim), elapsed)

    async def _settle(
        self, claim: Claim, settlement: Settlement, tag: str, elapsed: float = 0.0
    ) -> None:
        """Record a settlement, retrying store errors for about a lease (the heartbeat keeps
        the claim ours meanwhile): a result we know must not be lost to a blip."""
        deadline = time.time() + max(self.settings.lease_seconds, 10.0)
        pause = 0.05
        while True:
            try:
                ok = await self.store.settle(claim, settlement, time.time())
                break
            except StoreError as exc:
                if time.time() + pause > deadline:
                    raise
                log.warning("settle %s failed (%s); retrying", tag, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
        if not ok:
            log.warning("delivery lease lost %s (another worker took it over)", tag)
            return
        if self.metrics is not None:
            self.metrics.settled(
                claim.destination, settlement.status if settlement.count_attempt else "deferred"
            )
            if settlement.error and settlement.count_attempt and settlement.status != S_SKIPPED:
                self.metrics.attempt_failed(
                    claim.destination, claim.delivery_id, settlement.status_code, settlement.error
                )
        if settlement.status == S_DELIVERED:
            log.info("delivered %s status=%s ms=%.1f", tag, settlement.status_code, elapsed)
            if settlement.follow_up is not None and settlement.follow_up.uri:
                self.follower.wake()
        elif settlement.status == S_PENDING and settlement.count_attempt:
            log.warning(
                "retry %s in %.0f s: %s",
                tag,
                (settlement.next_attempt_at or 0) - time.time(),
                settlement.error,
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
    return (
        f"destination={claim.destination} order={short(claim.conversion.order_key)}"
        f" attempt={claim.attempt}"
    )


def _kind(exc: Exception) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    return type(exc).__name__


def _err(exc: Exception) -> str:
    return redact(str(exc) or type(exc).__name__)[:200]


def _erased_reason(erased: str) -> str:
    if erased == "forget":
        return "not sent: the buyer's personal data was erased by relay forget"
    return (
        "not sent: the buyer's personal data was removed by retention"
        " (RELAY_RETENTION_DAYS); a conversion without it cannot be delivered"
    )


def internal_reason(exc: Exception, dest: Destination) -> str:
    """What went wrong inside relay, in words that say what to fix, never a secret."""
    secrets = _setting_values(dest)
    if isinstance(exc, UnicodeEncodeError):
        bad = exc.object[exc.start : exc.end] if isinstance(exc.object, str) else ""
        shown = ", ".join(f"{c!r} U+{ord(c):04X}" for c in bad[:3]) or "non-ASCII"
        for field, value in secrets:
            if (bad and bad in value) or (not bad and not value.isascii()):
                return (
                    f"internal error: the {_label(field)} contains a character HTTP headers"
                    f" cannot carry ({shown}) — check {env_name(dest.name, field)}"
                )
        return (
            "internal error: a request header would carry a character HTTP headers"
            f" cannot carry ({shown})"
        )
    text = str(exc) or type(exc).__name__
    for _, value in secrets:
        if len(value) >= 4:
            text = text.replace(value, "********")
    return f"internal error: {type(exc).__name__}: {_err_text(text)}"


def _setting_values(dest: Destination) -> list[tuple[str, str]]:
    """(field, value) of every text setting of the destination, secrets included."""
    out: list[tuple[str, str]] = []
    for field in type(dest.settings).model_fields:
        value = getattr(dest.settings, field, None)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str) and value:
            out.append((field, value))
    return out


_WORDS = {"api": "API", "id": "ID", "sid": "SID", "url": "URL"}


def _label(field: str) -> str:
    return " ".join(_WORDS.get(w, w) for w in field.split("_"))


def _err_text(text: str) -> str:
    return redact(" ".join(text.split()))[:200]
