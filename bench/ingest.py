"""Ingest benchmark: signed Stripe webhooks → `relay serve --no-worker` (stored durably
before the 200) vs a bare Starlette endpoint answering 200, same wrk, same concurrency,
same run.

    python bench/ingest.py [--seconds 8] [--connections 64] [--threads 1] [--postgres]

Targets (shared/PERFORMANCE.md): relay ≥ 0.5× bare and ≥ 3,000 webhooks/s on SQLite.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    Bodies,
    Proc,
    cpu_seconds,
    pyspy_report,
    pyspy_start,
    relay_env,
    relay_proc,
    run_wrk,
    sink_proc,
    url_of,
    workdir,
    write_requests,
)


def measure(proc: Proc, label: str, req_file: Path, warm_file: Path, args: argparse.Namespace,
            wrap: bool) -> dict:
    proc.start()
    try:
        url = url_of(proc)
        run_wrk(url, warm_file, seconds=1, connections=args.connections, threads=args.threads,
                wrap=wrap)
        cpu0 = cpu_seconds(proc.pid)
        spy = pyspy_start(proc.pid, args.seconds, Path(f"/tmp/pyspy-{label.split()[0]}.txt"))
        result = run_wrk(url, req_file, seconds=args.seconds, connections=args.connections,
                         threads=args.threads, wrap=wrap)
        result["cpu"] = (cpu_seconds(proc.pid) - cpu0) / (result["duration_us"] / 1e6)
        result["modules"] = proc.modules()
        pyspy_report(spy, Path(f"/tmp/pyspy-{label.split()[0]}.txt"))
    finally:
        proc.stop()
    result["ok_rps"] = result["ok"] / (result["duration_us"] / 1e6)
    print(f"  {label:<28} {result['ok_rps']:>9,.0f} req/s  (200s {result['ok']:,}, other {result['bad']},"
          f" socket errors {result['errors']}, p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms,"
          f" server CPU {result['cpu']:.0%} of a core, {result['modules']}"
          f"{', ran out of bodies' if result['exhausted'] else ''})", flush=True)
    return result


def postgres_db(base: str) -> str:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = "relay_bench_ingest"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    info = conninfo_to_dict(base)
    info["dbname"] = name
    dsn = make_conninfo(**info)
    # relay expects a URL
    return f"postgresql://{info.get('user', 'postgres')}:{info.get('password', '')}@" \
           f"{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}/{name}" if "://" in base else dsn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="wrk threads (the machine has 2 cores)")
    p.add_argument("--events", type=int, default=60_000, help="unique events prepared (upper bound)")
    p.add_argument("--postgres", action="store_true",
                   help="also measure PostgreSQL at $RELAY_TEST_POSTGRES_URL (a database is created)")
    p.add_argument("--log-level", default="INFO", help="relay's RELAY_LOG_LEVEL (default INFO, as deployed)")
    args = p.parse_args()

    print(f"ingest: {os.cpu_count()} CPUs, wrk -t{args.threads} -c{args.connections} -d{args.seconds:g}s, "
          f"up to {args.events:,} unique signed checkout.session.completed events", flush=True)
    bodies = Bodies()
    with workdir("relay-bench-ingest-") as tmp:
        t0 = time.time()
        warm, reqs = [], []
        for i in range(2000):
            warm.append(bodies.raw_request(i, "127.0.0.1")[1])
        for i in range(2000, 2000 + args.events):
            reqs.append(bodies.raw_request(i, "127.0.0.1")[1])
        write_requests(tmp / "warm.bin", warm)
        write_requests(tmp / "reqs.bin", reqs)
        print(f"  body {len(bodies.body(0)[1]):,} bytes; {len(reqs):,} requests pre-signed in "
              f"{time.time() - t0:.1f} s", flush=True)
        del reqs, warm

        bare = measure(sink_proc(tmp, name="bare"), "bare Starlette endpoint", tmp / "reqs.bin",
                       tmp / "warm.bin", args, wrap=True)
        extra = {"RELAY_LOG_LEVEL": args.log_level}
        db = tmp / "relay.db"
        relay = measure(relay_proc(tmp, relay_env(f"sqlite:///{db}", extra=extra), "--no-worker"),
                        "relay serve (SQLite, FULL)", tmp / "reqs.bin", tmp / "warm.bin", args, wrap=False)
        with sqlite3.connect(db) as conn:
            stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            pending = conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]
        print(f"  ledger: {stored:,} events, {pending:,} deliveries (warm-up included); "
              f"200s in the timed run {relay['ok']:,}", flush=True)
        if stored < relay["ok"]:
            print("  ERROR: fewer events stored than acknowledged", flush=True)

        ratio = relay["ok_rps"] / bare["ok_rps"]
        print()
        print(f"RESULT ingest sqlite: relay {relay['ok_rps']:,.0f}/s, bare {bare['ok_rps']:,.0f}/s, "
              f"ratio {ratio:.2f}x  (targets: >= 0.50x and >= 3,000/s: "
              f"{'PASS' if ratio >= 0.5 else 'MISS'} / {'PASS' if relay['ok_rps'] >= 3000 else 'MISS'})")

        if args.postgres:
            base = os.environ.get("RELAY_TEST_POSTGRES_URL")
            if not base:
                print("RESULT ingest postgres: skipped (RELAY_TEST_POSTGRES_URL is not set)")
                return
            url = postgres_db(base)
            pg = measure(relay_proc(tmp, relay_env(url, extra=extra), "--no-worker"),
                         "relay serve (PostgreSQL)", tmp / "reqs.bin", tmp / "warm.bin", args, wrap=False)
            print(f"RESULT ingest postgres: relay {pg['ok_rps']:,.0f}/s, ratio {pg['ok_rps'] / bare['ok_rps']:.2f}x"
                  " of the same bare endpoint")


if __name__ == "__main__":
    main()
