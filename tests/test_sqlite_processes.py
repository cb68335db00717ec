"""`relay serve --no-worker` and a separate `relay worker` on one SQLite file: the worker
learns of new work from the other process's commits at once, not at its next poll."""

from __future__ import annotations

import time

from tests.conftest import core_env
from tests.helpers import checkout_event, wait_until
from tests.test_multiprocess import WorkerProcess


def test_separate_worker_on_sqlite_wakes_on_commits(tmp_path, simmer, impact, relay_factory):
    env = core_env(tmp_path / "relay.db", simmer.url, impact.url) | {
        "RELAY_WORKER__POLL_SECONDS": "30",  # polling alone would take up to 30 s
    }
    web = relay_factory(env, "--no-worker")
    worker = WorkerProcess(env, tmp_path, "sqlite").start()
    try:
        time.sleep(1.5)  # the worker is up and idle
        sent = time.time()
        assert web.post_stripe(checkout_event(metadata={"irclickid": "c"})).status_code == 200
        wait_until(lambda: simmer.accepted and impact.accepted, timeout=10, message="delivered")
        assert time.time() - sent < 3
    finally:
        worker.stop()
