"""The console's 24-hour figures with real processes on one PostgreSQL: two `relay serve
--no-worker` take the webhooks, one `relay worker` delivers; the overview of either web
process counts every webhook of both and every attempt of the worker, with its last
error."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import core_env
from tests.console.conftest import TOKEN
from tests.console.test_pages import text
from tests.helpers import checkout_event, wait_until
from tests.pgdb import pg_databases, pg_url  # noqa: F401 - fixtures
from tests.test_multiprocess import WorkerProcess

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def overview(url: str) -> str:
    with httpx.Client(base_url=url, timeout=30, follow_redirects=True) as client:
        signed = client.post("/console/sign-in", data={"token": TOKEN, "next": "/console/"})
        assert signed.status_code == 200, signed.text
        return text(signed.text)


def test_figures_add_up_across_processes(tmp_path, simmer, impact, relay_factory, pg_url) -> None:  # noqa: F811
    simmer.rate_limit_per_minute = None
    simmer.fail_next(3, 400, body={"error": "email is invalid"})
    env = core_env(tmp_path / "unused.db", simmer.url, impact.url)
    env.update({"RELAY_DATABASE_URL": pg_url, "RELAY_ADMIN_TOKEN": TOKEN,
                "RELAY_SIMMER__RATE_LIMIT_PER_MINUTE": "0"})
    webs = [relay_factory(env, "--no-worker") for _ in range(2)]
    worker = WorkerProcess(env, tmp_path, "w").start()
    try:
        posted = [checkout_event(metadata={"irclickid": f"c{i}"}) for i in range(10)]
        for i, event in enumerate(posted):
            assert webs[i % 2].post_stripe(event).json()["status"] == "accepted"
        assert webs[0].post_stripe(posted[0]).json()["status"] == "duplicate"
        wait_until(lambda: len(simmer.accepted) == 7 and len(impact.accepted) == 10, timeout=60,
                   message="the worker to deliver")

        def counted() -> str:  # each process saves its counts every 5 s
            page = overview(webs[1].url)
            return page if _row(page) and "7 of 10 attempts" in page else ""

        page = wait_until(counted, timeout=30, interval=1, message="both processes' tallies")
        assert _row(page) == ["10", "1", "0", "0", "0", "0"]
        assert "7 of 10 attempts" in page and "70 %" in page  # the worker's own tally
        assert "email is invalid" in page  # its last error, saved by the worker process
    finally:
        worker.stop()


def _row(page: str) -> list[str] | None:
    """The stripe row of the overview's webhook table: accepted … other."""
    found = re.search(r"stripe (\d+) (\d+) (\d+) (\d+)(?: quarantined)? (\d+)(?: rejected)? (\d+)", page)
    if found is None or found.group(1) != "10":
        return None
    return list(found.groups())
