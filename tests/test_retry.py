"""The retry policy as users rely on it (README "Retries"), with literal numbers.

5 s doubling to 1 h with up to 5 s of jitter, 30 attempts, `Retry-After` in
seconds or as an HTTP date (capped at 1 h, in the policy and in the worker's
pause), 408/425/429/5xx retried, other 4xx dead-lettered, giving up after
`max_attempts`, a 429 without `Retry-After`, and a shutdown whose grace runs
out. What the worker does is tested through a real Worker on a real SQLite
ledger against the Converge stand-in (which uses the default classifier), over
a real socket.
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from relay.destinations import classify, retry_after
from relay.destinations.converge import Converge
from relay.destinations.pagent import Pagent
from relay.retry import RetryPolicy
from relay.settings import (
    ConvergeSettings,
    DestinationSettings,
    ImpactSettings,
    PagentSettings,
    SimmerSettings,
    TopmailSettings,
    WebhookSettings,
    WorkerSettings,
)
from relay.store.sqlite import SQLiteStore
from relay.worker import Worker
from tests.destinations.conftest import CONVERGE_PATH, CONVERGE_TOKEN, PAGENT_KEY, WorkerRun, sample
from tests.helpers import wait_async

# attempt that failed → (shortest, longest) wait before the next one, seconds
DEFAULT_SCHEDULE = {
    1: (5, 10), 2: (10, 15), 3: (20, 25), 4: (40, 45), 5: (80, 85), 6: (160, 165), 7: (320, 325),
    8: (640, 645), 9: (1280, 1285), 10: (2560, 2565), 11: (3600, 3600), 20: (3600, 3600), 29: (3600, 3600),
}


# ------------------------------------------------------------------ the policy, pure


def test_default_settings_are_the_documented_ones():
    w = WorkerSettings()
    assert (w.retry_base_seconds, w.retry_max_seconds, w.retry_after_max_seconds) == (5, 3600, 3600)
    assert w.shutdown_grace_seconds == 10
    for cls in (DestinationSettings, SimmerSettings, ImpactSettings, PagentSettings, TopmailSettings,
                ConvergeSettings, WebhookSettings):
        assert cls().max_attempts == 30, cls.__name__


@pytest.mark.parametrize("policy", ["defaults", "from-settings"])
def test_default_schedule(policy):
    if policy == "defaults":
        p = RetryPolicy()
    else:
        p = Worker(SQLiteStore("sqlite:///unused.db"), {}, WorkerSettings()).policy
    for attempt, (low, high) in DEFAULT_SCHEDULE.items():
        delays = [p.next_delay(attempt, 30) for _ in range(200)]
        assert all(d is not None and low <= d <= high for d in delays), (attempt, min(delays), max(delays))
        if low < 3600:  # jittered: spread over the 5 s, not a fixed value
            assert max(delays) - min(delays) > 2.5 and low + 1.5 < statistics.mean(delays) < high - 1.5
    assert p.next_delay(30, 30) is None  # the 30th failed attempt is the last
    assert p.next_delay(31, 30) is None


def test_the_whole_default_schedule_spans_about_20_and_a_half_hours():
    p = RetryPolicy()
    waits = [p.next_delay(n, 30) for n in range(1, 30)]  # the 29 waits between 30 attempts
    # 5 + 10 + … + 2,560 = 5,115 s, then 19 x 3,600 s; each of the first ten up to 5 s more
    assert 73_515 <= sum(waits) <= 73_565


def test_retry_after_wins_when_longer_and_is_capped_at_an_hour():
    p = RetryPolicy()
    assert p.next_delay(1, 30, retry_after=90) == 90
    assert p.next_delay(1, 30, retry_after=3600) == 3600
    assert p.next_delay(1, 30, retry_after=7 * 86400) == 3600
    assert 5 <= p.next_delay(1, 30, retry_after=2) <= 10  # shorter than the backoff: backoff
    assert 5 <= p.next_delay(1, 30, retry_after=-60) <= 10
    assert p.next_delay(30, 30, retry_after=90) is None  # Retry-After does not add attempts
    quick = RetryPolicy(base=0.1, maximum=1, retry_after_max=10)  # "Retry-After: 0" is not a wait
    assert all(quick.next_delay(1, 5, retry_after=0) <= 0.2 for _ in range(50))


def response(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, request=httpx.Request("POST", "http://127.0.0.1/x"))


def test_retry_after_in_seconds_and_as_an_http_date():
    assert retry_after(response(503, **{"Retry-After": "120"})) == 120.0
    assert retry_after(response(503, **{"Retry-After": "0"})) == 0.0
    later = format_datetime(datetime.fromtimestamp(time.time() + 300, UTC), usegmt=True)
    assert 295 <= retry_after(response(503, **{"Retry-After": later})) <= 300
    earlier = format_datetime(datetime.fromtimestamp(time.time() - 300, UTC), usegmt=True)
    assert retry_after(response(503, **{"Retry-After": earlier})) == 0.0
    assert retry_after(response(503, **{"Retry-After": "soon"})) is None
    assert retry_after(response(503)) is None


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_default_classifier_retries(status):
    assert classify(response(status)).kind == "retry"


@pytest.mark.parametrize("status", [301, 400, 401, 403, 404, 405, 409, 410, 413, 415, 422])
def test_default_classifier_dead_letters(status):
    assert classify(response(status)).kind == "failed"


# ------------------------------------------------------------------ the worker, with a stand-in

QUICK = WorkerSettings(retry_base_seconds=30, retry_max_seconds=60, poll_seconds=0.2, lease_seconds=30)


def converge(emu, **kw) -> Converge:
    return Converge(ConvergeSettings(postback_url=emu.url + CONVERGE_PATH, webhook_token=CONVERGE_TOKEN, **kw))


def attempted(rows) -> bool:
    return all(r.last_status_code is not None or r.status != "pending" for r in rows)


@pytest.mark.parametrize(("status", "expect"), [
    (408, "pending"), (425, "pending"), (429, "pending"), (500, "pending"), (502, "pending"),
    (503, "pending"), (504, "pending"),
    (400, "failed"), (401, "failed"), (403, "failed"), (404, "failed"), (405, "failed"), (409, "failed"),
    (410, "failed"), (413, "failed"), (422, "failed"),
])
def test_worker_retries_or_dead_letters(status, expect, converge_emu, tmp_path: Path):
    converge_emu.fail_next(1, status, body={"error": f"answer {status}"})

    async def go():
        async with WorkerRun(tmp_path / "r.db", {"converge": converge(converge_emu)}, QUICK) as run:
            await run.record(sample())
            before = time.time()
            [row] = await run.until(attempted, "the first attempt")
            return row, before

    row, before = asyncio.run(go())
    assert (row.status, row.attempts, row.last_status_code) == (expect, 1, status)
    assert f"HTTP {status}" in row.last_error and f"answer {status}" in row.last_error
    if expect == "pending":  # attempt 1 with a 30 s base: 30–60 s later (429: paused 1 s, same backoff)
        assert before + 29 <= row.next_attempt_at <= time.time() + 61
    assert len(converge_emu.faulted) == 1 and converge_emu.accepted == []


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_worker_waits_for_retry_after(form, converge_emu, tmp_path: Path):
    when = time.time() + 600
    value = "600" if form == "seconds" else format_datetime(datetime.fromtimestamp(when, UTC), usegmt=True)
    converge_emu.fail_next(1, 503, {"Retry-After": value})

    async def go():
        async with WorkerRun(tmp_path / "r.db", {"converge": converge(converge_emu)}, QUICK) as run:
            await run.record(sample())
            [row] = await run.until(attempted, "the 503")
            return row

    row = asyncio.run(go())
    assert row.status == "pending" and row.last_status_code == 503
    assert when - 5 <= row.next_attempt_at <= when + 5  # not the 30–60 s backoff


def test_worker_caps_retry_after_at_an_hour_by_default(converge_emu, tmp_path: Path):
    converge_emu.fail_next(1, 429, {"Retry-After": str(7 * 86400)})

    async def go():
        settings = WorkerSettings(poll_seconds=0.2)  # the default retry settings
        async with WorkerRun(tmp_path / "r.db", {"converge": converge(converge_emu)}, settings) as run:
            await run.record(sample())
            before = time.time()
            [row] = await run.until(attempted, "the 429")
            return row, before, time.time()

    row, before, after = asyncio.run(go())
    assert row.status == "pending"
    assert before + 3600 - 1 <= row.next_attempt_at <= after + 3600 + 1


def test_the_pause_after_a_429_is_capped_in_the_worker(converge_emu, tmp_path: Path):
    """A 429 pauses the whole destination for its Retry-After, at most
    RELAY_WORKER__RETRY_AFTER_MAX_SECONDS: a second conversion goes once that cap is over,
    not in seven days."""
    converge_emu.fail_next(1, 429, {"Retry-After": str(7 * 86400)})
    settings = WorkerSettings(retry_base_seconds=30, retry_max_seconds=60, retry_after_max_seconds=1.5,
                              poll_seconds=0.2, lease_seconds=30)

    async def go():
        async with WorkerRun(tmp_path / "r.db", {"converge": converge(converge_emu)}, settings) as run:
            await run.record(sample())
            await run.until(attempted, "the 429")
            limited_at = time.time()
            await run.record(sample())
            rows = await run.until(lambda rows: rows[1].status == "delivered", "the second conversion", 30)
            return rows, limited_at

    (first, second), limited_at = asyncio.run(go())
    assert first.status == "pending" and first.next_attempt_at >= limited_at + 25  # backoff, not 1.5 s
    assert second.attempts == 1
    assert converge_emu.accepted[0].at >= limited_at + 1.0  # it did wait for the pause


def test_a_429_without_retry_after_pauses_a_second_then_backs_off(converge_emu, tmp_path: Path):
    converge_emu.fail_next(1, 429, body={"error": "slow down"})

    async def go():
        async with WorkerRun(tmp_path / "r.db", {"converge": converge(converge_emu)}, QUICK) as run:
            await run.record(sample())
            await run.until(attempted, "the 429")
            limited_at = time.time()
            await run.record(sample())
            rows = await run.until(lambda rows: rows[1].status == "delivered", "the second conversion")
            return rows, limited_at

    (first, second), limited_at = asyncio.run(go())
    assert first.status == "pending" and first.last_status_code == 429
    assert limited_at + 25 <= first.next_attempt_at <= limited_at + 61  # the 30–60 s backoff
    assert converge_emu.accepted[0].at >= limited_at + 0.8  # held off ~1 s, not sent at once


def test_gives_up_after_max_attempts(converge_emu, tmp_path: Path):
    converge_emu.fail_next(10, 503, body={"error": "down"})
    fast = WorkerSettings(retry_base_seconds=0.05, retry_max_seconds=0.1, poll_seconds=0.1, lease_seconds=30)

    async def go():
        dest = converge(converge_emu, max_attempts=3)
        async with WorkerRun(tmp_path / "r.db", {"converge": dest}, fast) as run:
            await run.record(sample())
            [row] = await run.until(lambda rows: rows[0].status == "failed", "the dead letter")
            return row

    row = asyncio.run(go())
    assert row.attempts == 3 and row.last_status_code == 503
    assert row.last_error.startswith("gave up after 3 attempts: HTTP 503")
    assert len(converge_emu.faulted) == 3  # not one more


def test_the_default_budget_is_30_attempts_through_the_worker(converge_emu, tmp_path: Path):
    """Attempt 29 fails and is retried; attempt 30 fails and is the last (default max_attempts)."""
    converge_emu.fail_next(2, 503, body={"error": "down"})
    db = tmp_path / "r.db"

    def spend(attempts: int) -> None:  # as if that many attempts had failed, and due now
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE deliveries SET attempts = ?, next_attempt_at = 0", (attempts,))

    async def go():
        async with WorkerRun(db, {"converge": converge(converge_emu)}, QUICK) as run:
            await run.stop()
            await run.record(sample())
            spend(28)
            run.start()
            [after_29] = await run.until(lambda rows: rows[0].attempts == 29 and attempted(rows), "attempt 29")
            await run.stop()
            spend(29)
            run.start()
            [after_30] = await run.until(lambda rows: rows[0].status == "failed", "attempt 30")
            return after_29, after_30

    after_29, after_30 = asyncio.run(go())
    assert after_29.status == "pending" and after_29.last_status_code == 503
    assert after_30.attempts == 30 and after_30.last_error.startswith("gave up after 30 attempts")


@pytest.mark.parametrize("destination", ["converge", "pagent"])
def test_shutdown_grace_running_out_hands_the_delivery_back(destination, converge_emu, pagent_emu,
                                                            tmp_path: Path):
    """SIGTERM waits RELAY_WORKER__SHUTDOWN_GRACE_SECONDS for a request in flight, then cuts it:
    a destination that deduplicates gets it again at the next start; pagent, which cannot,
    records it as ambiguous and never resends it by itself."""
    emu = converge_emu if destination == "converge" else pagent_emu
    dest = converge(emu) if destination == "converge" else Pagent(PagentSettings(api_key=PAGENT_KEY, url=emu.url))
    emu.delay = 30.0  # answers long after the grace
    settings = WorkerSettings(shutdown_grace_seconds=0.5, retry_base_seconds=30, poll_seconds=0.2,
                              lease_seconds=30)

    async def go():
        async with WorkerRun(tmp_path / "r.db", {destination: dest}, settings) as run:
            await run.record(sample())
            await wait_async(_sent(emu), message="the request to reach the stand-in")
            took = await run.stop()
            [handed_back] = await run.rows()
            emu.reset()  # the stand-in answers at once now
            run.start()
            if destination == "converge":
                rows = await run.until(lambda rows: rows[0].status == "delivered", "delivered after restart")
            else:
                await asyncio.sleep(0.5)  # a restarted worker would send it now, if it ever did
                rows = await run.rows()
            return took, handed_back, rows[0]

    took, handed_back, final = asyncio.run(go())
    assert took < 15  # the grace (0.5 s) and the hand-back, not the 30 s answer
    if destination == "converge":
        assert handed_back.status == "pending" and handed_back.attempts == 1
        assert handed_back.next_attempt_at <= time.time()  # due again at once
        assert final.status == "delivered" and final.attempts == 2
        assert len(converge_emu.accepted) == 1
    else:
        assert handed_back.status == "failed"
        assert handed_back.last_error == "ambiguous: interrupted by shutdown"
        assert final.status == "failed" and pagent_emu.requests == []


def _sent(emu):
    async def any_request() -> bool:
        return bool(emu.requests)

    return any_request
