"""The ledger: events, conversions, deliveries and attempts, behind one interface.

Two backends implement `Store`: SQLite (embedded default, one file, WAL) and
PostgreSQL (many processes on many machines). Everything the web app and the
worker need goes through these methods; nothing else touches SQL.

Delivery life cycle:

    pending ──claim (lease)──▶ in flight ──settle──▶ delivered | failed | skipped
       ▲                           │                 (or back to pending at T)
       └──── lease expired ────────┘  (a crashed worker's claims come back)
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.conversion import Conversion

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
SKIPPED = "skipped"
STATUSES = (PENDING, DELIVERED, FAILED, SKIPPED)


@dataclass(slots=True)
class EventRecord:
    source: str
    event_id: str
    event_type: str
    received_at: float
    body: bytes


@dataclass(slots=True)
class Recorded:
    """What `record` did: a duplicate event changes nothing."""

    duplicate: bool
    conversions: list[Conversion] = field(default_factory=list)  # newly recorded
    known: list[Conversion] = field(default_factory=list)  # already in the ledger
    deliveries: int = 0


@dataclass(slots=True)
class Claim:
    delivery_id: int
    destination: str
    attempt: int  # the number of this attempt, 1-based
    conversion_id: int
    conversion: Conversion
    lease_token: str
    created_at: float  # when the conversion was recorded
    recovered: bool = False  # an earlier claim's lease ran out before it settled
    in_doubt: bool = False  # …and that claim had marked its request as sent (`mark_sent`)


@dataclass(slots=True)
class Attempt:
    started_at: float
    duration_ms: float
    outcome: str  # delivered | retry | failed | ambiguous | skipped | deferred
    status_code: int | None = None
    detail: str = ""


@dataclass(slots=True)
class Settlement:
    status: str  # one of STATUSES
    next_attempt_at: float | None = None  # for pending
    error: str | None = None  # last error or skip reason
    status_code: int | None = None
    attempt: Attempt | None = None
    count_attempt: bool = True  # False: the claim did not spend an attempt (rate-limit deferral)


@dataclass(slots=True)
class DeliveryRow:
    id: int
    destination: str
    status: str
    attempts: int
    next_attempt_at: float | None
    last_status_code: int | None
    last_error: str | None
    source: str
    kind: str
    order_key: str
    created_at: float
    updated_at: float


@dataclass(slots=True)
class DisabledDestination:
    """A destination whose endpoint said it is gone (Standard Webhooks: 410 Gone).

    The worker sends nothing to it — its deliveries wait, pending — until `relay retry
    --destination D` enables it, or the worker starts with another endpoint URL than
    the one that answered 410 (`fingerprint`, a hash of that URL)."""

    destination: str
    since: float  # epoch seconds
    reason: str
    fingerprint: str | None = None


class Store(abc.ABC):
    """The ledger interface. All methods raise StoreError when the backend fails."""

    url: str

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create or upgrade the schema."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreError unless the store can take writes now."""

    @abc.abstractmethod
    async def record(
        self,
        event: EventRecord,
        conversions: Sequence[Conversion],
        destinations_for: Callable[[Conversion], Sequence[str]],
    ) -> Recorded:
        """In one transaction: the event (deduped on source + event id), each conversion
        (deduped on source + kind + order key) and, for each new conversion, one pending
        delivery per destination. Durable when it returns."""

    @abc.abstractmethod
    async def claim(
        self, destinations: Sequence[str], limit: int, lease_seconds: float, now: float
    ) -> list[Claim]:
        """Lease up to `limit` due deliveries for these destinations."""

    @abc.abstractmethod
    async def settle(self, claim: Claim, settlement: Settlement, now: float) -> bool:
        """Record an attempt's result; False when the lease was lost (someone else owns it)."""

    @abc.abstractmethod
    async def mark_sent(self, claims: Sequence[Claim]) -> None:
        """Record, durably, that these claims' request is about to go out. If the worker
        dies before settling, the next claim is `in_doubt`; without the mark it is not,
        and a destination without an idempotency key can be sent to safely."""

    @abc.abstractmethod
    async def extend(self, claims: Sequence[Claim], until: float) -> None:
        """Push the leases of these in-flight claims to `until` (the worker's heartbeat);
        a claim whose lease was lost is left alone."""

    @abc.abstractmethod
    async def next_due(self, destinations: Sequence[str]) -> float | None:
        """The earliest time a delivery for these destinations becomes claimable."""

    @abc.abstractmethod
    async def deliveries(
        self,
        status: str | None = None,
        destination: str | None = None,
        limit: int = 50,
        delivery_id: int | None = None,
    ) -> list[DeliveryRow]:
        """Deliveries, newest first, filtered by status, destination or id."""

    @abc.abstractmethod
    async def attempts(self, delivery_id: int) -> list[Attempt]:
        """The attempts recorded for one delivery, oldest first."""

    @abc.abstractmethod
    async def requeue(
        self,
        ids: Sequence[int] = (),
        destination: str | None = None,
        now: float = 0.0,
        statuses: Sequence[str] = (FAILED,),
    ) -> int:
        """Put deliveries in `statuses` (these ids, or all of them) back to pending, now,
        with a fresh attempt budget."""

    @abc.abstractmethod
    async def stats(self, now: float) -> dict[str, Any]:
        """{'by_status': {(destination, status): n}, 'oldest_pending_age': s}."""

    # -- destinations disabled by their endpoint (schema 3)

    @abc.abstractmethod
    async def disable_destination(
        self, destination: str, reason: str, fingerprint: str | None, now: float
    ) -> bool:
        """Mark the destination disabled since `now`; True when it was enabled until then
        (an already disabled one keeps its first time and reason)."""

    @abc.abstractmethod
    async def enable_destination(self, destination: str) -> DisabledDestination | None:
        """Enable it again (workers notice at once or within a poll); what it was, or None
        when it was not disabled."""

    @abc.abstractmethod
    async def disabled_destinations(self) -> dict[str, DisabledDestination]:
        """The destinations disabled now, by name (worker, `relay check`, /metrics, console)."""

    async def watch(self, wake: Callable[[], None]) -> None:
        """Call `wake()` whenever another process adds work (PostgreSQL LISTEN/NOTIFY).

        Returns once watching has started; backends without notifications do nothing
        (the worker's polling is the safety net either way)."""
        return None

    @abc.abstractmethod
    async def rate_block(self, key: str, per_minute: int, until: float) -> None:
        """The destination asked everyone to wait until `until` (a 429's Retry-After):
        fill the shared window so that no process takes a slot before then."""

    @abc.abstractmethod
    async def rate_acquire(self, key: str, per_minute: int, now: float) -> float:
        """Take a send slot from a shared limiter: 0 when granted, else seconds to wait.

        The window is shared by every process using this store."""
        raise NotImplementedError


def customer_key(conversion: Conversion) -> str | None:
    if conversion.customer.id:
        return "id:" + conversion.customer.id
    if conversion.customer.email:
        email = conversion.customer.email.strip().lower()
        return "email:" + hashlib.sha256(email.encode()).hexdigest()
    return None


def open_store(url: str) -> Store:
    if url.startswith("sqlite:"):
        from relay.store.sqlite import SQLiteStore

        return SQLiteStore(url)
    if url.startswith(("postgresql:", "postgres:")):
        from relay.store.postgres import PostgresStore  # type: ignore[import-not-found]

        return PostgresStore(url)  # type: ignore[no-any-return]
    raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]!r}")
