"""impact.com answers `200 QUEUED`: relay follows each submission to its outcome.

Real parts: signed Stripe webhooks → `relay serve` (a real process, a real SQLite file;
PostgreSQL with two `relay worker` processes for the concurrency case) → the impact
stand-in, whose submissions go Queued → In Progress → Complete as the test plans them
(accepted, rejected with an ErrorType/ErrorReason, never), and whose hourly budget
answers 429 with X-RateLimit-*. What a user checks: `relay deliveries`, `relay
deliveries --id N`, `/metrics`, the log.
"""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from tests.conftest import core_env
from tests.helpers import checkout_event, wait_until
from tests.pgdb import pg_databases, pg_url  # noqa: F401 - fixtures

FAST = {
    "RELAY_IMPACT__FOLLOW_UP_SECONDS": "0.3,0.5",
    "RELAY_WORKER__POLL_SECONDS": "0.3",
}


def impact_env(tmp_path, simmer, impact, **extra: str) -> dict[str, str]:
    return core_env(tmp_path / "relay.db", simmer.url, impact.url) | FAST | extra


def by_order(relay, destination: str = "impact") -> dict[str, dict]:
    return {r["order_key"]: r for r in relay.deliveries(destination=destination)}


def ids(event: dict) -> tuple[str, str]:
    """(the order key relay records: the Checkout Session id, impact's OrderId: its PaymentIntent)."""
    session = event["data"]["object"]
    return session["id"], session["payment_intent"]


def settled(relay, orders: list[str], *states: str, timeout: float = 30.0) -> dict[str, dict]:
    """Wait until each of these orders' impact delivery has a confirmation in `states`."""
    def check() -> dict[str, dict] | None:
        rows = by_order(relay)
        if all(o in rows and rows[o]["confirmation"] in states for o in orders):
            return rows
        return None

    return wait_until(check, timeout, message=f"impact outcomes {states} for {orders}")


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_accepted_rejected_and_duplicate_are_what_relay_deliveries_says(
        tmp_path, simmer, impact, relay_factory):
    relay = relay_factory(impact_env(tmp_path, simmer, impact))
    good = checkout_event(metadata={"irclickid": "click-good"})
    bad = checkout_event(metadata={"irclickid": "click-late"})
    good_key, pi_good = ids(good)
    bad_key, pi_bad = ids(bad)
    impact.plan(pi_bad, ("Contract Error", "OUTSIDE_ASSOCIATION_WINDOW"))
    for event in (good, bad):
        assert relay.post_stripe(event).status_code == 200

    rows = settled(relay, [good_key, bad_key], "accepted", "rejected")
    assert rows[good_key]["status"] == "delivered" and rows[good_key]["confirmation"] == "accepted"
    rejected = rows[bad_key]
    assert rejected["status"] == "failed"
    assert rejected["last_error"].startswith(
        "impact rejected the conversion: Contract Error: OUTSIDE_ASSOCIATION_WINDOW"
        " (the sale came after the click's referral window); submission A-")
    # impact had the action only for the accepted one.
    assert set(impact.credited) == {pi_good}

    # The table says it too, and --id shows the looks after the send.
    table = relay.cli("deliveries", "--destination", "impact").stdout
    assert "impact accepted: impact: conversion complete, no error" in table
    assert "impact rejected the conversion: Contract Error: OUTSIDE_ASSOCIATION_WINDOW" in table
    shown = relay.cli("deliveries", "--id", str(rejected["id"])).stdout
    assert "attempt 1:" in shown and "delivered" in shown
    assert re.search(r"follow-up 1: .*follow-up HTTP 200 .*impact: Queued", shown)
    assert re.search(r"follow-up 3: .*Contract Error: OUTSIDE_ASSOCIATION_WINDOW", shown)
    log = json.loads(relay.cli("deliveries", "--id", str(rejected["id"]), "--json").stdout)
    assert [a["outcome"] for a in log["attempt_log"]] == ["delivered"] + ["follow-up"] * 3

    # Sent again on purpose: impact has that OrderId already, which is fine.
    relay.cli("resend", str(rows[good_key]["id"]))
    wait_until(lambda: len(impact.submission_of(pi_good)) == 2, message="second submission")
    rows = settled(relay, [good_key], "duplicate")
    assert rows[good_key]["status"] == "delivered"
    assert "CONV_DUPLICATE" in rows[good_key]["confirmation_detail"]

    text = httpx.get(relay.url + "/metrics").text
    assert metric(text, "relay_submission_outcomes_total", outcome="rejected",
                  error_type="Contract Error", reason="OUTSIDE_ASSOCIATION_WINDOW") == 1
    assert metric(text, "relay_submission_outcomes_total", outcome="accepted") == 1
    assert metric(text, "relay_submission_outcomes_total", outcome="duplicate",
                  reason="CONV_DUPLICATE") == 1
    assert metric(text, "relay_submissions_following", destination="impact") == 0
    assert "impact rejected" in relay.logs()

    # After fixing the contract the user retries it: sent again, followed again.
    impact.plan(pi_bad, "accept")
    relay.cli("retry", str(rejected["id"]))
    rows = settled(relay, [bad_key], "accepted")
    assert rows[bad_key]["status"] == "delivered" and pi_bad in impact.credited


def test_a_submission_that_never_completes_is_surfaced(tmp_path, simmer, impact, relay_factory):
    relay = relay_factory(impact_env(tmp_path, simmer, impact,
                                     RELAY_IMPACT__FOLLOW_UP_HOURS="0.001"))  # 3.6 s
    event = checkout_event(metadata={"irclickid": "click-stuck"})
    key, pi = ids(event)
    impact.plan(pi, "never")
    assert relay.post_stripe(event).status_code == 200
    rows = settled(relay, [key], "unresolved")
    row = rows[key]
    assert row["status"] == "delivered"  # impact has it; it may still credit it
    assert row["confirmation_detail"].startswith("no outcome from impact within 0.001 h")
    assert "last look: impact: In Progress" in row["confirmation_detail"]
    assert "impact unresolved: no outcome from impact within 0.001 h" in relay.cli(
        "deliveries").stdout
    text = httpx.get(relay.url + "/metrics").text
    assert metric(text, "relay_submission_outcomes_total", outcome="unresolved") == 1
    assert re.search(r"impact gave no outcome for order=cs_\w+ .*no outcome from impact", relay.logs())
    looks = len(impact.looks)
    time.sleep(1.0)
    assert len(impact.looks) == looks  # given up: no more looks


def test_following_survives_a_restart(tmp_path, simmer, impact, relay_factory):
    impact.progress = "manual"  # nothing completes until the test says so
    env = impact_env(tmp_path, simmer, impact)
    relay = relay_factory(env)
    event = checkout_event(metadata={"irclickid": "click-restart"})
    key, pi = ids(event)
    impact.plan(pi, ("Validation", "ACTIONTRACKER_NOT_FOUND"))
    assert relay.post_stripe(event).status_code == 200
    wait_until(lambda: len(impact.looks) >= 2, message="looks before the restart")
    assert by_order(relay)[key]["confirmation"] == "following"
    relay.stop()
    impact.step(2)  # impact finishes while relay is down
    before = len(impact.looks)
    relay.start()
    rows = settled(relay, [key], "rejected")
    assert rows[key]["status"] == "failed"
    assert "ACTIONTRACKER_NOT_FOUND (the event type does not exist" in rows[key]["last_error"]
    assert len(impact.looks) == before + 1  # the ledger knew what to look at


def test_follow_ups_keep_within_impacts_hourly_budget(tmp_path, simmer, impact, relay_factory):
    impact.hourly_limit = 5
    impact.window_seconds = 4.0
    relay = relay_factory(impact_env(tmp_path, simmer, impact))
    events = [checkout_event(metadata={"irclickid": f"click-budget-{n}"}) for n in range(4)]
    for event in events:
        assert relay.post_stripe(event).status_code == 200
    orders = [ids(e)[0] for e in events]
    # 4 posts + 12 looks at 5 requests per 4 s: at least two windows' wait.
    rows = settled(relay, orders, "accepted", timeout=60)
    assert all(rows[o]["status"] == "delivered" for o in orders)
    limited = [seen for seen, status, _ in impact.rejected if status == 429]
    # relay reads X-RateLimit-Remaining and waits for the reset instead of running into 429s;
    # a 429 now and then (the window slides) is waited out, never hammered.
    assert len(limited) <= 2, [(s.method, s.at) for s in limited]
    assert len(impact.looks) == 12
    # 16 requests at 5 per window cannot fit in fewer than three windows: relay waited.
    assert impact.looks[-1].at - impact.requests[0].at >= 2 * impact.window_seconds


@pytest.mark.postgres
def test_two_workers_never_look_at_one_submission_at_once(tmp_path, simmer, impact, relay_factory,
                                                        pg_url):  # noqa: F811
    from tests.test_multiprocess import WorkerProcess

    impact.look_delay = 0.2  # a look takes a while: an overlap would be seen
    env = impact_env(tmp_path, simmer, impact, RELAY_DATABASE_URL=pg_url,
                     RELAY_IMPACT__FOLLOW_UP_SECONDS="0.1")
    web = relay_factory(env, "--no-worker")
    workers = [WorkerProcess(env, tmp_path, name).start() for name in ("a", "b")]
    try:
        events = [checkout_event(metadata={"irclickid": f"click-pg-{n}"}) for n in range(16)]
        for event in events:
            assert web.post_stripe(event).status_code == 200
        orders = [ids(e)[0] for e in events]
        settled(web, orders, "accepted", timeout=90)
    finally:
        for worker in workers:
            worker.stop()
    assert impact.overlaps == []
    assert sorted(sub.looks for sub in impact.submissions.values()) == [3] * 16
    both = [w.logs() for w in workers]
    assert all("follow-ups: following queued submissions of impact" in log for log in both)
