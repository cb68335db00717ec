"""Intake: what happens to an authentic event body, whoever brought it.

    verified body ──parse──▶ ParsedEvent ──test-mode rule──▶ attribution ──record──▶ Result
                    │ a JSON object that cannot become conversions: quarantined (stored)
                    └ not a JSON object at all: NotJSONObject (400, stored nowhere)

The webhook endpoint (after verification), `relay replay` (a stored raw body) and
`relay backfill` (an event fetched from the processor's API) all go through
`Intake`, so the three can never disagree about an order key, a test-mode
decision or an attribution id.

Every event that reaches `accept` is stored with its raw body and a status —
accepted, ignored or quarantined — in the same group-committed `store.record`
call (no second transaction). `accept` does no HTTP; it raises NotJSONObject for a
body that is not a JSON object and StoreError when the ledger cannot take the event
(nothing is then recorded).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from relay import attribution
from relay.conversion import Conversion
from relay.destinations import Destination
from relay.errors import NotJSONObject, PayloadError
from relay.sources import UNREADABLE, ParsedEvent, Source
from relay.store import (
    ACCEPTED,
    FETCHING,
    IGNORED,
    QUARANTINED,
    EventRecord,
    Recorded,
    Store,
    StoredEvent,
)

DUPLICATE = "duplicate"
SYNTHETIC = "sha256:"  # the prefix of an event id derived from the body

__all__ = [
    "ACCEPTED",
    "DUPLICATE",
    "FETCHING",
    "IGNORED",
    "QUARANTINED",
    "Intake",
    "Replayed",
    "Result",
]


def synthetic_id(body: bytes) -> str:
    """A stable event id for a body without a readable one: the processor's retries of
    the same bytes are then duplicates."""
    return SYNTHETIC + hashlib.sha256(body).hexdigest()


@dataclass(slots=True)
class Result:
    status: str  # accepted | duplicate | ignored | quarantined
    parsed: ParsedEvent
    reason: str | None = None  # why it is ignored or quarantined
    recorded: Recorded | None = None  # what the ledger did

    @property
    def event_id(self) -> str:
        return self.parsed.event_id


@dataclass(slots=True)
class Reading:
    """What the current code and configuration make of a body, before the ledger."""

    status: str  # accepted | ignored | quarantined
    parsed: ParsedEvent
    reason: str | None = None
    conversions: list[Conversion] = field(default_factory=list)


@dataclass(slots=True)
class Replayed:
    """What `Intake.replay` found for one stored event."""

    event: StoredEvent
    status: str  # the event's status now (or, in a dry run, what it would be)
    reason: str | None
    recorded: Recorded | None = None  # None when the event was left alone
    # The re-parse reads this, but an accepted event stays accepted (its conversions stand).
    kept_accepted: str | None = None
    # (re-parsed, as recorded) for conversions already recorded whose attribution differs.
    differs: list[tuple[Conversion, Conversion]] = field(default_factory=list)
    skipped: str | None = None  # why nothing was tried (source not configured now)

    @property
    def changed(self) -> bool:
        return bool(self.recorded and (self.recorded.conversions or self.recorded.deliveries)) or (
            self.status != self.event.status or self.reason != self.event.reason
        )


class Intake:
    """Parse, apply the test-mode rule and attribution, record. One per app or command."""

    def __init__(
        self,
        settings: Any,
        store: Store,
        sources: Mapping[str, Source],
        destinations: Mapping[str, Destination],
    ) -> None:
        self.settings = settings
        self.store = store
        self.sources = sources
        self.destinations = destinations
        # Attribution memory is applied inside the store's record transaction.
        store.attribution_memory = settings.attribution.memory

    def plan(self, conversion: Conversion) -> list[str]:
        """The destinations that take this conversion."""
        return [name for name, dest in self.destinations.items() if dest.accepts(conversion)]

    def is_sandbox(self, source: str) -> bool:
        return bool(getattr(getattr(self.settings, source), "sandbox", False))

    def parse(self, source: str, body: bytes) -> ParsedEvent:
        """The source's parse, with every unforeseen shape turned into a PayloadError, and
        the checks every source shares (no negative totals)."""
        try:
            parsed = self.sources[source].parse(body)
        except PayloadError:
            raise
        except UNREADABLE as exc:
            raise PayloadError(f"cannot read the {source} event ({type(exc).__name__})") from None
        for conversion in parsed.conversions:
            if conversion.total is not None and conversion.total < 0:
                # Refunds carry the refunded amount as a positive total, too.
                error = PayloadError(
                    f"{conversion.kind} {conversion.order_key[:80]!r} has a negative total"
                    f" ({conversion.total} {conversion.currency or ''})".rstrip()
                )
                error.event_id, error.event_type = parsed.event_id, parsed.event_type
                raise error
        return parsed

    def decide(self, source: str, parsed: ParsedEvent) -> str | None:
        """Why this event is not relayed, or None. Relayed test events are marked as such."""
        reason = parsed.ignored
        if reason is None and (not parsed.livemode or self.is_sandbox(source)):
            if not self.settings.deliver_test_events:
                reason = "test-mode event (set RELAY_DELIVER_TEST_EVENTS=true to relay it)"
            else:  # relayed, marked as test data (sandbox deploys send "live-looking" events)
                parsed.conversions = [
                    c.replace(livemode=False) if c.livemode else c for c in parsed.conversions
                ]
        if reason is None and not parsed.conversions and parsed.fetch is None:
            reason = "event carries no conversion"
        return reason

    def read(self, source: str, body: bytes) -> Reading:
        """Parse, decide and attribute `body`; a JSON object that cannot become
        conversions is a quarantined Reading. Raises NotJSONObject for anything else."""
        try:
            parsed = self.parse(source, body)
        except NotJSONObject:
            raise
        except PayloadError as exc:
            parsed = ParsedEvent(
                event_id=exc.event_id or synthetic_id(body), event_type=exc.event_type or ""
            )
            return Reading(QUARANTINED, parsed, str(exc))
        if not parsed.event_id:  # e.g. an envelope without an id that a source still reads
            parsed.event_id = synthetic_id(body)
        reason = self.decide(source, parsed)
        if reason is not None:
            return Reading(IGNORED, parsed, reason)
        if parsed.fetch is not None:  # a thin event: the worker fetches its object
            return self._fetching(source, parsed)
        keys = self.settings.attribution
        conversions = [attribution.attach(c, keys) for c in parsed.conversions]
        return Reading(ACCEPTED, parsed, conversions=conversions)

    def _fetching(self, source: str, parsed: ParsedEvent) -> Reading:
        """Stored as `fetching` for the worker (relay/thin.py), or quarantined with the
        variable to set when there is no API key to fetch with (`relay replay` once set)."""
        from relay.settings import env_name

        fetch = parsed.fetch
        assert fetch is not None
        what = f"{fetch.object_type} {fetch.object_id[:80]}"
        missing = getattr(self.settings, source).api_missing()
        if missing:
            return Reading(
                QUARANTINED,
                parsed,
                f"thin event: its {what} is fetched with {env_name(source, missing[0])}, "
                "which is not set; set it, then run relay replay",
            )
        return Reading(FETCHING, parsed, f"thin event: the worker fetches {what}")

    async def accept(self, source: str, body: bytes, received_at: float) -> Result:
        """Store the event with its status (one group-committed `record` call) and, when
        accepted, its conversions and their deliveries. A duplicate changes nothing."""
        reading = self.read(source, body)
        parsed = reading.parsed
        event = EventRecord(
            source,
            parsed.event_id,
            parsed.event_type,
            received_at,
            body,
            reading.status,
            reading.reason,
        )
        recorded = await self.store.record(event, reading.conversions, self.plan)
        status = DUPLICATE if recorded.duplicate else reading.status
        return Result(status, parsed, reason=reading.reason, recorded=recorded)

    async def replay(self, event: StoredEvent, now: float, dry_run: bool = False) -> Replayed:
        """Re-read a stored raw body with the current code and configuration (no
        re-verification: it was verified when it arrived) and record what is new.

        - The event's status and reason become what the re-read says, except that an
          accepted event stays accepted: its conversions are recorded and stand.
        - New conversions are recorded under this event with their deliveries, deduped on
          order key like any other, so a second replay finds nothing new.
        - A conversion already recorded is kept exactly as recorded (it may have been
          delivered as it is); when the re-read attributes it differently, that is
          reported in `differs`, never written.
        - `dry_run`: the same work in a transaction that is rolled back."""
        if event.source not in self.sources:
            return Replayed(
                event,
                event.status,
                event.reason,
                skipped=f"source {event.source!r} is not configured now",
            )
        if not event.body:  # removed by retention, or never asked for
            return Replayed(
                event, event.status, event.reason, skipped="its raw body is no longer stored"
            )
        try:
            reading = self.read(event.source, event.body)
        except NotJSONObject as exc:  # only if a later relay reads bodies more strictly
            reading = Reading(QUARANTINED, ParsedEvent(event.event_id, event.event_type), str(exc))
        status, reason, conversions = reading.status, reading.reason, reading.conversions
        kept = None
        if event.status == ACCEPTED and status != ACCEPTED:
            kept = f"{status}: {reason}"
            status, reason, conversions = ACCEPTED, event.reason, []
        event_id = event.event_id
        if event_id.startswith(SYNTHETIC) and not reading.parsed.event_id.startswith(SYNTHETIC):
            event_id = reading.parsed.event_id  # the processor's own id, now readable
        recorded = await self.store.replay(
            event.id, status, reason, event_id, conversions, self.plan, now, dry_run
        )
        result = Replayed(event, status, reason, recorded, kept_accepted=kept)
        if recorded.known:
            keys = [(c.source, c.kind, c.order_key) for c in recorded.known]
            stored = await self.store.conversions_by_key(keys)
            for conversion, key in zip(recorded.known, keys, strict=True):
                before = stored.get(key)
                if before is not None and before.attribution != conversion.attribution:
                    result.differs.append((conversion, before))
        return result
