"""PostgreSQL delivery counters under concurrent workers: do two workers wait on each
other for the counter rows the triggers keep?

    python bench/counters.py [--deliveries 4000] [--concurrency 16]

Records N deliveries for one destination, then two stores (two worker processes' worth
of connections) claim and settle them all at once, while pg_stat_activity is sampled
for backends of this database waiting on a lock. Variants, in the same run: without the
counter triggers (before), as shipped (one counter row per backend: `pg_backend_pid()`
shards), and with every trigger writing one shared row per (destination, status) — the
hot-row design it avoids. Prints settles per second and the share of samples with a
backend waiting on a lock. Indicative only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.metrics import postgres_db  # noqa: E402

SINGLE_ROW = ("pg_backend_pid()", "0")  # the hot-row variant: every writer on one row


async def run(url: str, n: int, concurrency: int, variant: str) -> dict:
    import psycopg

    from relay.conversion import Conversion
    from relay.store import DELIVERED, EventRecord, Settlement
    from relay.store.postgres import PostgresStore
    from tests.store.ledger import buyer

    setup = PostgresStore(url)
    await setup.open()
    with psycopg.connect(url, autocommit=True) as conn:
        if variant == "single":
            for fn in ("relay_count_inserted", "relay_count_deleted", "relay_count_updated"):
                src = conn.execute("SELECT pg_get_functiondef(%s::regproc)", (fn,)).fetchone()[0]
                conn.execute(src.replace(*SINGLE_ROW).encode())
        elif variant == "none":  # what the settle path cost before the counters
            for trigger in ("insert", "update", "delete", "truncate"):
                conn.execute(f"DROP TRIGGER deliveries_count_{trigger} ON deliveries".encode())

    def only(_: Conversion) -> list[str]:
        return ["simmer"]

    await asyncio.gather(*(setup.record(EventRecord("stripe", f"evt_{i}", "t", time.time(), b"{}"),
                                        [buyer(f"ord_{i}")], only) for i in range(n)))
    await setup.close()

    stores = [PostgresStore(url), PostgresStore(url)]
    for s in stores:
        await s.open()
    samples = waiting = 0
    stop = False

    async def sample() -> None:
        nonlocal samples, waiting
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            while not stop:
                cur = await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
                samples += 1
                waiting += bool((await cur.fetchone())[0])
                await asyncio.sleep(0.002)

    async def work(store: PostgresStore) -> int:
        done = 0
        while True:
            claims = await store.claim(["simmer"], 8, 60, time.time() + 1)
            if not claims:
                return done
            for claim in claims:
                await store.settle(claim, Settlement(DELIVERED, status_code=200), time.time())
                done += 1

    sampler = asyncio.create_task(sample())
    t0 = time.perf_counter()
    counts = await asyncio.gather(*(work(stores[i % 2]) for i in range(concurrency)))
    elapsed = time.perf_counter() - t0
    stop = True
    await sampler
    stats = await stores[0].stats(time.time())
    for s in stores:
        await s.close()
    assert sum(counts) == n
    assert variant == "none" or stats["by_status"] == {("simmer", DELIVERED): n}, stats
    return {"rate": n / elapsed, "waiting": waiting / max(samples, 1), "samples": samples}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--deliveries", type=int, default=4000)
    p.add_argument("--concurrency", type=int, default=16, help="settle loops, spread over the two stores")
    args = p.parse_args()
    base = os.environ.get("RELAY_TEST_POSTGRES_URL")
    if not base:
        raise SystemExit("set RELAY_TEST_POSTGRES_URL")
    for label, variant in (("no counters (before)", "none"), ("sharded per backend (shipped)", "sharded"),
                           ("one shared row (hot row)", "single"), ("no counters (before)", "none"),
                           ("sharded per backend (shipped)", "sharded")):
        url = postgres_db(base, "relay_bench_counters")
        r = asyncio.run(run(url, args.deliveries, args.concurrency, variant))
        print(f"  {label:<32} {r['rate']:7,.0f} settles/s; a backend waiting on a lock in"
              f" {r['waiting']:6.1%} of {r['samples']:,} samples", flush=True)


if __name__ == "__main__":
    main()
