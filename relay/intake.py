"""Intake: what happens to an authentic event body, whoever brought it.

    verified body ──parse──▶ ParsedEvent ──test-mode rule──▶ attribution ──record──▶ Result

The webhook endpoint (after verification), `relay replay` (a stored raw body) and
`relay backfill` (an event fetched from the processor's API) all go through
`Intake.accept`, so the three can never disagree about an order key, a test-mode
decision or an attribution id.

`accept` does no HTTP; it raises PayloadError for a body the source cannot read and
StoreError when the ledger cannot take the event (nothing is then recorded).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relay import attribution
from relay.conversion import Conversion
from relay.destinations import Destination
from relay.errors import PayloadError
from relay.sources import ParsedEvent, Source
from relay.store import EventRecord, Recorded, Store

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
IGNORED = "ignored"

# A shape no check in a parser foresaw is still the payload's fault, never a 500.
UNREADABLE = (ValueError, TypeError, ArithmeticError, LookupError, AttributeError)


@dataclass(slots=True)
class Result:
    status: str  # accepted | duplicate | ignored
    parsed: ParsedEvent
    reason: str | None = None  # why it is ignored
    recorded: Recorded | None = None  # what the ledger did (accepted, duplicate)

    @property
    def event_id(self) -> str:
        return self.parsed.event_id


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

    def plan(self, conversion: Conversion) -> list[str]:
        """The destinations that take this conversion."""
        return [name for name, dest in self.destinations.items() if dest.accepts(conversion)]

    def is_sandbox(self, source: str) -> bool:
        return bool(getattr(getattr(self.settings, source), "sandbox", False))

    def parse(self, source: str, body: bytes) -> ParsedEvent:
        """The source's parse, with every unforeseen shape turned into a PayloadError."""
        try:
            return self.sources[source].parse(body)
        except PayloadError:
            raise
        except UNREADABLE as exc:
            raise PayloadError(f"cannot read the {source} event ({type(exc).__name__})") from None

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
        if reason is None and not parsed.conversions:
            reason = "event carries no conversion"
        return reason

    async def accept(self, source: str, body: bytes, received_at: float) -> Result:
        parsed = self.parse(source, body)
        reason = self.decide(source, parsed)
        if reason is not None:
            return Result(IGNORED, parsed, reason=reason)
        keys = self.settings.attribution
        conversions = [attribution.attach(c, keys) for c in parsed.conversions]
        event = EventRecord(source, parsed.event_id, parsed.event_type, received_at, body)
        recorded = await self.store.record(event, conversions, self.plan)
        return Result(DUPLICATE if recorded.duplicate else ACCEPTED, parsed, recorded=recorded)
