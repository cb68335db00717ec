"""Following queued submissions to their outcome (impact.com's APISubmissions).

impact answers a conversion, a reduction or a reversal with `200 QUEUED` and the
submission's URI: it has the data, but has neither credited nor refused it yet.
The worker records the submission with the delivered settlement (the ledger's
`submissions` table, same transaction); the Follower, a task of the worker, looks
at each one on a polite schedule until impact says how it went:

    look 1 after 60 s, 2 after 5 min more, 3 after 15 min more, then hourly
    (RELAY_IMPACT__FOLLOW_UP_SECONDS), for up to 72 h (…__FOLLOW_UP_HOURS)

    Queued / In Progress ─▶ look again later
    Complete, no error   ─▶ accepted (the delivery stays delivered)
    CONV_DUPLICATE       ─▶ duplicate: impact had it already (delivered)
    Complete with errors ─▶ rejected: the delivery turns failed with ErrorType/ErrorReason
    no outcome in time   ─▶ unresolved (delivered, flagged; a warning in the log)

Durable and shared: what is followed and when to look next is in the ledger;
submissions are leased (PostgreSQL: SKIP LOCKED), so two workers never look at
the same one at once, and a worker that dies leaves them to the next.

Polite: a few looks at a time, and impact's hourly budget is respected. Every
impact answer (conversion posts too, through `observe`) reports
X-RateLimit-Limit/Remaining/Reset; follow-ups stop while Remaining is down to
the reserve (RELAY_IMPACT__FOLLOW_UP_RESERVE, at most a tenth of the limit), so
conversions and reversals keep the rest. A 429 (Retry-After, else the reset)
holds every follow-up of every process (`store.hold_submissions`) and pauses
this worker's sends to impact too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from relay.destinations import Destination, Look
from relay.errors import StoreError
from relay.logs import short
from relay.settings import WorkerSettings
from relay.store import (
    ACCEPTED_THERE,
    DUPLICATE_THERE,
    FOLLOW_UP,
    FOLLOWING,
    REJECTED_THERE,
    UNRESOLVED,
    Attempt,
    Store,
    SubmissionClaim,
    SubmissionResult,
)

log = logging.getLogger("relay.followup")

LOOKS_AT_ONCE = 4  # submissions looked at concurrently per worker
RATE_LIMITED_WAIT = 60.0  # a 429 that says nothing about when to come back
HOUR = 3600.0


class RateBudget:
    """A destination's hourly request budget as its answers report it."""

    def __init__(self, reserve: int) -> None:
        self.reserve = reserve
        self.limit: int | None = None
        self.remaining: int | None = None
        self.reset_at = 0.0
        self.blocked_until = 0.0

    def observe(self, said: tuple[int, int | None, float | None] | None, now: float) -> None:
        """What an answer said of the budget: (remaining, limit, seconds until the reset)."""
        if said is not None:
            self.remaining, self.limit, reset = said
            self.reset_at = now + (reset if reset is not None else HOUR)

    def block(self, until: float) -> None:
        self.blocked_until = max(self.blocked_until, until)

    def _reserve(self) -> int:
        return self.reserve if self.limit is None else min(self.reserve, self.limit // 10)

    def wait(self, now: float) -> float:
        """Seconds before follow-ups may spend this budget again (0: now)."""
        wait = self.blocked_until - now
        if self.remaining is not None and self.remaining <= self._reserve() and self.reset_at > now:
            wait = max(wait, self.reset_at - now)
        return max(0.0, wait)

    def allowance(self, now: float, most: int) -> int:
        """How many looks may go out now: what the last answer said remains, less the
        reserve and the looks sent since (all of it once the reset has passed)."""
        if self.blocked_until > now:
            return 0
        if self.remaining is None or self.reset_at <= now:
            return most
        return max(0, min(most, self.remaining - self._reserve()))

    def spend(self) -> None:
        if self.remaining is not None:
            self.remaining -= 1


class Follower:
    """Looks at the followed submissions of the destinations that follow (`following()`)."""

    def __init__(
        self,
        store: Store,
        destinations: Mapping[str, Destination],
        settings: WorkerSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        on_rate_limited: Callable[[str, float], None] | None = None,
    ) -> None:
        self.store = store
        self.destinations = {n: d for n, d in destinations.items() if d.following()}
        self.settings = settings
        self.budgets = {
            n: RateBudget(getattr(d.settings, "follow_up_reserve", 0))
            for n, d in self.destinations.items()
        }
        self._transport = transport
        self._on_rate_limited = on_rate_limited
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    def __bool__(self) -> bool:
        return bool(self.destinations)

    # ------------------------------------------------------------ control

    def first_look(self, name: str, now: float) -> float:
        """When a submission recorded now is first looked at."""
        settings: Any = self.destinations[name].settings  # a destination that follows
        return now + float(settings.follow_up_seconds[0])

    def observe(self, name: str, response: httpx.Response) -> None:
        """Every answer of a followed destination (conversion posts too) reports its budget."""
        budget = self.budgets.get(name)
        if budget is not None:
            budget.observe(self.destinations[name].rate_limit(response), time.time())

    async def hold(self, name: str, seconds: float) -> None:
        """The destination said 429: no follow-up (in any process) before `seconds`."""
        if name not in self.budgets:
            return
        until = time.time() + seconds
        self.budgets[name].block(until)
        with contextlib.suppress(StoreError):
            await self.store.hold_submissions(name, until)

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        if not self.destinations:
            return
        for name, dest in self.destinations.items():
            self._clients[name] = httpx.AsyncClient(
                timeout=httpx.Timeout(dest.settings.timeout_seconds),
                follow_redirects=False,
                transport=self._transport,
            )
        log.info("follow-ups: following queued submissions of %s", ", ".join(self.destinations))
        try:
            await self._loop()
        finally:
            for client in self._clients.values():
                await client.aclose()
            self._clients.clear()

    # ------------------------------------------------------------ loop

    async def _loop(self) -> None:
        s = self.settings
        while not self._stopping.is_set():
            self._wake.clear()
            now = time.time()
            ready = [n for n, b in self.budgets.items() if b.wait(now) <= 0]
            claims: list[SubmissionClaim] = []
            try:
                for name in ready:
                    allowed = self.budgets[name].allowance(now, LOOKS_AT_ONCE)
                    if allowed:
                        claims += await self.store.claim_submissions(
                            [name], allowed, self._lease(name), now
                        )
            except Exception as exc:
                log.warning("follow-ups: claim failed (%s); retrying", exc)
                claims = []
                await self._sleep(min(s.poll_seconds, 1.0))
                continue
            if claims:
                done = await asyncio.gather(
                    *(self._look(c) for c in claims), return_exceptions=True
                )
                for claim, outcome in zip(claims, done, strict=True):
                    if isinstance(outcome, Exception):  # a bug: the lease brings it back later
                        log.error("follow-ups: a look at %s failed: %r", _tag(claim), outcome)
                continue
            timeout = s.poll_seconds
            with contextlib.suppress(Exception):
                due = await self.store.next_submission_due(ready) if ready else None
                if due is not None:
                    timeout = min(timeout, due - time.time())
            waits = [w for b in self.budgets.values() if (w := b.wait(time.time())) > 0]
            if waits:
                timeout = min(timeout, min(waits))
            if timeout > 0:
                await self._wait(timeout)

    def _lease(self, name: str) -> float:
        """Long enough for one look however slow (its deadline is twice the timeout): a
        lease that ran out mid-look would let another worker look at it too."""
        timeout = self.destinations[name].settings.timeout_seconds
        return max(self.settings.lease_seconds, 2 * timeout + 5)

    async def _wait(self, timeout: float) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({stop, wake}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            wake.cancel()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # ------------------------------------------------------------ one look

    async def _look(self, claim: SubmissionClaim) -> None:
        name = claim.destination
        dest: Any = self.destinations[name]
        started = time.time()
        code: int | None = None
        try:
            request = dest.submission_request(claim.uri)
            self.budgets[name].spend()
            async with asyncio.timeout(2 * dest.settings.timeout_seconds):
                response = await self._clients[name].send(request)
            code = response.status_code
            self.observe(name, response)
            look = dest.read_submission(response, claim.kind)
        except (httpx.HTTPError, TimeoutError) as exc:
            look = Look(FOLLOWING, f"{type(exc).__name__}: {str(exc)[:150] or 'no answer'}")
        elapsed = (time.time() - started) * 1000
        now = time.time()
        if look.state == "wait":  # rate limited: this look did not count
            wait = min(look.retry_after or RATE_LIMITED_WAIT, self.settings.retry_after_max_seconds)
            await self.hold(name, wait)
            if self._on_rate_limited is not None:
                self._on_rate_limited(name, wait)
            result = SubmissionResult(
                FOLLOWING,
                f"rate limited (HTTP 429): next look in {wait:.0f} s",
                Attempt(started, elapsed, FOLLOW_UP, code, look.detail),
                next_check_at=now + wait,
                counted=False,
            )
        else:
            result = self._result(claim, dest, look, code, started, elapsed, now)
        try:
            ok = await self.store.settle_submission(claim, result, time.time())
        except StoreError as exc:  # the lease runs out and the look is made again
            log.warning("follow-ups: could not record a look at %s: %s", _tag(claim), exc)
            return
        if not ok:
            return  # replaced meanwhile (a resend) or taken over
        if result.state == REJECTED_THERE:
            log.warning("%s rejected %s: %s", name, _tag(claim), result.delivery_error)
        elif result.state == UNRESOLVED:
            log.warning("%s gave no outcome for %s: %s", name, _tag(claim), result.detail)
        elif result.state in (ACCEPTED_THERE, DUPLICATE_THERE):
            log.info("%s %s %s", name, result.state, _tag(claim))

    def _result(
        self,
        claim: SubmissionClaim,
        dest: Any,
        look: Any,
        code: int | None,
        started: float,
        elapsed: float,
        now: float,
    ) -> SubmissionResult:
        s = dest.settings
        attempt = Attempt(started, elapsed, FOLLOW_UP, code, look.detail)
        batch = claim.uri.rsplit("/", 1)[-1]
        if look.state != FOLLOWING:
            error = f"{look.detail}; submission {batch}" if look.state == REJECTED_THERE else None
            return SubmissionResult(
                look.state,
                look.detail,
                attempt,
                error_type=look.error_type,
                error_reason=look.error_reason,
                delivery_error=error,
            )
        deadline = claim.started_at + s.follow_up_hours * HOUR
        if now >= deadline:
            detail = (
                f"no outcome from {claim.destination} within {s.follow_up_hours:g} h"
                f" (submission {batch}; last look: {look.detail}): check it in impact's dashboard"
            )
            return SubmissionResult(UNRESOLVED, detail, attempt)
        waits = s.follow_up_seconds
        delay = waits[min(claim.checks + 1, len(waits) - 1)]
        next_at = min(now + delay, deadline)
        return SubmissionResult(
            FOLLOWING, f"{look.detail}; next look {_clock(next_at)}", attempt, next_check_at=next_at
        )


def _clock(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(moment))


def _tag(claim: SubmissionClaim) -> str:
    return f"order={short(claim.order_key)} submission={short(claim.uri.rsplit('/', 1)[-1])}"
