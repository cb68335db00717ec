"""Sending recorded conversions again: to a destination added after the fact
(`relay backfill --destination D`) and, on purpose, once more (`relay resend ID…`).

Neither creates a conversion. Backfill adds the one delivery a conversion lacks for D
(the ledger's unique (conversion, destination) pair makes a second one impossible);
resend puts a delivered delivery back to pending, so the request goes out again with
the same idempotency key the destination already saw.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from relay.conversion import Conversion
from relay.destinations import Destination
from relay.errors import ConfigError
from relay.store import DELIVERED, FORGET, PENDING, DeliveryRow, Store

PAGE = 500  # conversions read from the ledger at a time
SAMPLE = 5


@dataclass(slots=True)
class Plan:
    destination: str
    since: float
    until: float | None
    planned: int = 0  # deliveries added (or, in a dry run, that would be)
    left_out: Counter[str] = field(default_factory=Counter)  # reason → how many
    sample: list[Conversion] = field(default_factory=list)


def window_text(dest: Destination) -> str:
    assert dest.max_age is not None
    days = dest.max_age.total_seconds() / 86400
    return f"{round(days)}-day window" if days >= 1 else f"{dest.max_age} window"


def default_since(name: str, dest: Destination, now: float) -> float:
    """The destination's own window, or a ConfigError asking for --since."""
    if dest.max_age is None:
        raise ConfigError(
            f"give --since T (for example --since 30d): {name} takes conversions of any age,"
            " so relay will not guess how far back to go"
        )
    return now - dest.max_age.total_seconds()


async def backfill_destination(
    store: Store,
    name: str,
    dest: Destination,
    since: float,
    until: float | None,
    now: float,
    dry_run: bool = False,
) -> Plan:
    """Plan one pending delivery to `name` for every conversion recorded in [since, until)
    that has none there, within the destination's rules (the kinds it takes, its age
    window). The worker then delivers them like any other."""
    plan = Plan(name, since, until)
    after = 0
    while True:
        page = await store.without_delivery(name, since, until, after, PAGE)
        if not page:
            return plan
        after = page[-1][0]
        ids: list[int] = []
        for conversion_id, conversion in page:
            if not dest.accepts(conversion):
                plan.left_out[f"{conversion.kind} is not a kind {name} takes"] += 1
                continue
            if dest.max_age is not None and (
                now - conversion.occurred_at.timestamp() > dest.max_age.total_seconds()
            ):
                plan.left_out[f"older than {name}'s {window_text(dest)}"] += 1
                continue
            ids.append(conversion_id)
            if len(plan.sample) < SAMPLE:
                plan.sample.append(conversion)
        plan.planned += len(ids) if dry_run else await store.add_deliveries(name, ids, now)


def stamp(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def report(plan: Plan, dry_run: bool) -> list[str]:
    span = f"recorded since {stamp(plan.since)}" + (
        f" until {stamp(plan.until)}" if plan.until is not None else ""
    )
    n = plan.planned
    word = "delivery" if n == 1 else "deliveries"
    if dry_run:
        lines = [f"dry run: would plan {n} {word} to {plan.destination} for conversions {span}"]
    else:
        lines = [f"planned {n} {word} to {plan.destination} for conversions {span}"]
        if n:
            lines[0] += " (the worker sends them now)"
    if plan.left_out:
        left = sum(plan.left_out.values())
        lines.append(
            f"left out {left}: "
            + "; ".join(f"{count} {reason}" for reason, count in sorted(plan.left_out.items()))
        )
    if dry_run and plan.sample:
        lines.append("sample:")
        lines.extend(
            f"  {c.kind}:{c.order_key}  {c.total if c.total is not None else '-'}"
            f" {c.currency or ''}  {c.occurred_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}"
            for c in plan.sample
        )
    return lines


# ------------------------------------------------------------------ resend


async def check_resend(
    store: Store, ids: Sequence[int], destinations: Mapping[str, Destination], force: bool
) -> tuple[list[DeliveryRow], list[str]]:
    """(the deliveries that may be resent, why each other id may not)."""
    ok: list[DeliveryRow] = []
    refused: list[str] = []
    for delivery_id in dict.fromkeys(ids):
        rows = await store.deliveries(delivery_id=delivery_id)
        if not rows:
            refused.append(f"delivery {delivery_id}: no such delivery (see `relay deliveries`)")
            continue
        row = rows[0]
        if row.status != DELIVERED:
            hint = (
                "the worker sends it anyway"
                if row.status == PENDING
                else f"`relay retry {delivery_id}` sends it again"
            )
            refused.append(f"delivery {delivery_id} is {row.status}, not delivered: {hint}")
            continue
        if row.erased is not None:  # the worker would fail it: "not sent: … erased"
            by = "relay forget" if row.erased == FORGET else "retention (RELAY_RETENTION_DAYS)"
            refused.append(
                f"delivery {delivery_id}: the buyer's personal data was erased by {by},"
                " so it cannot be sent again"
            )
            continue
        dest = destinations.get(row.destination)
        if dest is None:
            refused.append(
                f"delivery {delivery_id} goes to {row.destination}, which is not configured now"
            )
            continue
        if not dest.resend_ambiguous and not force:
            refused.append(
                f"delivery {delivery_id} goes to {row.destination}, which cannot deduplicate:"
                f" a resend counts {row.kind}:{row.order_key} twice there."
                " Add --force if it really lost it"
            )
            continue
        ok.append(row)
    return ok, refused


async def resend(store: Store, rows: Sequence[DeliveryRow]) -> list[int]:
    return await store.resend([row.id for row in rows], time.time())
