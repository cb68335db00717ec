"""Several web and worker processes on one PostgreSQL: nothing delivered twice or lost.

2 × `relay serve --no-worker` + 2 × `relay worker`, 500 signed Stripe webhooks posted
across both web processes, one worker SIGKILLed mid-run. Its in-flight requests are
legitimately sent again once their leases run out (both destinations dedupe on the
order id), so the destinations must end with exactly one conversion per order, and
a second send may only ever concern a delivery whose claim was recovered.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from tests.conftest import core_env
from tests.helpers import REPO, RelayProcess, checkout_event, stop_process, wait_until
from tests.pgdb import pg_databases, pg_url  # noqa: F401 - fixtures

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

N = 500


class WorkerProcess:
    """`python -m relay worker` with the same environment as the web processes."""

    def __init__(self, env: dict[str, str], workdir: Path, name: str) -> None:
        self.env = env
        self.log_path = workdir / f"worker-{name}.log"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "DATABASE_URL"))}
        env.update(self.env)
        env.setdefault("PYTHONPATH", str(REPO))
        with self.log_path.open("wb") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "worker"], cwd=self.workdir, env=env,
                stdout=out, stderr=subprocess.STDOUT,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc, grace=20)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def test_two_web_two_workers_one_killed(tmp_path, simmer, impact, relay_factory, pg_url):  # noqa: F811
    simmer.rate_limit_per_minute = None  # the emulator's 50/min would make this take 10 min
    env = core_env(tmp_path / "unused.db", simmer.url, impact.url)
    env.update({
        "RELAY_DATABASE_URL": pg_url,
        "RELAY_SIMMER__RATE_LIMIT_PER_MINUTE": "0",
        "RELAY_WORKER__LEASE_SECONDS": "3",
        "RELAY_WORKER__CONCURRENCY": "16",
    })
    webs: list[RelayProcess] = [relay_factory(env, "--no-worker") for _ in range(2)]
    workers = [WorkerProcess(env, tmp_path, name).start() for name in ("a", "b")]
    try:
        events = [
            checkout_event(metadata={"simmer_anonymous_id": f"anon-{i}", "irclickid": f"click-{i}"},
                           customer=f"cus_{i:04d}")
            for i in range(N)
        ]

        def post(i: int) -> int:
            return webs[i % 2].post_stripe(events[i]).status_code

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(post, i) for i in range(N)]
            # kill one worker while deliveries are flowing
            wait_until(lambda: len(simmer.accepted) + len(impact.accepted) >= 150, timeout=60,
                       interval=0.01, message="deliveries under way")
            workers[0].kill()
            statuses = [f.result() for f in futures]
        assert statuses == [200] * N

        wait_until(lambda: len(simmer.conversions) >= N and len(impact.actions) >= N,
                   timeout=90, interval=0.2, message="every conversion at both destinations")

        def ledger() -> list:
            with psycopg.connect(pg_url) as conn:
                return conn.execute(
                    "SELECT d.destination, d.status, d.attempts, c.order_key"
                    " FROM deliveries d JOIN conversions c ON c.id = d.conversion_id"
                ).fetchall()

        # Requests the killed worker had sent reached the stand-ins, but their rows stay
        # pending until its leases run out and another worker settles them.
        rows = wait_until(lambda: (r := ledger()) and all(x[1] == "delivered" for x in r) and r,
                          timeout=30, interval=0.2, message="every delivery settled")
        with psycopg.connect(pg_url) as conn:
            recovered_attempts = conn.execute(
                "SELECT count(*) FROM attempts WHERE attempt > 1").fetchone()[0]
        assert len(rows) == 2 * N
        assert {r[1] for r in rows} == {"delivered"}, [r for r in rows if r[1] != "delivered"][:5]

        # one conversion per order at each destination
        assert len(simmer.conversions) == N
        assert len(impact.actions) == N
        # a second send happens only for a claim taken over from the killed worker
        resent_simmer = sum(n - 1 for n in simmer.writes.values())
        resent_impact = len(impact.duplicates)
        retried = sum(1 for r in rows if r[2] > 1)
        assert resent_simmer + resent_impact <= retried <= 16
        assert recovered_attempts >= resent_simmer + resent_impact
        assert not simmer.rejected and not impact.rejected
        print(f"resent after kill: simmer={resent_simmer} impact={resent_impact} "
              f"deliveries with >1 attempt={retried}")
    except BaseException:
        for w in workers:
            print(w.logs()[-3000:])
        raise
    finally:
        for w in workers:
            w.stop()
