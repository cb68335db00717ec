"""Personal data and the admin token, as an operator meets them: a real `relay serve`
(Stripe in, Simmer and impact.com out), its `/metrics`, `relay forget`, `relay retry`, and
retention running when relay starts."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import httpx

from relay.store.sqlite import SCHEMA_VERSION
from tests.conftest import core_env
from tests.helpers import checkout_event, wait_until

TOKEN = "metrics-token-5f1c0a9e7b2d"  # noqa: S105 - a test token
EMAIL = "dana.private@example.net"


def settled(relay, n: int) -> list[dict]:
    return wait_until(lambda: (rows := relay.deliveries()) and len(rows) == n
                      and all(r["status"] != "pending" for r in rows) and rows, message="settled")


def test_metrics_needs_the_admin_token_when_it_is_set(tmp_path: Path, simmer, impact, relay_factory):
    relay = relay_factory(core_env(tmp_path / "relay.db", simmer.url, impact.url) | {"RELAY_ADMIN_TOKEN": TOKEN})
    relay.post_stripe(checkout_event(metadata={"irclickid": "c1"}))
    settled(relay, 2)
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer"},
                    {"Authorization": b"Bearer \xe9t\xe9"}):
        answer = httpx.get(relay.url + "/metrics", headers=headers)
        assert answer.status_code == 401, headers
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert "relay_deliveries" not in answer.text and TOKEN not in answer.text
    answer = httpx.get(relay.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    assert 'relay_deliveries{destination="simmer",status="delivered"} 1.0' in answer.text
    # an emptied queue reads 0 instead of vanishing
    assert 'relay_deliveries{destination="simmer",status="pending"} 0.0' in answer.text
    assert httpx.get(relay.url + "/healthz").status_code == 200  # health stays open
    relay.stop()
    assert TOKEN not in relay.logs()


def test_metrics_is_open_without_the_token(relay):
    relay.post_stripe(checkout_event(metadata={"irclickid": "c1"}))
    settled(relay, 2)
    answer = httpx.get(relay.url + "/metrics")
    assert answer.status_code == 200 and 'relay_deliveries{destination="impact",status="delivered"} 1.0' in answer.text


def test_relay_forget_erases_a_buyer_and_prints_what_changed(relay, simmer, impact, tmp_path: Path):
    simmer.fail_next(1, 400, body={"error": "project is paused"})  # her Simmer delivery dead-letters
    relay.post_stripe(checkout_event(email=EMAIL, customer="cus_Dana0001", metadata={"irclickid": "c1"}))
    relay.post_stripe(checkout_event(email="someone.else@example.net", customer="cus_Else0001",
                                     metadata={"irclickid": "c2"}))
    rows = settled(relay, 4)
    out = relay.cli("forget", "--email", EMAIL.upper()).stdout
    # her conversion, its event's body, and the click id remembered for her (attribution memory)
    assert out.startswith("forgotten: 3 records changed")
    assert "1 conversion" in out and "1 event body" in out and "1 remembered attribution removed" in out
    assert EMAIL not in out
    db = tmp_path / "relay.db"
    with sqlite3.connect(db) as conn:
        kept = conn.execute("SELECT count(*) FROM conversions WHERE erased_at IS NULL").fetchone()[0]
    assert kept == 1  # the other buyer is untouched
    # her dead-lettered delivery cannot be retried: relay says why and exits non-zero
    failed = [r for r in rows if r["status"] == "failed"][0]
    result = relay.cli("retry", str(failed["id"]), check=False)
    assert result.returncode == 1
    assert "requeued 0 deliveries" in result.stdout
    assert f"delivery {failed['id']}" in result.stderr and "removed by relay forget" in result.stderr
    # forgetting again changes nothing; a customer id works too
    assert relay.cli("forget", "--email", EMAIL).stdout.startswith("nothing stored for that buyer")
    assert relay.cli("forget", "--customer", "cus_Else0001").stdout.startswith("forgotten: 3 records changed")
    # bad input changes nothing and says what to give
    bad = relay.cli("forget", "--email", "not-an-address", check=False)
    assert bad.returncode != 0 and "--email must be an email address" in bad.stderr
    relay.stop()
    files = b"".join(p.read_bytes() for p in tmp_path.glob("relay.db*"))
    assert EMAIL.encode() not in files and b"cus_Dana0001" not in files


def test_retention_runs_when_relay_starts(tmp_path: Path, simmer, impact, relay_factory):
    env = core_env(tmp_path / "relay.db", simmer.url, impact.url)
    relay = relay_factory(env)
    old = int(time.time()) - 40 * 86400  # a purchase made 40 days ago, backfilled now
    old_event = checkout_event(email=EMAIL, created=old, metadata={"irclickid": "c_old"})
    relay.post_stripe(old_event)
    relay.post_stripe(checkout_event(email="recent.buyer@example.net", metadata={"irclickid": "c_new"}))
    settled(relay, 4)
    relay.stop()
    with sqlite3.connect(tmp_path / "relay.db") as conn:
        assert conn.execute("SELECT count(*) FROM conversions WHERE erased_at IS NULL").fetchone()[0] == 2
    relay = relay_factory(env | {"RELAY_RETENTION_DAYS": "30"})

    def erased() -> list:
        with sqlite3.connect(tmp_path / "relay.db") as conn:
            return conn.execute("SELECT data, erased_by FROM conversions WHERE erased_at IS NOT NULL").fetchall()

    [(data, by)] = wait_until(erased, message="retention at start")
    assert by == "retention" and EMAIL not in data.decode()
    assert json.loads(data)["customer"]["email"] is None
    with sqlite3.connect(tmp_path / "relay.db") as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        bodies = [bytes(b) for (b,) in conn.execute("SELECT body FROM events ORDER BY id")]
    assert bodies[0] == b"" and b"recent.buyer@example.net" in bodies[1]
    wait_until(lambda: "retention: erased personal data older than 30 days: conversions=1 event_bodies=1" in relay.logs(), message="log")
    # the old webhook, redelivered, is still a duplicate
    assert relay.post_stripe(old_event).json()["status"] == "duplicate"
    relay.stop()
    assert EMAIL not in relay.logs()


def test_the_worker_runs_retention_again_on_its_schedule(tmp_path: Path):
    """Started with nothing to erase, the worker erases what has become old and settled at
    its next run (hourly in production; every 0.2 s here), off the delivery path."""
    import asyncio

    from relay.settings import WorkerSettings
    from relay.store import DELIVERED, Settlement
    from relay.store.sqlite import SQLiteStore
    from relay.worker import Worker
    from tests.store.ledger import buyer, stored_event

    async def go() -> list:
        store = SQLiteStore(f"sqlite:///{tmp_path / 'relay.db'}")
        await store.open()
        worker = Worker(store, {}, WorkerSettings(poll_seconds=0.1), retention_days=30, maintenance_seconds=0.2)
        task = asyncio.create_task(worker.run())
        try:
            await asyncio.sleep(0.3)  # the first run found nothing
            await store.record(stored_event("evt_old", b'{"email": "late@example.net"}', days_ago=40),
                               [buyer("ord_old", email="late@example.net", days_ago=40)], lambda c: ["simmer"])
            [claim] = await store.claim(["simmer"], 1, 30, time.time())
            await store.settle(claim, Settlement(DELIVERED, status_code=200), time.time())
            deadline = time.time() + 10
            while not (rows := [r for r in await store.deliveries() if r.erased]):
                assert time.time() < deadline, "retention did not run again"
                await asyncio.sleep(0.05)
            return rows
        finally:
            await worker.stop()
            await asyncio.wait_for(task, 10)
            await store.close()

    [row] = asyncio.run(go())
    assert row.erased == "retention"
