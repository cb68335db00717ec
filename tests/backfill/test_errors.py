"""What a user sees when a processor API misbehaves during `relay backfill`: a one-line
message naming the variable to fix or carrying the API's own error, exit status 1,
nothing half-recorded, and a rerun that carries on."""

from __future__ import annotations

import sqlite3
import time

import pytest

from tests.backfill.conftest import CB_KEY, LS_KEY, PADDLE_KEY, STRIPE_KEY, env_for
from tests.backfill.test_stripe import purchases
from tests.emulators.base import free_port
from tests.emulators.paddle_api import RATE_LIMITED as PADDLE_429
from tests.emulators.paddle_api import _error as paddle_error
from tests.emulators.stripe_api import RATE_LIMITED as STRIPE_429


def count(db, table: str) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608


@pytest.fixture
def cli(tmp_path, simmer, impact, relay_factory):
    """`relay …` with the processors' stand-ins configured, relay itself not running."""
    def run(apis: dict, *args: str, env: dict | None = None):
        full = env_for(tmp_path / "relay.db", simmer, impact, **apis) | (env or {})
        proc = relay_factory(full, start=False)
        return proc.cli(*args, check=False)
    return run


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("relay:")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(("source", "variable"), [
    ("stripe", "RELAY_STRIPE__API_KEY"),
    ("paddle", "RELAY_PADDLE__API_KEY"),
    ("lemonsqueezy", "RELAY_LEMONSQUEEZY__API_KEY"),
    ("chargebee", "RELAY_CHARGEBEE__SITE"),
])
def test_missing_credentials_name_the_variable(cli, tmp_path, source, variable):
    out = cli({}, "backfill", source, "--since", "1h")
    assert out.returncode == 1
    assert f"{variable} is not set" in one_line(out.stderr)
    assert count(tmp_path / "relay.db", "events") == 0


def test_bad_arguments_are_clear(cli):
    assert "--since is required" in cli({}, "backfill", "stripe").stderr
    assert "not a time" in cli({}, "backfill", "stripe", "--since", "yesterday").stderr
    assert "unknown source 'square'" in cli({}, "backfill", "square", "--since", "1h").stderr
    out = cli({}, "backfill", "stripe", "--since", "1h", "--until", "2h")
    assert out.returncode == 1 and "--since must be before --until" in out.stderr
    future = cli({}, "backfill", "stripe", "--since", "2099-01-01", "--until", "2099-02-01")
    assert future.returncode == 1 and "--since must be before --until" in future.stderr
    assert "too far back" in cli({}, "backfill", "stripe", "--since", "99999999d").stderr


def test_a_window_wholly_older_than_the_api_keeps_is_refused(cli, tmp_path, stripe_api):
    """Stripe keeps 30 days: `--since 60d --until 40d` has nothing to read. It used to run
    an inverted window (reading from 30 days ago *to* 40 days ago) and exit 0."""
    out = cli({"stripe": stripe_api}, "backfill", "stripe", "--since", "60d", "--until", "40d")
    assert out.returncode == 1, out
    assert "keeps 30 days of events" in one_line(out.stderr) and "--until" in out.stderr
    assert stripe_api.requests == [] and count(tmp_path / "relay.db", "events") == 0


def test_refused_keys_name_the_variable_and_record_nothing(cli, tmp_path, stripe_api, paddle_api,
                                                           ls_api, cb_api):
    stripe_api.api_key = paddle_api.api_key = ls_api.api_key = cb_api.api_key = "rotated"
    for event in purchases(3, time.time() - 300):
        stripe_api.add_event(event)
    cases = [
        ("stripe", {"stripe": stripe_api},
         "Stripe GET /v1/events answered 401 (invalid_request_error: Invalid API Key provided: "
         "********): the API key was refused; check RELAY_STRIPE__API_KEY"),
        ("paddle", {"paddle": paddle_api},
         "Paddle GET /events answered 403 (invalid_token: Invalid or revoked API key.): the API key "
         "was refused; check RELAY_PADDLE__API_KEY"),
        ("lemonsqueezy", {"lemonsqueezy": ls_api},
         "Lemon Squeezy GET /v1/orders answered 401 (Unauthorized: Unauthenticated.): the API key "
         "was refused; check RELAY_LEMONSQUEEZY__API_KEY"),
        ("chargebee", {"chargebee": cb_api},
         "Chargebee GET /api/v2/events answered 401 (api_authentication_failed: Sorry, "
         "authentication failed. Invalid api key): the API key was refused; check "
         "RELAY_CHARGEBEE__API_KEY and RELAY_CHARGEBEE__SITE"),
    ]
    for source, apis, message in cases:
        out = cli(apis, "backfill", source, "--since", "1h")
        assert out.returncode == 1, out
        line = one_line(out.stderr)
        assert line.startswith(f"relay: backfill {source} stopped: {message}"), line
        assert "run the same command again to resume" in line
        for key in (STRIPE_KEY, PADDLE_KEY, LS_KEY, CB_KEY):
            assert key not in out.stdout + out.stderr
    assert count(tmp_path / "relay.db", "events") == 0


def test_429_retry_after_is_waited_for(cli, tmp_path, paddle_api):
    from tests.backfill.test_processors import paddle_transaction

    paddle_api.add_event("transaction.completed", paddle_transaction(1, time.time() - 60))
    paddle_api.fail_next(1, 429, {"Retry-After": "2"}, body=PADDLE_429)
    out = cli({"paddle": paddle_api}, "backfill", "paddle", "--since", "1h")
    assert out.returncode == 0, out.stderr
    assert "1 new conversion recorded" in out.stdout
    first, second = (r.at for r in paddle_api.requests if r.path == "/events")
    assert second - first >= 1.9  # Paddle said 2 seconds


def test_429_and_5xx_that_pass_are_retried(cli, tmp_path, stripe_api):
    for event in purchases(2, time.time() - 60):
        stripe_api.add_event(event)
    stripe_api.fail_next(1, 429, body=STRIPE_429)  # Stripe sends no Retry-After: back off
    stripe_api.fail_next(1, 502)
    out = cli({"stripe": stripe_api}, "backfill", "stripe", "--since", "1h")
    assert out.returncode == 0, out.stderr
    assert "2 new conversions recorded" in out.stdout
    assert len([r for r in stripe_api.requests if r.path == "/v1/events"]) == 3


def test_5xx_that_persists_stops_with_the_api_error(cli, tmp_path, paddle_api):
    paddle_api.fail_next(10, 503, body=paddle_error("service_unavailable", "Paddle is down", "api_error"))
    started = time.time()
    out = cli({"paddle": paddle_api}, "backfill", "paddle", "--since", "1h")
    assert out.returncode == 1
    assert "Paddle GET /events answered 503 (service_unavailable: Paddle is down)" in one_line(out.stderr)
    assert len(paddle_api.requests) == 5  # the first try and four retries, with backoff
    assert time.time() - started >= 3


def test_unreachable_api_says_which_host(cli, tmp_path, stripe_api):
    stripe_api.stop()
    port = free_port()
    out = cli({"stripe": stripe_api}, "backfill", "stripe", "--since", "1h",
              env={"RELAY_STRIPE__API_BASE": f"http://127.0.0.1:{port}"})
    assert out.returncode == 1
    assert f"failed (ConnectError): is 127.0.0.1:{port} reachable? What was found" in one_line(out.stderr)


def test_malformed_page_mid_run_keeps_what_came_before_and_a_rerun_carries_on(cli, tmp_path,
                                                                               stripe_api):
    events = purchases(5, time.time() - 600)
    for event in events:
        stripe_api.add_event(event)
    stripe_api.page_cap = 2
    stripe_api.malformed_when(lambda path, q: "starting_after" in q,  # the second page
                              raw=b'{"object": "list", "data": [{"id": "evt_cut')
    out = cli({"stripe": stripe_api}, "backfill", "stripe", "--since", "1h")
    assert out.returncode == 1
    assert "Stripe GET /v1/events answered 200 with a body that is not JSON" in one_line(out.stderr)
    assert "2 events found; 2 new conversions recorded" in out.stdout  # the first page, whole
    assert count(tmp_path / "relay.db", "conversions") == 2
    again = cli({"stripe": stripe_api}, "backfill", "stripe", "--since", "1h")
    assert again.returncode == 0, again.stderr
    assert "5 events found; 3 new conversions recorded (6 deliveries planned), 2 already recorded" \
        in again.stdout
    assert count(tmp_path / "relay.db", "conversions") == 5


def test_pages_that_lead_back_to_an_earlier_page_stop_the_run(cli, tmp_path, stripe_api):
    """Stripe's cursor is the last id of a page: an API answering page 1 again after page 2
    sent backfill round in circles (only a cursor that did not move at all was caught)."""
    import json

    events = purchases(4, time.time() - 600)
    for event in events:
        stripe_api.add_event(event)
    newest_first = events[::-1]

    def page(chunk):
        return json.dumps({"object": "list", "url": "/v1/events", "has_more": True,
                           "data": chunk}).encode()

    for _ in range(20):  # the API keeps cycling: after e2 comes [e1, e0], after e0 [e3, e2]
        stripe_api.malformed_when(lambda path, q: q.get("starting_after") == newest_first[1]["id"],
                                  raw=page(newest_first[2:]))
        stripe_api.malformed_when(lambda path, q: q.get("starting_after") == newest_first[3]["id"],
                                  raw=page(newest_first[:2]))
    stripe_api.page_cap = 2
    out = cli({"stripe": stripe_api}, "backfill", "stripe", "--since", "1h")
    assert out.returncode == 1, out
    assert "answered a malformed page: `has_more` leads back to an earlier page" in one_line(out.stderr)
    assert len(stripe_api.queries_of("/v1/events")) == 3
    assert count(tmp_path / "relay.db", "conversions") == 4  # each once, as found


def test_a_page_of_the_wrong_shape_is_an_error_not_a_crash(cli, tmp_path, ls_api, cb_api):
    ls_api.malformed_next(1)  # {"data": "this is not a list"}
    out = cli({"lemonsqueezy": ls_api}, "backfill", "lemonsqueezy", "--since", "1h")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "Lemon Squeezy GET /v1/orders answered a malformed page: no `data` list" in one_line(out.stderr)
    cb_api.malformed_next(1, raw=b'{"list": [{"event": {"id": 7}}], "next_offset": 3}')
    out = cli({"chargebee": cb_api}, "backfill", "chargebee", "--since", "1h")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "an entry is not an event object" in one_line(out.stderr)


def test_an_event_relay_cannot_read_is_quarantined_not_fatal(cli, tmp_path, stripe_api):
    """As for a webhook: stored with its reason (`relay events`), replayable once fixed."""
    good, bad = purchases(2, time.time() - 60)
    bad["data"]["object"]["currency"] = "zzz"  # not an ISO 4217 currency
    stripe_api.add_event(good)
    stripe_api.add_event(bad)
    out = cli({"stripe": stripe_api}, "backfill", "stripe", "--since", "1h")
    assert out.returncode == 0, out.stderr
    assert "1 new conversion recorded" in out.stdout and "1 quarantined" in out.stdout
    assert f"{bad['id']}  checkout.session.completed" in out.stdout and "quarantined: " in out.stdout
    listed = cli({"stripe": stripe_api}, "events", "--status", "quarantined")
    assert bad["id"] in listed.stdout and "zzz" in listed.stdout.lower()
