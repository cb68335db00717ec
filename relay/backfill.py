"""Backfill: what a processor's API lists for a period, recorded exactly as if its webhooks
had arrived.

    processor API ──history(since, until)──▶ Found(body) ──Intake.accept──▶ ledger

Each body goes through `Intake.accept`, the path a verified webhook takes (parse → test-mode
rule → attribution → record), so the event ids and order keys are the webhook's: a webhook
that arrives later is a duplicate, and so is a backfilled event the webhook already
brought. Each event is recorded in its own `store.record` (nothing is half-recorded); an
interrupted run is resumed by running it again, since what is recorded is not recorded
twice. Up to WINDOW events are in flight at once, so the store's group commit shares
fsyncs between them; they are still recorded, reported and checkpointed in API order.

`run()` is used by `relay backfill <source>` (cli.py) and by the worker's reconcile
(reconcile.py). A processor API error (ProcessorAPIError) stops the run after the events
already fetched are recorded; the caller reports it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from relay.errors import NotJSONObject
from relay.intake import ACCEPTED, DUPLICATE, IGNORED, QUARANTINED, Intake
from relay.processors import Found, Processor, stamp

WINDOW = 64  # events in flight at once (recorded in order; one group commit can take them all)
CHECKPOINT_SECONDS = 2.0  # how often an ascending run reports its progress

NEW = "new"  # recorded (or, dry run, would be) at least one new conversion
KNOWN = "known"  # a new event whose conversions the ledger already had (same order keys)
UNREADABLE = "unreadable"  # not even a JSON object: stored nowhere (counted, never fatal)
# Also: duplicate (the event is in the ledger), ignored and quarantined (stored with that
# status and its reason, as a webhook would be: `relay events`, `relay replay`).


@dataclass(slots=True)
class Line:
    """What happened to one fetched event."""

    ref: str  # the processor's event id (or "orders/123")
    event_type: str
    at: float
    outcome: str  # new | duplicate | known | ignored | quarantined | unreadable
    detail: str = ""
    conversions: int = 0  # new conversions
    deliveries: int = 0

    def text(self) -> str:
        return f"  {self.ref}  {self.event_type}  {stamp(self.at)}  {self.detail}"


@dataclass(slots=True)
class Report:
    source: str
    since: float
    until: float
    dry_run: bool = False
    events: int = 0
    new: int = 0  # new conversions recorded (dry run: that would be)
    deliveries: int = 0
    duplicates: int = 0  # events already in the ledger, or whose conversions all were
    ignored: int = 0
    quarantined: int = 0
    unreadable: int = 0
    last_at: float | None = None  # the latest event handled (ascending runs: the checkpoint)
    failed_event: bool = False  # an event could not be recorded (no checkpoint may pass it)
    notes: list[str] = field(default_factory=list)

    def add(self, line: Line) -> None:
        self.events += 1
        self.new += line.conversions
        self.deliveries += line.deliveries
        if line.outcome in (DUPLICATE, KNOWN):
            self.duplicates += 1
        elif line.outcome == IGNORED:
            self.ignored += 1
        elif line.outcome == QUARANTINED:
            self.quarantined += 1
        elif line.outcome == UNREADABLE:
            self.unreadable += 1
        self.last_at = line.at if self.last_at is None else max(self.last_at, line.at)

    def summary(self) -> str:
        verb = "would be recorded" if self.dry_run else "recorded"
        text = (
            f"{self.source} {stamp(self.since)} → {stamp(self.until)}: {self.events} event"
            f"{'' if self.events == 1 else 's'} found; {self.new} new conversion"
            f"{'' if self.new == 1 else 's'} {verb}"
        )
        if not self.dry_run:
            text += f" ({self.deliveries} deliver{'y' if self.deliveries == 1 else 'ies'} planned)"
        text += f", {self.duplicates} already recorded, {self.ignored} ignored"
        if self.quarantined:
            text += f", {self.quarantined} quarantined"
        if self.unreadable:
            text += f", {self.unreadable} unreadable"
        return text


async def run(
    intake: Intake,
    processor: Processor,
    since: float,
    until: float,
    *,
    dry_run: bool = False,
    on_line: Callable[[Line], None] | None = None,
    checkpoint: Callable[[float], Awaitable[None]] | None = None,
    report: Report | None = None,
) -> Report:
    """Fetch [since, until] from `processor` and record what the ledger lacks.

    `on_line` sees each event's outcome, in API order. `checkpoint(t)` is called now and
    then for ascending processors with a time before which every event is recorded.
    Raises ProcessorAPIError (after recording what was fetched) or StoreError."""
    source = processor.source
    report = report or Report(source, since, until, dry_run=dry_run)
    report.notes.extend(n for n in processor.notes if n not in report.notes)
    in_flight: deque[asyncio.Task[Line]] = deque()
    last_checkpoint = time.monotonic()

    async def settle_oldest() -> None:
        nonlocal last_checkpoint
        try:
            line = await in_flight.popleft()
        except BaseException:
            report.failed_event = True
            raise
        report.add(line)
        if on_line is not None:
            on_line(line)
        if (
            checkpoint is not None
            and processor.ascending
            and not report.failed_event
            and time.monotonic() - last_checkpoint >= CHECKPOINT_SECONDS
        ):
            last_checkpoint = time.monotonic()
            await checkpoint(line.at)

    handle = _dry_run if dry_run else _record
    try:
        async for found in processor.history(since, until):
            in_flight.append(asyncio.create_task(handle(intake, source, found)))
            if len(in_flight) >= WINDOW:
                await settle_oldest()
        while in_flight:
            await settle_oldest()
    finally:
        # An API error or a store error: what is already on its way is still recorded
        # and reported (each event is its own record); nothing else starts.
        while in_flight:
            try:
                await settle_oldest()
            except Exception:  # noqa: S112 - the first error is the one raised
                continue
    if checkpoint is not None and processor.ascending and report.last_at is not None:
        await checkpoint(report.last_at)
    return report


async def _record(intake: Intake, source: str, found: Found) -> Line:
    try:
        result = await intake.accept(source, found.body, time.time())
    except NotJSONObject as exc:
        return Line(found.ref, "?", found.at, UNREADABLE, f"unreadable: {exc}")
    parsed = result.parsed
    line = Line(parsed.event_id or found.ref, parsed.event_type or "?", found.at, result.status)
    if result.status == IGNORED:
        line.detail = f"ignored: {result.reason}"
        return line
    if result.status == QUARANTINED:
        line.detail = f"quarantined: {result.reason}"
        return line
    recorded = result.recorded
    assert recorded is not None
    if result.status == DUPLICATE:
        line.detail = "duplicate: this event is already in the ledger"
        return line
    assert result.status == ACCEPTED
    line.conversions, line.deliveries = len(recorded.conversions), recorded.deliveries
    if recorded.conversions:
        line.outcome = NEW
        line.detail = "recorded " + ", ".join(
            f"{c.kind} {c.order_key}" for c in recorded.conversions
        )
        plural = "y" if recorded.deliveries == 1 else "ies"
        line.detail += f" ({recorded.deliveries} deliver{plural})"
    else:
        line.outcome = KNOWN
        line.detail = "already recorded: " + ", ".join(
            f"{c.kind} {c.order_key}" for c in recorded.known
        )
    return line


async def _dry_run(intake: Intake, source: str, found: Found) -> Line:
    try:
        reading = intake.read(source, found.body)
    except NotJSONObject as exc:
        return Line(found.ref, "?", found.at, UNREADABLE, f"unreadable: {exc}")
    parsed = reading.parsed
    line = Line(parsed.event_id or found.ref, parsed.event_type or "?", found.at, reading.status)
    if reading.status != ACCEPTED:
        line.detail = f"would be {reading.status}: {reading.reason}"
        return line
    keys = [(c.kind, c.order_key) for c in reading.conversions]
    known = await intake.store.existing(source, keys)
    new = [k for k in keys if k not in known]
    if new:
        line.outcome, line.conversions = NEW, len(new)
        line.detail = "would record " + ", ".join(f"{kind} {key}" for kind, key in new)
    else:
        line.outcome = KNOWN
        line.detail = "already recorded: " + ", ".join(f"{kind} {key}" for kind, key in keys)
    return line
