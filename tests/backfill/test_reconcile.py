"""Reconcile: the worker process re-reads the processor's API by itself (real `relay`
processes, a real SQLite file, PostgreSQL for the one-at-a-time rule).

Missed webhooks come back without a command; API failures are one log line, counted on
/metrics, and the next run resumes from the last good point."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.backfill.conftest import CB_KEY, STRIPE_KEY, env_for
from tests.backfill.test_processors import cb_payment
from tests.backfill.test_stripe import purchases
from tests.conftest import core_env
from tests.helpers import wait_until
from tests.pgdb import pg_databases, pg_url  # noqa: F401 - fixtures
from tests.test_multiprocess import WorkerProcess


def reconcile_env(env: dict[str, str], source: str, overlap: str = "5") -> dict[str, str]:
    prefix = f"RELAY_{source.upper()}__RECONCILE"
    return env | {f"{prefix}_INTERVAL_SECONDS": "1", f"{prefix}_OVERLAP_SECONDS": overlap,
                  f"{prefix}_DELAY_SECONDS": "0"}


def metric(relay, name: str, source: str) -> float | None:
    text = httpx.get(relay.url + "/metrics", timeout=5).text
    match = re.search(rf'^{name}{{source="{source}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else None


def runs(relay, source: str) -> float:
    return metric(relay, "relay_reconcile_runs_total", source) or 0


def test_missed_stripe_webhooks_come_back_without_a_command(tmp_path, simmer, impact, stripe_api,
                                                           relay_factory):
    env = reconcile_env(env_for(tmp_path / "relay.db", simmer, impact, stripe=stripe_api), "stripe")
    relay = relay_factory(env)
    wait_until(lambda: runs(relay, "stripe") >= 1, message="a first reconcile")
    # Three purchases whose webhooks never arrived (relay unreachable, endpoint misconfigured…).
    missed = purchases(3, time.time() - 2, step=0.5)
    for event in missed:
        stripe_api.add_event(event)
    wait_until(lambda: len(simmer.conversions) == 3 and len(impact.actions) == 3, timeout=30,
               message="the missed purchases at both destinations")
    assert re.search(r"reconcile source=stripe window=\S+ events=3 new=3 already=0", relay.logs())
    # Each later run sees them again in its overlap: already recorded, never sent twice.
    seen = runs(relay, "stripe")
    wait_until(lambda: runs(relay, "stripe") >= seen + 2, message="two more runs")
    assert re.search(r"events=3 new=0 already=3", relay.logs())
    assert set(simmer.writes.values()) == {1} and impact.duplicates == []
    # The late webhook is a duplicate; /metrics says when reconcile last succeeded.
    assert relay.post_stripe(missed[1]).json()["status"] == "duplicate"
    assert time.time() - metric(relay, "relay_reconcile_last_success_timestamp_seconds", "stripe") < 30
    assert metric(relay, "relay_reconcile_failing", "stripe") == 0
    assert STRIPE_KEY not in relay.logs()


def test_an_api_error_is_logged_counted_and_the_next_run_resumes(tmp_path, simmer, impact,
                                                                 stripe_api, relay_factory):
    env = reconcile_env(env_for(tmp_path / "relay.db", simmer, impact, stripe=stripe_api), "stripe")
    relay = relay_factory(env)
    wait_until(lambda: runs(relay, "stripe") >= 1, message="a first reconcile")
    missed = purchases(2, time.time() - 1, step=0.5)
    stripe_api.fail_next(1, 401, body={"error": {"type": "invalid_request_error",
                                                 "message": f"Invalid API Key provided: {STRIPE_KEY}"}})
    for event in missed:
        stripe_api.add_event(event)
    wait_until(lambda: len(simmer.conversions) == 2, timeout=30, message="recovered after the 401")
    logs = relay.logs()
    assert re.search(r"reconcile source=stripe failed after 0 events \(new=0\): Stripe GET "
                     r"/v1/events answered 401 \(invalid_request_error: Invalid API Key provided: "
                     r"\*+\): the API key was refused; check RELAY_STRIPE__API_KEY; the next run "
                     r"resumes from \S+", logs)
    assert STRIPE_KEY not in logs  # not even the key Stripe echoed back
    assert metric(relay, "relay_reconcile_errors_total", "stripe") == 1
    # The run after the failure read from the same point the failed one had aimed at.
    [failed] = stripe_api.faulted
    path, failed_query = stripe_api.queries[failed]
    following = next(q for p, q in stripe_api.queries[failed + 1:] if p == "/v1/events")
    assert path == "/v1/events" and dict(following)["created[gte]"] == dict(failed_query)["created[gte]"]
    wait_until(lambda: metric(relay, "relay_reconcile_failing", "stripe") == 0,
               message="the failure cleared by a good run")
    assert set(simmer.writes.values()) == {1}


def test_chargebee_failure_mid_run_keeps_what_was_read(tmp_path, simmer, impact, cb_api,
                                                       relay_factory):
    """Chargebee lists oldest first: a page that cannot be read stops the run, and the next
    starts from the last event recorded before it, not from the start of the failed window."""
    env = reconcile_env(env_for(tmp_path / "relay.db", simmer, impact, chargebee=cb_api),
                        "chargebee", overlap="0")
    relay = relay_factory(env)
    wait_until(lambda: runs(relay, "chargebee") >= 1, message="a first reconcile")
    relay.stop()  # relay down …
    first_mark = metric_free_mark(tmp_path / "relay.db", "chargebee")
    time.sleep(1.1)
    at = int(time.time())  # … while six payments happen
    for n in range(6):
        cb_api.add_event(cb_payment(n, at))
    cb_api.page_cap = 2  # pages [0 1] [2 3] [4 5]; the third cannot be read once
    cb_api.malformed_when(lambda path, q: cb_api.start_of(q.get("offset")) == 4,
                          raw=b'{"list": [{"event": ')
    relay.start()
    wait_until(lambda: len(simmer.conversions) == 6, timeout=30, message="all six recovered")
    assert re.search(r"reconcile source=chargebee failed after 4 events \(new=4\): Chargebee GET "
                     r"/api/v2/events answered 200 with a body that is not JSON", relay.logs())
    [failed] = cb_api.faulted
    failed_run = [dict(q) for p, q in cb_api.queries[:failed] if "offset" not in dict(q)][-1]
    resumed = next(dict(q) for p, q in cb_api.queries[failed + 1:] if "offset" not in dict(q))
    assert int(failed_run["occurred_at[after]"]) == int(first_mark) - 1  # the whole downtime
    assert int(resumed["occurred_at[after]"]) == at - 1  # from the last event read
    assert set(simmer.writes.values()) == {1} and impact.duplicates == []
    assert CB_KEY not in relay.logs()


def metric_free_mark(db, source: str) -> float:
    """The reconcile mark as the ledger holds it (read with sqlite3 while relay is stopped)."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        return float(conn.execute("SELECT mark FROM reconcile_state WHERE source = ?",
                                  (source,)).fetchone()[0])


@pytest.mark.postgres
@pytest.mark.slow
def test_on_postgres_one_process_reconciles_a_source_at_a_time(tmp_path, simmer, impact, stripe_api,
                                                               pg_url):  # noqa: F811
    env = core_env(tmp_path / "unused.db", simmer.url, impact.url)
    env.update(reconcile_env({"RELAY_DATABASE_URL": pg_url, "RELAY_STRIPE__WEBHOOK_SECRETS": "whsec_x",
                              "RELAY_STRIPE__API_KEY": STRIPE_KEY,
                              "RELAY_STRIPE__API_BASE": stripe_api.url}, "stripe"))
    stripe_api.delay = 0.4  # each run holds its lease for a while
    workers = [WorkerProcess(env, tmp_path, name).start() for name in ("a", "b", "c")]
    try:
        wait_until(lambda: len(stripe_api.queries_of("/v1/events")) >= 2, timeout=60,
                   message="reconcile running")
        missed = purchases(5, time.time() - 1, step=0.1)
        for event in missed:
            stripe_api.add_event(event)
        wait_until(lambda: len(simmer.conversions) == 5 and len(impact.actions) == 5, timeout=60,
                   message="the missed purchases delivered")
        wait_until(lambda: len(stripe_api.queries_of("/v1/events")) >= 10, timeout=60,
                   message="ten reconcile runs")
    finally:
        stopping = time.time()  # a stopping worker hands its lease over at once, leaving its
        for worker in workers:  # cut request behind: only the time before counts
            worker.stop()
    # No two runs ever overlapped: each request started after the previous one ended.
    starts = sorted(r.at for r in stripe_api.requests if r.path == "/v1/events" and r.at < stopping)
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert min(gaps) >= stripe_api.delay * 0.9, gaps
    assert set(simmer.writes.values()) == {1} and impact.duplicates == []
    logs = "".join(w.logs() for w in workers)
    assert logs.count("reconcile source=stripe window=") >= len(starts) - 1  # the last may be cut
    assert sum("reconcile source=stripe window=" in w.logs() for w in workers) >= 1
