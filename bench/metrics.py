"""/metrics scrape benchmark: the time of one `GET /metrics` on a ledger of 10k and of 1M
deliveries (`relay serve --no-worker`, SQLite; `--postgres` also PostgreSQL at
$RELAY_TEST_POSTGRES_URL). A figure that grows with the ledger means a scrape scans it.

    python bench/metrics.py [--sizes 10000,1000000] [--scrapes 40] [--postgres]

The ledger is filled directly with SQL (events, conversions and deliveries in a realistic
mix of statuses over three destinations), then relay opens it (its in-place upgrade runs
as for any existing ledger) and is scraped `--scrapes` times one after the other; the
median and the slowest scrape are printed, and the first (cold) one separately.
Indicative only: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.common import relay_env, relay_proc, url_of, workdir  # noqa: E402

DESTINATIONS = ("simmer", "impact", "webhook")
# of 100 deliveries: delivered, failed, skipped, pending
MIX = ("delivered",) * 90 + ("failed",) * 4 + ("skipped",) * 3 + ("pending",) * 3
CHUNK = 20_000


def rows(n: int, now: float):  # type: ignore[no-untyped-def]
    """(events, conversions, deliveries) rows for n deliveries, one conversion per 3."""
    conversions = (n + len(DESTINATIONS) - 1) // len(DESTINATIONS)
    for start in range(0, conversions, CHUNK):
        ev, cv, dl = [], [], []
        for i in range(start, min(start + CHUNK, conversions)):
            at = now - (conversions - i)  # one a second, oldest first
            ev.append((i + 1, "stripe", f"evt_bench_{i}", "checkout.session.completed", at, b"{}"))
            data = (b'{"source":"stripe","kind":"purchase","order_key":"cs_bench_%d",'
                    b'"occurred_at":"2026-01-01T00:00:00+00:00","currency":"USD","total":"49.00"}' % i)
            cv.append((i + 1, "stripe", "purchase", f"cs_bench_{i}", i + 1, None, at, at, data))
            for j, dest in enumerate(DESTINATIONS):
                k = i * len(DESTINATIONS) + j
                if k >= n:
                    break
                status = MIX[(i * 7 + j) % len(MIX)]
                dl.append((i + 1, dest, status, 1, at, at, at))
        yield ev, cv, dl


def fill_sqlite(path: Path, n: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        for ev, cv, dl in rows(n, time.time()):
            conn.executemany("INSERT INTO events (id, source, event_id, event_type, received_at, body)"
                             " VALUES (?,?,?,?,?,?)", ev)
            conn.executemany("INSERT INTO conversions (id, source, kind, order_key, event_row,"
                             " customer_key, occurred_at, created_at, data) VALUES (?,?,?,?,?,?,?,?,?)", cv)
            conn.executemany("INSERT INTO deliveries (conversion_id, destination, status, attempts,"
                             " next_attempt_at, created_at, updated_at) VALUES (?,?,?,?,?,?,?)", dl)
            conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def fill_postgres(url: str, n: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for ev, cv, dl in rows(n, time.time()):
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy("COPY events (id, source, event_id, event_type, received_at, body)"
                              " FROM STDIN") as copy:
                    for row in ev:
                        copy.write_row(row)
                with cur.copy("COPY conversions (id, source, kind, order_key, event_row, customer_key,"
                              " occurred_at, created_at, data) FROM STDIN") as copy:
                    for row in cv:
                        copy.write_row(row)
                with cur.copy("COPY deliveries (conversion_id, destination, status, attempts,"
                              " next_attempt_at, created_at, updated_at) FROM STDIN") as copy:
                    for row in dl:
                        copy.write_row(row)
        conn.execute("VACUUM ANALYZE")


def scrape(url: str, times: int) -> tuple[float, list[float], str]:
    with httpx.Client(timeout=60) as client:
        t0 = time.perf_counter()
        first = client.get(url + "/metrics")
        cold = (time.perf_counter() - t0) * 1000
        first.raise_for_status()
        took = []
        for _ in range(times):
            t0 = time.perf_counter()
            client.get(url + "/metrics").raise_for_status()
            took.append((time.perf_counter() - t0) * 1000)
    lines = [line for line in first.text.splitlines() if line.startswith("relay_deliveries{")]
    return cold, took, "; ".join(lines[:2])


def measure(label: str, tmp: Path, db_url: str, args: argparse.Namespace) -> None:
    proc = relay_proc(tmp, relay_env(db_url, extra={"RELAY_LOG_LEVEL": "WARNING"}), "--no-worker")
    t0 = time.perf_counter()
    proc.start(timeout=600)  # opening an old ledger upgrades it
    opened = time.perf_counter() - t0
    try:
        cold, took, sample = scrape(url_of(proc), args.scrapes)
    finally:
        proc.stop()
    took.sort()
    print(f"  {label:<34} median {statistics.median(took):7.2f} ms, slowest {took[-1]:7.2f} ms,"
          f" first {cold:7.2f} ms (relay started in {opened:.1f} s)", flush=True)
    print(f"    e.g. {sample}", flush=True)


def postgres_db(base: str, name: str) -> str:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    info = conninfo_to_dict(base)
    return (f"postgresql://{info.get('user', 'postgres')}:{info.get('password', '')}@"
            f"{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}/{name}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,1000000", help="ledger sizes in deliveries")
    p.add_argument("--scrapes", type=int, default=40)
    p.add_argument("--postgres", action="store_true")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    import asyncio

    from relay.store import open_store

    async def create(url: str) -> None:  # relay's own schema, empty
        store = open_store(url)
        await store.open()
        await store.close()

    with workdir("relay-bench-metrics-") as tmp:
        for n in sizes:
            db = tmp / f"relay-{n}.db"
            asyncio.run(create(f"sqlite:///{db}"))
            t0 = time.perf_counter()
            fill_sqlite(db, n)
            print(f"sqlite, {n:,} deliveries (filled in {time.perf_counter() - t0:.0f} s,"
                  f" {db.stat().st_size / 1e6:.0f} MB)", flush=True)
            measure(f"GET /metrics, SQLite, {n:,}", tmp, f"sqlite:///{db}", args)
            db.unlink()
        base = os.environ.get("RELAY_TEST_POSTGRES_URL")
        if args.postgres and base:
            for n in sizes:
                url = postgres_db(base, "relay_bench_metrics")
                asyncio.run(create(url))
                t0 = time.perf_counter()
                fill_postgres(url, n)
                print(f"postgres, {n:,} deliveries (filled in {time.perf_counter() - t0:.0f} s)", flush=True)
                measure(f"GET /metrics, PostgreSQL, {n:,}", tmp, url, args)
        elif args.postgres:
            print("postgres: skipped (RELAY_TEST_POSTGRES_URL is not set)")


if __name__ == "__main__":
    main()
