"""`relay replay`: read stored raw bodies again with the current code and configuration.

Typical uses: after `RELAY_DELIVER_TEST_EVENTS=true` (ignored test events become
conversions), after renaming an attribution key, after upgrading relay past a parser
fix (quarantined events become readable). Every event goes through `Intake.replay`,
so the result is exactly what the webhook would give today; the ledger's dedupe makes
a second run find nothing new.

Selection: the ids given (any status), else ignored and quarantined events received
in the last 30 days (`DEFAULT_SINCE`), narrowed by `--status`, `--source`,
`--since`. Events are replayed oldest first, one at a time, so refunds and
new-customer flags come out in the order they happened.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from relay.conversion import Conversion
from relay.errors import ConfigError
from relay.intake import ACCEPTED, Intake, Replayed
from relay.store import IGNORED, QUARANTINED, StoredEvent

DEFAULT_SINCE = "30d"
DEFAULT_STATUSES = (IGNORED, QUARANTINED)
CHUNK = 200  # bodies read from the ledger at a time


@dataclass(slots=True)
class Summary:
    events: int = 0
    changed: int = 0
    conversions: int = 0
    deliveries: int = 0
    now_accepted: int = 0
    left_alone: int = 0
    lines: list[str] = field(default_factory=list)


async def select(
    intake: Intake,
    ids: Sequence[int],
    statuses: Sequence[str],
    source: str | None,
    since: float | None,
) -> list[StoredEvent]:
    """The events to replay, oldest first, without bodies. Unknown ids are a ConfigError
    (nothing is replayed)."""
    rows = await intake.store.events(
        statuses, source, since, limit=None, ids=ids, oldest_first=True
    )
    if ids:
        missing = sorted(set(ids) - {row.id for row in rows})
        if missing and not (statuses or source or since is not None):
            raise ConfigError(
                f"no stored event with id {', '.join(map(str, missing))} (see `relay events`)"
            )
    return rows


async def replay(
    intake: Intake,
    events: Sequence[StoredEvent],
    now: float,
    dry_run: bool,
    say: Callable[[str], None],
) -> Summary:
    """Replay `events` in order; `say` gets one line per event as it is done."""
    summary = Summary()
    claimed: set[tuple[str, str, str]] = set()  # a dry run's "new" keys, seen by later events
    for start in range(0, len(events), CHUNK):
        ids = [e.id for e in events[start : start + CHUNK]]
        for event in await intake.store.events(
            ids=ids, limit=None, with_body=True, oldest_first=True
        ):
            result = await intake.replay(event, now, dry_run)
            if dry_run and result.recorded is not None:
                _as_one_run(intake, result, claimed)
            summary.events += 1
            summary.changed += result.changed
            summary.left_alone += result.skipped is not None
            if result.recorded is not None:
                summary.conversions += len(result.recorded.conversions)
                summary.deliveries += result.recorded.deliveries
            if result.status == ACCEPTED and event.status != ACCEPTED:
                summary.now_accepted += 1
            say(describe(result, dry_run))
    return summary


def _as_one_run(intake: Intake, result: Replayed, claimed: set[tuple[str, str, str]]) -> None:
    """A dry run rolls each event back, so a later event with the same order key would
    look new too: count each key once, as a real run would."""
    recorded = result.recorded
    assert recorded is not None
    fresh: list[Conversion] = []
    for conversion in recorded.conversions:
        key = (conversion.source, conversion.kind, conversion.order_key)
        if key in claimed:
            recorded.known.append(conversion)
            recorded.deliveries -= len(intake.plan(conversion))
        else:
            claimed.add(key)
            fresh.append(conversion)
    recorded.conversions = fresh


def _keys(conversions: Sequence[Conversion]) -> str:
    return ", ".join(f"{c.kind}:{c.order_key}" for c in conversions)


def _plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"


def describe(result: Replayed, dry_run: bool = False) -> str:
    """One line: what the replay found (or, in a dry run, would do) for one event."""
    event = result.event
    head = f"#{event.id} {event.source} {event.event_id}"
    if event.event_type:
        head += f" ({event.event_type[:64]})"
    if result.skipped:
        return f"{head}: left alone: {result.skipped}"
    parts: list[str] = []
    if result.status != event.status:
        parts.append(f"{event.status} → {result.status}")
    else:
        parts.append(f"still {result.status}")
    if result.status != ACCEPTED and result.reason:
        parts[-1] += f": {result.reason}"
    if result.kept_accepted:
        parts.append(
            f"kept accepted (read today it would be {result.kept_accepted}; "
            "its recorded conversions stand)"
        )
    recorded = result.recorded
    if recorded is not None and recorded.conversions:
        verb = "would record " if dry_run else ""
        parts.append(
            f"{verb}{_plural(len(recorded.conversions), 'new conversion')}"
            f" ({_keys(recorded.conversions)}),"
            f" {_plural(recorded.deliveries, 'delivery', 'deliveries')}"
        )
    elif result.status == ACCEPTED:
        parts.append("nothing new")
    if recorded is not None and recorded.known:
        parts.append(f"already recorded: {_keys(recorded.known)} (kept as recorded)")
    for new, old in result.differs:
        names = sorted(
            k
            for k in new.attribution.keys() | old.attribution.keys()
            if new.attribution.get(k) != old.attribution.get(k)
        )
        parts.append(
            f"{new.kind}:{new.order_key} was recorded with other attribution ids than it would"
            f" get today ({', '.join(names)}); replay never changes a recorded conversion"
        )
    return ("(dry run) " if dry_run else "") + f"{head}: " + ", ".join(parts)


def summarize(summary: Summary, dry_run: bool) -> str:
    if not summary.events:
        return "no stored event matches (see `relay events`)"
    totals = (
        f"{_plural(summary.conversions, 'new conversion')},"
        f" {_plural(summary.deliveries, 'delivery', 'deliveries')}"
    )
    if dry_run:
        return (
            f"dry run: {_plural(summary.events, 'event')} read, nothing was changed;"
            f" a replay would accept {summary.now_accepted} of them and record {totals}"
        )
    return (
        f"replayed {_plural(summary.events, 'event')}: {summary.changed} changed,"
        f" {summary.now_accepted} now accepted, {totals}"
        + (f"; {summary.left_alone} left alone" if summary.left_alone else "")
    )
