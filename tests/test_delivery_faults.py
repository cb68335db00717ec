"""Faults on the delivery side: outages, rate limits, dead letters, crashes, shutdown,
a store that stops answering — and what the logs may never contain."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import httpx

from tests.conftest import core_env
from tests.emulators.impact import ImpactEmulator
from tests.emulators.simmer import SimmerEmulator
from tests.helpers import (
    IMPACT_SID,
    IMPACT_TOKEN,
    SIMMER_KEY,
    SIMMER_PROJECT,
    checkout_event,
    wait_until,
)


def statuses(relay) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for row in relay.deliveries():
        out.setdefault(row["destination"], []).append(row["status"])
    return out


def test_5xx_and_429_are_retried_with_retry_after(relay, simmer, impact):
    simmer.fail_next(2, 502, body={"error": "downstream write failed"})
    impact.fail_next(1, 429, {"Retry-After": "2"})
    relay.post_stripe(checkout_event(metadata={"irclickid": "c"}))
    wait_until(lambda: simmer.accepted and impact.accepted, timeout=20, message="delivered")
    assert len(simmer.requests) == 3
    assert len(impact.requests) == 2
    # impact asked for 2 s; the retry did not come sooner.
    assert impact.requests[1].at - impact.requests[0].at >= 1.9
    rows = {r["destination"]: r for r in relay.deliveries()}
    assert rows["simmer"]["attempts"] == 3 and rows["simmer"]["status"] == "delivered"


def test_4xx_is_dead_lettered_with_the_destination_text_then_retry_requeues(relay, simmer, impact):
    simmer.fail_next(1, 400, body={"error": "occurred_at must be within the last 7 days"})
    relay.post_stripe(checkout_event(metadata={"irclickid": "c"}))
    wait_until(lambda: relay.deliveries(status="failed"), message="dead letter")
    failed = relay.deliveries(status="failed")[0]
    assert failed["destination"] == "simmer"
    assert "HTTP 400" in failed["last_error"] and "within the last 7 days" in failed["last_error"]
    assert failed["attempts"] == 1  # never retried

    listing = relay.cli("deliveries", "--status", "failed").stdout
    assert "simmer" in listing and "HTTP 400" in listing
    out = relay.cli("retry", "--failed", "--destination", "simmer").stdout
    assert "requeued 1 delivery" in out
    wait_until(lambda: simmer.accepted, message="delivered after requeue")
    assert [r["status"] for r in relay.deliveries(destination="simmer")] == ["delivered"]
    # The delivery's history, as an operator reads it.
    history = relay.cli("deliveries", "--id", str(failed["id"])).stdout
    assert "attempt 1:" in history and "HTTP 400" in history and "attempt 2:" in history
    [one] = relay.deliveries(id=str(failed["id"]))
    assert [(a["outcome"], a["status_code"]) for a in one["attempt_log"]] == [("failed", 400), ("delivered", 200)]


def test_unsendable_conversions_are_skipped_with_a_reason(relay, simmer, impact):
    relay.post_stripe(checkout_event(email=None, customer=None))  # guest, no email, no click id
    rows = wait_until(
        lambda: (r := relay.deliveries(status="skipped")) and len(r) == 2 and r, message="skips"
    )
    reasons = {r["destination"]: r["last_error"] for r in rows}
    assert "email" in reasons["simmer"]
    assert "attribution key" in reasons["impact"]
    assert simmer.requests == [] and impact.requests == []


def test_client_side_rate_limit_keeps_simmer_under_its_limit(tmp_path, simmer, impact, relay_factory):
    env = core_env(tmp_path / "relay.db", simmer.url, impact.url) | {
        "RELAY_SIMMER__RATE_LIMIT_PER_MINUTE": "5"}
    simmer.rate_limit_per_minute = 5
    relay = relay_factory(env)
    for _ in range(8):
        assert relay.post_stripe(checkout_event(metadata={"irclickid": "c"})).status_code == 200
    wait_until(lambda: len(simmer.accepted) == 5, message="first five")

    def deferred() -> list[dict]:
        # The other three wait for the next minute's slots: the first one that found no
        # slot was put back to then, and the destination paused until then.
        rows = [r for r in relay.deliveries(destination="simmer") if r["status"] == "pending"]
        later = [r for r in rows if r["next_attempt_at"] > time.time() + 20]
        return rows if len(rows) == 3 and later else []

    pending = wait_until(deferred, message="three deliveries deferred to the next minute")
    assert len(simmer.accepted) == 5
    assert not any(code == 429 for _, code, _ in simmer.rejected)  # never provoked a 429
    assert all(r["attempts"] == 0 for r in pending)  # a deferral is not a spent attempt
    wait_until(lambda: len(impact.accepted) == 8, message="impact unaffected")


def test_crash_while_destinations_are_down_loses_nothing_and_doubles_nothing(tmp_path, relay_factory):
    # Made but not started: their ports are held, and connections to them are refused.
    simmer = SimmerEmulator(SIMMER_KEY, SIMMER_PROJECT)
    impact = ImpactEmulator(IMPACT_SID, IMPACT_TOKEN)
    env = core_env(tmp_path / "relay.db", simmer.url, impact.url)
    env["RELAY_SIMMER__RATE_LIMIT_PER_MINUTE"] = "0"  # failed connects would fill the 50/min window
    relay = relay_factory(env)
    events = [checkout_event(metadata={"irclickid": f"click-{i}"}) for i in range(25)]
    for event in events:  # destinations are down: every webhook is still acked
        assert relay.post_stripe(event).json()["status"] == "accepted"
    wait_until(lambda: len([r for r in relay.deliveries() if r["attempts"] >= 1 and r["last_error"]]) >= 10,
               message="failed attempts recorded")
    assert relay.kill(signal.SIGKILL) == -signal.SIGKILL

    simmer.rate_limit_per_minute = None
    simmer.start()
    impact.start()
    try:
        relay.start()
        wait_until(lambda: len(relay.deliveries(status="delivered")) == 50, timeout=40,
                   message="all 50 deliveries")
        orders = {e["data"]["object"]["id"] for e in events}
        assert set(simmer.writes) == {f"order:{SIMMER_PROJECT}:{o}" for o in orders}
        assert all(n == 1 for n in simmer.writes.values())
        assert len(impact.actions) == 25 and impact.duplicates == []
    finally:
        simmer.stop()
        impact.stop()


def test_crash_mid_request_resends_only_what_the_destination_deduplicates(tmp_path, simmer, impact, relay_factory):
    env = core_env(tmp_path / "relay.db", simmer.url, impact.url)
    relay = relay_factory(env)
    simmer.delay = impact.delay = 1.5
    events = [checkout_event(metadata={"irclickid": f"k{i}"}) for i in range(10)]
    for event in events:
        relay.post_stripe(event)
    wait_until(lambda: simmer.requests and impact.requests, message="requests in flight")
    relay.kill(signal.SIGKILL)
    simmer.delay = impact.delay = 0
    relay.start()
    wait_until(lambda: len(relay.deliveries(status="delivered")) == 20, timeout=40, message="all delivered")
    # Requests cut off by the crash were resent; both APIs key on the order id,
    # so each order is still exactly one conversion there.
    assert len(simmer.conversions) == 10
    assert len(impact.actions) == 10


def test_sigterm_lets_in_flight_deliveries_finish(tmp_path, simmer, impact, relay_factory):
    relay = relay_factory(core_env(tmp_path / "relay.db", simmer.url, impact.url))
    simmer.delay = 1.0
    relay.post_stripe(checkout_event(metadata={"irclickid": "c"}))
    wait_until(lambda: simmer.requests, message="simmer request started")
    # uvicorn re-raises the signal after its graceful shutdown, as a process manager expects.
    assert relay.kill(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in relay.logs()
    with sqlite3.connect(tmp_path / "relay.db") as conn:
        rows = dict(conn.execute("SELECT destination, status FROM deliveries"))
    assert rows == {"simmer": "delivered", "impact": "delivered"}


def test_store_unavailable_answers_503_then_recovers(tmp_path, simmer, impact, relay_factory):
    db = tmp_path / "relay.db"
    env = core_env(db, simmer.url, impact.url) | {"RELAY_DATABASE_URL": f"sqlite:///{db}?busy_timeout=300"}
    relay = relay_factory(env)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        event = checkout_event(metadata={"irclickid": "c"})
        response = relay.post_stripe(event)
        assert response.status_code == 503
        assert "retry" in response.json()["error"]
        health = httpx.get(relay.url + "/healthz")
        assert health.status_code == 503
        assert health.json() == {"status": "unavailable", "store": "not answering"}  # no path, no detail
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert httpx.get(relay.url + "/healthz").status_code == 200
    assert relay.post_stripe(event).json()["status"] == "accepted"  # Stripe's retry now lands
    wait_until(lambda: simmer.accepted and impact.accepted, message="delivered")


def test_logs_never_contain_emails_or_secrets(tmp_path, simmer, impact, relay_factory):
    env = core_env(tmp_path / "relay.db", simmer.url, impact.url) | {"RELAY_LOG_LEVEL": "DEBUG"}
    relay = relay_factory(env)
    email = "private.person@example.org"
    simmer.fail_next(1, 400, body={"error": f"email {email} is not allowed"})  # an API echoing the email
    relay.post_stripe(checkout_event(email=email, metadata={"irclickid": "c"}))
    relay.post_stripe(checkout_event(email=email), secret="whsec_wrong")
    relay.post_stripe(checkout_event(email=email, currency="zzz"))
    wait_until(lambda: relay.deliveries(status="failed") and impact.accepted, message="settled")
    relay.cli("check")
    relay.stop()
    logs = relay.logs()
    assert "delivered destination=impact" in logs  # the log is not empty
    assert "failed destination=simmer" in logs
    for secret in (email, "private.person", SIMMER_KEY, IMPACT_TOKEN, "whsec_test_secret", "whsec_other"):
        assert secret not in logs, secret
    failed = relay.deliveries(status="failed")[0]
    assert email not in failed["last_error"] and "[email]" in failed["last_error"]
    check = relay.cli("check").stdout
    for secret in (SIMMER_KEY, IMPACT_TOKEN, "whsec_test_secret"):
        assert secret not in check
    assert "********" in check


def test_invalid_configuration_fails_at_start_naming_the_variable(tmp_path: Path, relay_factory):
    relay = relay_factory({"RELAY_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
                           "RELAY_IMPACT__ACCOUNT_SID": "IRx", "RELAY_WORKER__CONCURRENCY": "8"}, start=False)
    result = relay.cli("check", check=False)
    assert result.returncode != 0
    assert "RELAY_IMPACT__AUTH_TOKEN is required" in result.stderr
    relay.env["RELAY_IMPACT__ACCOUNT_SID"] = ""
    relay.env["RELAY_WORKER__CONCURRENCY"] = "lots"
    result = relay.cli("serve", check=False)
    assert result.returncode != 0 and "RELAY_WORKER__CONCURRENCY" in result.stderr


def test_a_slow_destination_keeps_its_lease(relay, simmer, impact):
    # The lease is 3 s in these tests; Simmer takes 4.5 s to answer. The worker's
    # heartbeat keeps the claim, so nobody (not even this worker) sends it twice.
    simmer.delay = 4.5
    relay.post_stripe(checkout_event(metadata={"irclickid": "c"}))
    rows = wait_until(lambda: [r for r in relay.deliveries(destination="simmer") if r["status"] == "delivered"],
                      timeout=20, message="slow delivery")
    # Every claim counts an attempt: one attempt means nobody claimed it a second time.
    assert [(r["status"], r["attempts"]) for r in rows] == [("delivered", 1)]
    assert len(simmer.requests) == 1
