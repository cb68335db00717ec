"""`relay serve --no-worker` and a separate `relay worker` on one SQLite file: the worker
learns of new work from the other process's commits at once, not at its next poll."""

from __future__ import annotations

import time

from tests.conftest import core_env
from tests.helpers import checkout_event, wait_until
from tests.test_multiprocess import WorkerProcess

POLL = 600  # polling alone would take up to 10 minutes: only the wake-up can deliver in time


def test_separate_worker_on_sqlite_wakes_on_commits(tmp_path, simmer, impact, relay_factory):
    env = core_env(tmp_path / "relay.db", simmer.url, impact.url) | {
        "RELAY_WORKER__POLL_SECONDS": str(POLL),
    }
    web = relay_factory(env, "--no-worker")
    worker = WorkerProcess(env, tmp_path, "sqlite").start()
    try:
        # The worker is up, has polled once (found nothing) and is idle until woken.
        wait_until(lambda: "worker: delivering to" in worker.logs(), timeout=30, message="worker started")
        sent = time.time()
        assert web.post_stripe(checkout_event(metadata={"irclickid": "c"})).status_code == 200
        wait_until(lambda: simmer.accepted and impact.accepted, timeout=60, message="delivered")
        # Far below the poll interval, generous for a loaded machine (it takes ~0.1 s).
        assert time.time() - sent < POLL / 10
    finally:
        worker.stop()
