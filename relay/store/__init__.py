"""The ledger: events, conversions, deliveries and attempts, behind one interface.

Two backends implement `Store`: SQLite (embedded default, one file, WAL) and
PostgreSQL (many processes on many machines). Everything the web app and the
worker need goes through these methods; nothing else touches SQL.

Personal data (buyer email, name, phone, address, metadata, attribution ids) lives in two
places only: the raw event bodies and the stored conversions. `retain` (RELAY_RETENTION_DAYS)
and `forget` (`relay forget`) erase it there and mark the rows `erased`; dedupe keys (event
ids, order keys) and the customer key stay, so a late redelivery is still a duplicate.

Delivery life cycle:

    pending ──claim (lease)──▶ in flight ──settle──▶ delivered | failed | skipped
       ▲                           │                 (or back to pending at T)
       └──── lease expired ────────┘  (a crashed worker's claims come back)

Every verified webhook is an event row with its raw body and a status:

    accepted      its conversions are in the ledger
    ignored       valid, not relayed (test mode, an event type not relayed, unpaid, …)
    quarantined   a JSON object relay could not turn into conversions (unknown
                  currency, unknown shape, missing amount, …): nothing delivered

`relay replay` re-parses stored bodies (`events`, `replay`); a replay never turns an
accepted event back into ignored or quarantined.

A destination that answers "queued" (impact.com) gets its submission followed to an
outcome: the delivery is `delivered` and its submission row says how far impact got
(`submissions`, `settle_submission`):

    following ──look──▶ accepted | duplicate        (the delivery stays delivered)
        │     └──look──▶ rejected                   (the delivery turns failed)
        └── no outcome within the limit ──▶ unresolved (delivered, flagged)
"""

from __future__ import annotations

import abc
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from relay.conversion import Conversion, Customer

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
SKIPPED = "skipped"
STATUSES = (PENDING, DELIVERED, FAILED, SKIPPED)
SCAN_CHUNK = 2000  # rows `forget` reads per transaction while looking for a buyer
ERASE_CHUNK = 200  # conversions `forget` erases per transaction
RETENTION = "retention"  # why a record's personal data is gone: `erased` / `Claim.erased`
FORGET = "forget"
# the reason a forgotten buyer's pending deliveries fail
ERASED_BY_FORGET = "erased by relay forget"

ACCEPTED = "accepted"
IGNORED = "ignored"
QUARANTINED = "quarantined"
FETCHING = "fetching"  # a thin event whose object the worker fetches (relay/thin.py)
EVENT_STATUSES = (ACCEPTED, IGNORED, QUARANTINED, FETCHING)
RESEND = "resend"  # the outcome of the attempt-log line `resend` writes
RESEND_DETAIL = "manual resend (relay resend): same idempotency key, fresh attempt budget"
FOLLOW_UP = "follow-up"  # the outcome of the attempt-log lines a submission's looks write

# A submission's states (the `submissions` table): impact.com's queued answers followed.
FOLLOWING = "following"
ACCEPTED_THERE = "accepted"
DUPLICATE_THERE = "duplicate"
REJECTED_THERE = "rejected"
UNRESOLVED = "unresolved"
SUBMISSION_STATES = (FOLLOWING, ACCEPTED_THERE, DUPLICATE_THERE, REJECTED_THERE, UNRESOLVED)


@dataclass(slots=True)
class EventRecord:
    source: str
    event_id: str
    event_type: str
    received_at: float
    body: bytes
    status: str = ACCEPTED  # one of EVENT_STATUSES
    reason: str | None = None  # why it is ignored or quarantined


@dataclass(slots=True)
class StoredEvent:
    """An event row as `events` lists it; `body` only when asked for."""

    id: int
    source: str
    event_id: str
    event_type: str
    status: str
    reason: str | None
    received_at: float
    replayed_at: float | None
    body: bytes | None = None


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
    erased: str | None = None  # RETENTION or FORGET: the buyer's data is gone; never send it


@dataclass(slots=True)
class Attempt:
    started_at: float
    duration_ms: float
    outcome: str  # delivered | retry | failed | ambiguous | skipped | deferred | resend
    status_code: int | None = None
    detail: str = ""


@dataclass(slots=True)
class FollowUp:
    """A queued answer to follow (impact's `QueuedUri`), recorded with a delivered settlement."""

    # The submission's path, e.g. /Advertisers/IR…/APISubmissions/A-…; None: this answer
    # gave nothing to follow, so an earlier submission of the delivery is forgotten.
    uri: str | None
    next_check_at: float  # the first look
    kind: str = "conversion"  # conversion | modification | reversal (what was submitted)


@dataclass(slots=True)
class Settlement:
    status: str  # one of STATUSES
    next_attempt_at: float | None = None  # for pending
    error: str | None = None  # last error or skip reason
    status_code: int | None = None
    attempt: Attempt | None = None
    count_attempt: bool = True  # False: the claim did not spend an attempt (rate-limit deferral)
    # With a delivered settlement: start following this submission (same transaction). It
    # replaces any earlier submission of the delivery (a resend, a retry after a rejection).
    follow_up: FollowUp | None = None


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
    erased: str | None = None  # RETENTION or FORGET: the conversion's personal data is gone
    # The destination's verdict on a queued submission (impact.com), when it is followed:
    # following | accepted | duplicate | rejected | unresolved, and what the last look saw.
    confirmation: str | None = None
    confirmation_detail: str | None = None
    conversion_id: int | None = None


@dataclass(slots=True)
class Forgotten:
    """What `forget` changed."""

    conversions: int = 0  # conversions whose personal data was erased
    events: int = 0  # raw event bodies erased
    deliveries: int = 0  # pending deliveries failed with ERASED_BY_FORGET
    compacted: bool = True  # False: SQLite's WAL still holds old pages (another process reading)
    memories: int = 0  # remembered attribution ids removed (RELAY_ATTRIBUTION__MEMORY)

    @property
    def records(self) -> int:
        return self.conversions + self.events + self.deliveries + self.memories


@dataclass(slots=True)
class Retained:
    """One bounded batch of retention (`retain`)."""

    conversions: int = 0  # conversions erased in this batch
    events: int = 0  # raw event bodies erased in this batch
    done: bool = True  # nothing is left to look at in this run
    cursor: Any = None  # where the next batch of this run starts (pass it back)
    busy: bool = False  # another process is running retention now (PostgreSQL); try later
    memories: int = 0  # remembered attribution ids removed in this batch


@dataclass(slots=True)
class SubmissionClaim:
    """A leased submission to look at (`claim_submissions`)."""

    id: int
    delivery_id: int
    destination: str
    uri: str
    kind: str  # conversion | modification | reversal
    checks: int  # looks so far
    started_at: float
    lease_token: str
    order_key: str  # the conversion's, for log lines
    attempt: int  # the delivery's attempt count, for the attempt log


@dataclass(slots=True)
class SubmissionResult:
    """What one look found (`settle_submission`)."""

    state: str  # one of SUBMISSION_STATES
    detail: str  # what the look saw, for `relay deliveries`
    attempt: Attempt | None = None  # the attempt-log line (outcome "follow-up")
    next_check_at: float | None = None  # for following
    counted: bool = True  # False: no look was made (the rate budget is spent); checks unchanged
    error_type: str | None = None
    error_reason: str | None = None
    # For rejected: the delivery turns failed with this as its last error.
    delivery_error: str | None = None


@dataclass(slots=True)
class RefundSibling:
    """A refund of the same purchase (the refund itself included) and its delivery there."""

    conversion_id: int
    total: Any  # Decimal
    currency: str | None
    delivery_status: str | None  # its delivery to the destination asked about
    submitted: str | None  # what that delivery submitted: conversion | modification | reversal
    confirmation: str | None  # the submission's state


@dataclass(slots=True)
class RefundTarget:
    """What a refund's delivery needs to know about the purchase it refunds (`refund_target`).

    `purchase` is None when the ledger holds no purchase or renewal with the refund's link
    (relay/refunds.py `link_ref`). `refunds` are every refund recorded for that link."""

    link: str | None
    purchase: Conversion | None = None
    purchase_created_at: float | None = None
    delivery_status: str | None = None  # the purchase's delivery to the destination
    delivery_error: str | None = None
    next_attempt_at: float | None = None
    confirmation: str | None = None  # its submission's state there
    next_check_at: float | None = None
    refunds: list[RefundSibling] = field(default_factory=list)


@dataclass(slots=True)
class StoredConversion:
    """A conversion row as the console shows it: the row ids, when it was recorded, and
    the normalized conversion."""

    id: int
    event_row: int
    created_at: float
    conversion: Conversion
    erased: str | None = None  # RETENTION or FORGET: its personal data is gone


@dataclass(slots=True)
class DestinationError:
    """The most recent failed attempt at one destination (`add_tallies` keeps it)."""

    at: float
    error: str
    status_code: int | None = None
    delivery_id: int | None = None


# Tally kinds (`add_tallies`): webhooks by source and outcome, delivery results by
# destination and outcome, counted per hour.
TALLY_WEBHOOK = "webhook"
TALLY_DELIVERY = "delivery"


@dataclass(slots=True)
class ReconcileState:
    """One source's reconcile (relay/reconcile.py): how far the processor's API has been read
    and who is reading it now."""

    source: str
    mark: float | None = None  # high-water mark: everything that happened before was read
    last_run_at: float | None = None
    last_success_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    runs: int = 0  # successful runs
    failures: int = 0  # failed runs
    lease_owner: str | None = None  # the process reconciling it now (PostgreSQL: one at a time)
    lease_until: float | None = None

    @property
    def failing(self) -> bool:
        """The last run failed (no success since the last error)."""
        return self.last_error_at is not None and (
            self.last_success_at is None or self.last_error_at > self.last_success_at
        )


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
    # RELAY_ATTRIBUTION__MEMORY, applied by `record` and `replay` (Intake sets it).
    attribution_memory: str = "first"

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
        """In one transaction: the event (deduped on source + event id) with its status
        and reason, each conversion (deduped on source + kind + order key) and, for each
        new conversion, one pending delivery per destination. Durable when it returns.
        An ignored or quarantined event comes with no conversions (same group commit)."""

    @abc.abstractmethod
    async def events(
        self,
        statuses: Sequence[str] = (),
        source: str | None = None,
        since: float | None = None,
        limit: int | None = 50,
        ids: Sequence[int] = (),
        with_body: bool = False,
        oldest_first: bool = False,
        before: tuple[float, int] | None = None,
    ) -> list[StoredEvent]:
        """Stored events by time received, newest first (oldest first for replay),
        filtered by status, source, received at or after `since`, and row ids.
        `limit=None`: all of them. Bodies only `with_body`. `before` (received_at, id):
        only events listed after that one, newest first (keyset paging)."""

    @abc.abstractmethod
    async def replay(
        self,
        event_row: int,
        status: str,
        reason: str | None,
        event_id: str,
        conversions: Sequence[Conversion],
        destinations_for: Callable[[Conversion], Sequence[str]],
        now: float,
        dry_run: bool = False,
    ) -> Recorded:
        """In one transaction: set the stored event's status, reason and replayed_at (and
        its event id, when a quarantined body that had only a synthetic id now reads and
        no other row holds that id), then record the conversions as `record` does, under
        this event (deduped on order key; deliveries only for new conversions).
        `dry_run`: everything is rolled back and the Recorded says what would be done."""

    @abc.abstractmethod
    async def conversions_by_key(
        self, keys: Sequence[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], Conversion]:
        """The recorded conversions for these (source, kind, order key)s."""

    @abc.abstractmethod
    async def without_delivery(
        self,
        destination: str,
        since: float,
        until: float | None = None,
        after: int = 0,
        limit: int = 500,
    ) -> list[tuple[int, Conversion]]:
        """(conversion row id, conversion) for conversions recorded in [since, until) that
        have no delivery to `destination`, by row id ascending, ids > `after` (paging).
        Conversions whose personal data is erased (retention, `forget`) are left out: they
        cannot be sent."""

    @abc.abstractmethod
    async def add_deliveries(
        self, destination: str, conversion_ids: Sequence[int], now: float
    ) -> int:
        """One pending delivery to `destination` for each of these conversions that has
        none yet; how many were added."""

    @abc.abstractmethod
    async def resend(self, ids: Sequence[int], now: float) -> list[int]:
        """Put these deliveries back to pending, now, with a fresh attempt budget — only
        those still `delivered` — keeping their attempt history plus one `resend` line.
        Returns the ids requeued."""

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
        """{'by_status': {(destination, status): n}, 'oldest_pending_age': s}.

        The same cost at 10 deliveries and at 10M: counts are kept by triggers on
        `deliveries` (every write path is counted without knowing it), the oldest pending
        age comes from an index."""

    @abc.abstractmethod
    async def retain(
        self, cutoff: float, now: float, cursor: Any = None, limit: int = 500
    ) -> Retained:
        """One bounded batch of retention: erase the personal data of conversions whose
        conversion time (`occurred_at`) is before `cutoff` and which have no pending
        delivery, and the raw bodies of events none of whose conversions keeps its data
        (events without conversions: received before `cutoff`). Looks at no more than
        about `limit` rows, in its own short transaction; call again with the returned
        cursor until `done`. Safe to run from several processes at once."""

    async def forget(
        self, *, email: str | None = None, customer_id: str | None = None, now: float
    ) -> Forgotten:
        """Erase one buyer's personal data now: every conversion with this email or
        customer id (or sharing an event with one), their events' raw bodies, every other
        stored body that mentions the email or the customer id (ignored events included),
        and the customer key linking them (so the buyer, if they come back, is a new
        customer). Their pending deliveries fail with ERASED_BY_FORGET. Works in short
        transactions; on SQLite the bytes are gone from the file (WAL included) when it
        returns.

        Finding the buyer: their customer keys (the email's hash, `id:<customer id>`), then
        a scan of the conversions still holding data for the email (under a customer id's
        key), then the same buyer's other customer ids, then a scan of every stored body
        still held (retention keeps that to the last RELAY_RETENTION_DAYS, plus what is
        not settled) for the address or a customer id as a JSON string. An address that a
        body spells differently (JSON \\u escapes) is not found by the scan."""
        email = (email or "").strip().lower() or None
        customer_id = (customer_id or "").strip() or None
        if email is None and customer_id is None:
            raise ValueError("forget needs an email or a customer id")
        keys = [email_key(email)] if email else []
        if customer_id:
            keys.append(f"id:{customer_id}")
        conversions, customers = await self._forget_by_keys(keys)
        if email:  # the email under a customer id's key
            cursor: Any = None
            while True:
                found, seen_customers, cursor = await self._forget_scan_conversions(
                    email, cursor, SCAN_CHUNK
                )
                conversions |= found
                customers |= seen_customers
                if cursor is None:
                    break
        if customer_id:
            customers.add(customer_id)
        more = [f"id:{c}" for c in sorted(customers) if f"id:{c}" not in keys]
        if more:  # the same buyer under their customer id, with another email or none
            found, _ = await self._forget_by_keys(more)
            conversions |= found
        # Their remembered attribution ids, under every key they are known by.
        memories = await self._forget_memory(keys + more)
        events: set[int] = set()
        after: int | None = 0
        while after is not None:  # every other stored body naming the buyer
            found_events, after = await self._forget_scan_events(
                email, sorted(customers), after, SCAN_CHUNK
            )
            events |= found_events
        result = Forgotten(memories=memories)
        queue, seen = sorted(conversions), set(conversions)
        event_queue, seen_events = sorted(events), set(events)
        while queue or event_queue:
            chunk, queue = queue[:ERASE_CHUNK], queue[ERASE_CHUNK:]
            echunk, event_queue = event_queue[:ERASE_CHUNK], event_queue[ERASE_CHUNK:]
            changed, related, erased_events = await self._forget_chunk(chunk, echunk, now)
            result.conversions += changed.conversions
            result.events += changed.events
            result.deliveries += changed.deliveries
            seen_events |= erased_events
            for cid in sorted(related - seen):  # conversions of an erased event: the same buyer
                seen.add(cid)
                queue.append(cid)
        result.compacted = await self.compact()
        return result

    # The steps of `forget`, each its own short transaction (see the SQLite backend).
    async def _forget_by_keys(self, keys: list[str]) -> tuple[set[int], set[str]]:
        """Conversions (erased or not) with these customer keys; the customer ids named."""
        raise NotImplementedError

    async def _forget_memory(self, keys: list[str]) -> int:
        """Remove the remembered attribution ids under these customer keys; how many."""
        raise NotImplementedError

    async def _forget_scan_conversions(
        self, email: str, cursor: Any, limit: int
    ) -> tuple[set[int], set[str], Any]:
        """Up to `limit` conversions still holding data, from `cursor`: those mentioning
        the email, the customer ids they carry, and the next cursor (None at the end)."""
        raise NotImplementedError

    async def _forget_scan_events(
        self, email: str | None, customers: list[str], after: int, chunk: int
    ) -> tuple[set[int], int | None]:
        """Events with ids in (after, after + chunk] whose body still held mentions the
        buyer; the next `after` (None at the end)."""
        raise NotImplementedError

    async def _forget_chunk(
        self, conversions: list[int], events: list[int], now: float
    ) -> tuple[Forgotten, set[int], set[int]]:
        """Erase these conversions (customer key included), fail their pending
        deliveries, erase their events' bodies and these events' bodies. Returns the
        counts, the other conversions of their events still holding data, and the events
        now erased."""
        raise NotImplementedError

    async def compact(self) -> bool:
        """Housekeeping after retention, run hourly by the worker: SQLite checkpoints and
        truncates its WAL (no older copy of an erased page stays in it), PostgreSQL folds
        the per-connection counter rows of `stats`. False when it could not finish now."""
        return True

    # ------------------------------------------------------------ console reads
    #
    # Every read below costs the same whatever the size of the ledger: each one walks an
    # index for at most the rows it returns (or a bounded window of recent time).

    @abc.abstractmethod
    async def add_tallies(
        self,
        hour: int,
        counts: Mapping[tuple[str, str, str], int],
        errors: Mapping[str, DestinationError],
        prune_before: int,
    ) -> None:
        """Add `counts` ((kind, name, outcome) → n, kind TALLY_WEBHOOK or TALLY_DELIVERY) to
        the per-hour tallies of `hour` (epoch seconds of the hour's start), keep the newer
        of each destination's last error, and drop hours before `prune_before`. Adding is
        commutative, so processes sharing a ledger may each add their own counts."""

    @abc.abstractmethod
    async def tallies(self, since_hour: int) -> dict[tuple[str, str, str], int]:
        """The tallies of the hours from `since_hour` on, summed per (kind, name, outcome)."""

    @abc.abstractmethod
    async def destination_errors(self) -> dict[str, DestinationError]:
        """Each destination's most recent failed attempt, as `add_tallies` kept it."""

    @abc.abstractmethod
    async def oldest_pending(self, destinations: Sequence[str]) -> dict[str, float]:
        """When the oldest pending delivery of each destination was recorded (destinations
        with nothing pending are left out)."""

    @abc.abstractmethod
    async def delivery_page(
        self,
        statuses: Sequence[str],
        destinations: Sequence[str],
        source: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before: tuple[float, int] | None = None,
        limit: int = 50,
    ) -> list[DeliveryRow]:
        """Deliveries in these statuses to these destinations, newest first (by the time
        recorded, then id), listed after `before` = (created_at, id) of the last one shown
        (keyset paging), of conversions from `source`, recorded in [since, until). Each
        (status, destination) pair is a range of the deliveries_status_age index
        (status, destination, created_at) and the pairs are merged, so a page reads about
        `limit` rows per pair, not the ledger."""

    @abc.abstractmethod
    async def conversion(self, conversion_id: int) -> StoredConversion | None:
        """One conversion by row id."""

    @abc.abstractmethod
    async def conversion_deliveries(self, conversion_id: int) -> list[DeliveryRow]:
        """The deliveries of one conversion, by destination."""

    @abc.abstractmethod
    async def find_conversions(
        self,
        sources: Sequence[str],
        order_key: str | None = None,
        email_hash: str | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> list[StoredConversion]:
        """Conversions with this order key (any of `sources`, any kind) or whose buyer's
        email has this `email_hash` (see `email_hash()`), newest first, ids below
        `before`. Both are index lookups."""

    @abc.abstractmethod
    async def find_events(self, sources: Sequence[str], event_id: str) -> list[StoredEvent]:
        """The stored events with this processor event id (any of `sources`), no body."""

    # ---------------------------------------------------------------- reconcile

    @abc.abstractmethod
    async def reconcile_lease(
        self, source: str, owner: str, now: float, until: float
    ) -> ReconcileState | None:
        """Take (or renew) the right to reconcile `source` until `until`: the state, or None
        when another owner holds a lease that has not run out. One statement, so two
        processes can never both hold it."""

    @abc.abstractmethod
    async def reconcile_progress(
        self, source: str, owner: str, mark: float | None, until: float
    ) -> bool:
        """Move the mark forward to `mark` (never back) and extend the lease to `until`;
        False when the lease is no longer ours (nothing changed)."""

    @abc.abstractmethod
    async def reconcile_done(
        self, source: str, owner: str, now: float, mark: float | None, error: str | None
    ) -> None:
        """End a run and release the lease: success (error None) moves the mark forward to
        `mark` and counts the run; a failure records the error and keeps the mark."""

    @abc.abstractmethod
    async def reconcile_states(self) -> list[ReconcileState]:
        """Every source's reconcile state (for /metrics), by source."""

    @abc.abstractmethod
    async def existing(self, source: str, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """The (kind, order key) pairs of `source` the ledger already holds (dry runs)."""

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

    # ------------------------------------------------------------ submissions (impact.com)

    @abc.abstractmethod
    async def claim_submissions(
        self, destinations: Sequence[str], limit: int, lease_seconds: float, now: float
    ) -> list[SubmissionClaim]:
        """Lease up to `limit` followed submissions whose next look is due. No two
        processes hold the same submission at once (PostgreSQL: SKIP LOCKED)."""

    @abc.abstractmethod
    async def settle_submission(
        self, claim: SubmissionClaim, result: SubmissionResult, now: float
    ) -> bool:
        """In one transaction: the submission's new state, its attempt-log line, the
        outcome counters and, for a rejection, the delivery turned failed with the
        destination's reason (only while it is still delivered). False when the lease
        was lost (the submission was replaced by a resend, or another process took it)."""

    @abc.abstractmethod
    async def hold_submissions(self, destination: str, until: float) -> int:
        """No look at this destination's followed submissions before `until` (its rate
        budget is spent): shared by every process. How many were held back."""

    @abc.abstractmethod
    async def next_submission_due(self, destinations: Sequence[str]) -> float | None:
        """When the earliest followed submission of these destinations is due."""

    @abc.abstractmethod
    async def submission_stats(self) -> dict[str, Any]:
        """{'following': {destination: n}, 'outcomes': {(destination, outcome, error_type,
        reason): n}}: counters kept in the same transactions as the states (O(1) reads)."""

    @abc.abstractmethod
    async def refund_target(self, conversion_id: int, destination: str) -> RefundTarget:
        """For a refund conversion: the purchase or renewal it refunds (by its link), that
        purchase's delivery to `destination` and its submission there, and every refund
        recorded for the same purchase with their deliveries to `destination`."""


def reason_label(error_reason: str | None) -> str:
    """The first code of a destination's ErrorReason ("CONTRACT_NOT_FOUND RESTRICTED_…"),
    as a bounded /metrics label: upper-case letters, digits and _ only, else OTHER."""
    first = (error_reason or "").split()[:1]
    code = first[0] if first else ""
    if not code:
        return ""
    ok = len(code) <= 40 and all(
        ch.isascii() and (ch.isupper() or ch.isdigit() or ch == "_") for ch in code
    )
    return code if ok else "OTHER"


MEMORY_KINDS = frozenset({"subscription_renewed", "subscription_cancelled", "refund"})


def remembered(conversion: Conversion, memory: str, known: dict[str, str] | None) -> Conversion:
    """The conversion with the customer's remembered attribution ids, when it is a renewal,
    a cancellation or a refund whose own event carried none (`known`: the ids remembered
    for its source and customer key, or None). The store calls it inside `record`."""
    if memory == "off" or not known or conversion.attribution:
        return conversion
    if conversion.kind not in MEMORY_KINDS:
        return conversion
    return conversion.replace(
        attribution=dict(known), refs={**conversion.refs, "attribution_memory": memory}
    )


def memory_kind(conversion: Conversion, memory: str) -> bool:
    """Whether `record` looks up the customer's remembered ids for this conversion: only
    a renewal, cancellation or refund without ids of its own (one indexed lookup)."""
    return memory != "off" and not conversion.attribution and conversion.kind in MEMORY_KINDS


def customer_key(conversion: Conversion) -> str | None:
    if conversion.customer.id:
        return "id:" + conversion.customer.id
    if conversion.customer.email:
        return email_key(conversion.customer.email)
    return None


def upper_bound(
    before: tuple[float, int] | None, until: float | None
) -> tuple[tuple[float, int] | None, float | None]:
    """A page's one upper bound on (created_at, id): the keyset position `before` or the
    end of the time range `until`, whichever is lower (it implies the other). Given both,
    SQLite walks its index from the higher one and filters its way down to the other."""
    if before is None or until is None:
        return before, until
    return (before, None) if before[0] < until else (None, until)


def email_hash(email: str | None) -> str | None:
    """SHA-256 (hex) of the normalized email (trimmed, lower case): stored with each
    conversion and indexed, so a search by email is a lookup and never reads emails."""
    if not email or not email.strip():
        return None
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


def stored_email_hash(data: bytes) -> str | None:
    """`email_hash` of a stored conversion's JSON (`Conversion.to_json`): what the schema
    upgrade computes for rows recorded before conversions carried it."""
    customer = orjson.loads(data).get("customer") or {}
    email = customer.get("email")
    return email_hash(email) if isinstance(email, str) else None


# refs keys that point at a person rather than at an order (removed with the personal data)
PERSONAL_REFS = frozenset({"customer", "customer_id", "client_reference_id"})


def erase_personal(conversion: Conversion) -> Conversion:
    """The conversion without its buyer: no customer fields, metadata, attribution ids or
    refs pointing at the person. What identifies the order stays (kind, order key, time,
    amounts, items, processor order ids), so refunds and dedupe keep working."""
    return conversion.replace(
        customer=Customer(),
        attribution={},
        metadata={},
        refs={k: v for k, v in conversion.refs.items() if k not in PERSONAL_REFS},
    )


def email_key(email: str) -> str:
    """The customer key a conversion with this email and no customer id has."""
    return "email:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()


def mentions(raw: bytes, email: str | None, customer_ids: Sequence[str] = ()) -> bool:
    """Whether a stored body names this buyer: the email as a whole address (ignoring
    case, so "xa@b.com" and "a@b.community" do not count for "a@b.com") or a customer id
    as a whole JSON string. `forget` finds candidates in SQL, then checks them here."""
    text = raw.decode("utf-8", "replace")
    if email and re.search(
        r"(?<![\w.%+-])" + re.escape(email) + r"(?![\w-]|\.\w)", text, re.IGNORECASE
    ):
        return True
    return any(f'"{cid}"' in text for cid in customer_ids)


def open_store(url: str) -> Store:
    if url.startswith("sqlite:"):
        from relay.store.sqlite import SQLiteStore

        return SQLiteStore(url)
    if url.startswith(("postgresql:", "postgres:")):
        from relay.store.postgres import PostgresStore  # type: ignore[import-not-found]

        return PostgresStore(url)  # type: ignore[no-any-return]
    raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]!r}")
