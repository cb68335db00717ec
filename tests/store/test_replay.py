"""Intake.accept and replay against the real store, on SQLite and PostgreSQL: what is
stored for each status, and the replay rules (never demote, never change a recorded
conversion, a dry run counts an order key once)."""

from __future__ import annotations

import time

import pytest

from relay import replay as replaying
from relay.destinations import build_destinations
from relay.intake import Intake
from relay.settings import Settings
from relay.sources import build_sources
from relay.store import ACCEPTED, IGNORED, QUARANTINED, Store
from tests.helpers import STRIPE_SECRET, body_of, checkout_event
from tests.pgdb import pg_databases  # noqa: F401 - fixture
from tests.store import test_store as contract

anyio_backend = contract.anyio_backend
store_url = contract.store_url
opener = contract.opener
store = contract.store

pytestmark = pytest.mark.anyio


def intake(store: Store, **changes) -> Intake:
    settings = Settings(
        stripe={"webhook_secrets": STRIPE_SECRET},
        simmer={"secret_key": "simmer_sk_x", "project_id": "p", "url": "http://127.0.0.1:9/c"},
        **changes,
    )
    return Intake(settings, store, build_sources(settings), build_destinations(settings))


async def run(intake: Intake, dry_run: bool = False, **select) -> tuple[replaying.Summary, list[str]]:
    lines: list[str] = []
    chosen = await replaying.select(intake, select.get("ids", ()),
                                    select.get("statuses", replaying.DEFAULT_STATUSES), None, None)
    summary = await replaying.replay(intake, chosen, time.time(), dry_run, lines.append)
    return summary, lines


async def test_accept_stores_every_status_in_one_record_call(store: Store) -> None:
    now = time.time()
    live, test, unknown = checkout_event(), checkout_event(livemode=False), checkout_event(currency="zzz")
    intake_ = intake(store)
    results = [await intake_.accept("stripe", body_of(e), now) for e in (live, test, unknown)]
    assert [r.status for r in results] == [ACCEPTED, IGNORED, QUARANTINED]
    assert results[2].reason == "unknown currency code 'zzz'"
    rows = {r.event_id: r for r in await store.events(with_body=True, limit=None)}
    assert [rows[e["id"]].status for e in (live, test, unknown)] == [ACCEPTED, IGNORED, QUARANTINED]
    assert rows[unknown["id"]].body == body_of(unknown)  # the raw bytes, as received
    assert (await intake_.accept("stripe", body_of(test), now)).status == "duplicate"
    assert len(await store.events(limit=None)) == 3


async def test_dry_run_counts_an_order_key_once_like_the_real_run(store: Store) -> None:
    completed = checkout_event(livemode=False)
    later = dict(completed, id="evt_1SameSessionAsyncPaid00", type="checkout.session.async_payment_succeeded")
    off = intake(store)
    for event in (completed, later):
        assert (await off.accept("stripe", body_of(event), time.time())).status == IGNORED
    on = intake(store, deliver_test_events=True)
    dry, dry_lines = await run(on, dry_run=True)
    real, real_lines = await run(on)
    assert (dry.conversions, dry.deliveries) == (real.conversions, real.deliveries) == (1, 1)
    order = completed["data"]["object"]["id"]
    for lines in (dry_lines, real_lines):
        assert f"1 new conversion (purchase:{order}), 1 delivery" in lines[0]
        assert f"already recorded: purchase:{order}" in lines[1]
    assert len(await store.deliveries()) == 1


async def test_an_accepted_event_is_never_demoted(store: Store) -> None:
    event = checkout_event(livemode=False)
    on = intake(store, deliver_test_events=True)
    assert (await on.accept("stripe", body_of(event), time.time())).status == ACCEPTED
    [row] = await store.events()
    off = intake(store)  # test events turned off again
    summary, [line] = await run(off, ids=[row.id], statuses=())
    assert "still accepted" in line and "kept accepted (read today it would be ignored: test-mode" in line
    assert summary.changed == 0
    [after] = await store.events()
    assert after.status == ACCEPTED and len(await store.deliveries()) == 1


async def test_a_source_no_longer_configured_is_left_alone(store: Store) -> None:
    event = checkout_event(currency="zzz")
    await intake(store).accept("stripe", body_of(event), time.time())
    without = Intake(Settings(), store, {}, {})
    summary, [line] = await run(without)
    assert "left alone: source 'stripe' is not configured now" in line
    assert summary.left_alone == 1
    [row] = await store.events()
    assert row.status == QUARANTINED and row.replayed_at is None


async def test_an_event_whose_body_was_removed_is_left_alone(store: Store) -> None:
    from relay.store import EventRecord

    await store.record(EventRecord("stripe", "evt_gone", "t", time.time(), b"", IGNORED, "x"), [],
                       lambda _: ())
    summary, [line] = await run(intake(store, deliver_test_events=True))
    assert "left alone: its raw body is no longer stored" in line
    [row] = await store.events()
    assert (row.status, row.replayed_at) == (IGNORED, None)
