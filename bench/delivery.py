"""Delivery benchmark: N deliveries pre-recorded in the SQLite ledger, drained by
relay.worker.Worker to a loopback sink (bare Starlette on uvicorn in its own process),
vs a raw httpx.AsyncClient loop posting the same requests to the same sink with the
same concurrency, in the same run.

    python bench/delivery.py [--deliveries 5000] [--destination webhook|simmer] [--loop asyncio|uvloop]

Targets (shared/PERFORMANCE.md): worker ≥ 0.8× the raw loop and ≥ 1,000 deliveries/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Bodies, relay_env, sink_proc, url_of, workdir  # noqa: E402


async def raw_loop(requests: list[tuple[str, bytes, dict[str, str]]], concurrency: int, clients: int,
                   timeout: float) -> tuple[float, int]:
    import httpx

    pool = [httpx.AsyncClient(timeout=timeout, follow_redirects=False,
                              limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))
            for _ in range(clients)]
    it = iter(requests)
    failed = 0

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal failed
        for url, content, headers in it:
            r = await client.post(url, content=content, headers=headers)
            if r.status_code != 200:
                failed += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(pool[i % clients]) for i in range(concurrency)))
    elapsed = time.perf_counter() - t0
    for c in pool:
        await c.aclose()
    return elapsed, failed


async def run(args: argparse.Namespace, tmp: Path, sink_url: str) -> None:
    path = "/hooks/relay" if args.destination == "webhook" else "/api/conversion"
    os.environ.update(relay_env(f"sqlite:///{tmp / 'relay.db'}", dest_url=sink_url + path,
                                destination=args.destination, extra={"RELAY_LOG_LEVEL": "WARNING"}))
    from relay import attribution, logs
    from relay.destinations import build_destinations
    from relay.settings import load_settings
    from relay.sources import build_sources
    from relay.store import EventRecord, open_store
    from relay.worker import Worker

    settings = load_settings()
    logs.setup(args.log_level)
    source = build_sources(settings)["stripe"]
    dests = build_destinations(settings)
    dest = dests[args.destination]
    store = open_store(settings.store_url)
    await store.open()

    def plan(conv):  # type: ignore[no-untyped-def]
        return [n for n, d in dests.items() if d.accepts(conv)]

    bodies = Bodies()
    n = args.deliveries
    t0 = time.perf_counter()
    convs = []
    for start in range(0, n + args.warmup, 500):
        batch = []
        for i in range(start, min(start + 500, n + args.warmup)):
            body = bodies.body(i)[1]
            parsed = source.parse(body)
            conversions = [attribution.attach(c, settings.attribution) for c in parsed.conversions]
            convs.extend(conversions)
            if i >= args.warmup:
                batch.append(store.record(EventRecord("stripe", parsed.event_id, parsed.event_type,
                                                      time.time(), body), conversions, plan))
        await asyncio.gather(*batch)
    stats = await store.stats(time.time())
    pending = sum(v for (d, s), v in stats["by_status"].items() if s == "pending")
    print(f"  {pending:,} deliveries pending in the ledger (recorded in {time.perf_counter() - t0:.1f} s)",
          flush=True)
    if pending != n:
        raise SystemExit(f"expected {n} pending deliveries, found {pending}")

    # the raw loop posts the requests the destination builds for the same conversions
    now = datetime.now(UTC)
    built = [dest.build(c, now) for c in convs]
    requests = [(str(r.url), r.content, {k: v for k, v in r.headers.items() if k.lower() != "content-length"})
                for r in built]
    conc = settings.worker.concurrency
    await raw_loop(requests[: args.warmup], conc, args.clients, dest.settings.timeout_seconds)  # warm the sink
    results: dict[str, list[float]] = {"raw": [], "worker": []}
    for rnd in range(args.rounds):
        elapsed, failed = await raw_loop(requests[args.warmup:], conc, args.clients, dest.settings.timeout_seconds)
        results["raw"].append(n / elapsed)
        print(f"  raw httpx loop ({args.clients} AsyncClient, {conc} in flight)   {n / elapsed:>7,.0f}/s"
              f"  ({n:,} in {elapsed:.2f} s, non-200: {failed})", flush=True)

        if rnd > 0:  # put the same deliveries back to pending for another worker round
            with sqlite3.connect(tmp / "relay.db") as db:
                db.execute("UPDATE deliveries SET status='pending', attempts=0, next_attempt_at=0,"
                           " delivered_at=NULL")
        worker = Worker(store, dests, settings.worker)
        t0 = time.perf_counter()
        task = asyncio.create_task(worker.run())
        deadline = t0 + args.timeout
        delivered = 0
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
            stats = await store.stats(time.time())
            delivered = sum(v for (d, s), v in stats["by_status"].items() if s == "delivered")
            if delivered >= n:
                break
        elapsed = time.perf_counter() - t0
        await worker.stop()
        await task
        results["worker"].append(delivered / elapsed)
        other = {s: v for (d, s), v in stats["by_status"].items() if s != "delivered"}
        print(f"  relay Worker (concurrency {conc}, batch {settings.worker.batch_size})     "
              f"{delivered / elapsed:>7,.0f}/s  ({delivered:,} delivered in {elapsed:.2f} s; other: {other or '-'})",
              flush=True)
    await store.close()

    raw = max(results["raw"])
    wrk = max(results["worker"])
    ratio = wrk / raw
    print()
    print(f"RESULT delivery ({args.destination}, loop {args.loop}): worker {wrk:,.0f}/s, raw loop {raw:,.0f}/s, "
          f"ratio {ratio:.2f}x  (targets: >= 0.80x and >= 1,000/s: "
          f"{'PASS' if ratio >= 0.8 else 'MISS'} / {'PASS' if wrk >= 1000 else 'MISS'})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--deliveries", type=int, default=5000)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--rounds", type=int, default=1, help="raw/worker pairs; the best of each is compared")
    p.add_argument("--destination", choices=("webhook", "simmer"), default="webhook")
    p.add_argument("--clients", type=int, default=1, help="AsyncClients in the raw loop (the worker has 1 per destination)")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                   help="event loop of this process (relay worker: asyncio; relay serve: uvloop)")
    p.add_argument("--timeout", type=float, default=120, help="give the worker at most this long")
    p.add_argument("--log-level", default="WARNING",
                   help="log level inside the benchmark process (INFO logs a line per delivery)")
    args = p.parse_args()
    print(f"delivery: {os.cpu_count()} CPUs, {args.deliveries:,} deliveries to a loopback sink, "
          f"destination {args.destination}, loop {args.loop}", flush=True)
    with workdir("relay-bench-delivery-") as tmp:
        sink = sink_proc(tmp).start()
        try:
            if args.loop == "uvloop":
                import uvloop
                uvloop.run(run(args, tmp, url_of(sink)))
            else:
                asyncio.run(run(args, tmp, url_of(sink)))
        finally:
            sink.stop()


if __name__ == "__main__":
    main()
