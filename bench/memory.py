"""Memory under load: RSS of `relay serve` (worker on, SQLite, Simmer destination → loopback
sink) while wrk posts N unique signed Stripe webhooks, then while the worker drains the
backlog. Prints start/peak/end RSS and the slope over the second half of the load.

    python bench/memory.py [--events 100000] [--connections 32] [--max-seconds 150]

Target (shared/PERFORMANCE.md): RSS < 100 MB, flat over 100k events.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    Bodies,
    relay_env,
    relay_proc,
    rss_mb,
    run_wrk,
    sink_proc,
    url_of,
    workdir,
    write_requests,
)


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--max-seconds", type=int, default=150, help="bound on the load phase")
    p.add_argument("--drain-seconds", type=int, default=90, help="bound on the drain phase")
    p.add_argument("--interval", type=float, default=1.0, help="RSS sampling interval")
    args = p.parse_args()
    print(f"memory: {os.cpu_count()} CPUs, {args.events:,} webhooks via wrk -c{args.connections} into relay serve "
          f"(worker on, SQLite) → Simmer → loopback sink", flush=True)
    bodies = Bodies()
    with workdir("relay-bench-memory-") as tmp:
        t0 = time.time()
        write_requests(tmp / "reqs.bin", [bodies.raw_request(i, "127.0.0.1")[1] for i in range(args.events)])
        print(f"  {args.events:,} requests pre-signed in {time.time() - t0:.1f} s", flush=True)
        sink = sink_proc(tmp).start()
        db = tmp / "relay.db"
        env = relay_env(f"sqlite:///{db}", dest_url=url_of(sink) + "/api/conversion", destination="simmer")
        relay = relay_proc(tmp, env).start()
        samples: list[tuple[float, float, int, int]] = []  # (t, rss, events, delivered)
        stop = threading.Event()

        def sampler() -> None:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            while not stop.is_set():
                try:
                    events = conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
                    done = conn.execute("SELECT count(*) FROM deliveries WHERE status='delivered'").fetchone()[0]
                except sqlite3.Error:
                    events = done = -1
                samples.append((time.time(), rss_mb(relay.pid), events, done))
                stop.wait(args.interval)
            conn.close()

        try:
            start_rss = rss_mb(relay.pid)
            th = threading.Thread(target=sampler, daemon=True)
            th.start()
            t_load = time.time()
            result = run_wrk(url_of(relay), tmp / "reqs.bin", seconds=args.max_seconds,
                             connections=args.connections, threads=1, wrap=False,
                             stop_when=lambda: bool(samples) and samples[-1][2] >= args.events - args.connections)
            # requests in flight when a wrk thread runs out are dropped: the ledger may hold a few less
            t_loaded = next((s[0] for s in samples if s[2] >= args.events - args.connections), time.time())
            print(f"  load: {result['ok']:,} answered 200 in {t_loaded - t_load:.1f} s "
                  f"({result['ok'] / (t_loaded - t_load):,.0f}/s),"
                  f" non-200 {result['bad']}, socket errors {result['errors']}", flush=True)
            deadline = time.time() + args.drain_seconds
            while time.time() < deadline and samples and samples[-1][3] < samples[-1][2]:
                time.sleep(1)
            stop.set()
            th.join(10)
            end_rss = rss_mb(relay.pid)
        finally:
            stop.set()
            relay.stop()
            sink.stop()

    load = [s for s in samples if s[0] <= t_loaded]
    peak = max(s[1] for s in samples)
    second_half = [(s[2], s[1]) for s in load[len(load) // 2:] if s[2] > 0]
    per_10k = slope(second_half) * 10_000
    per_min = slope([(s[0], s[1]) for s in load[len(load) // 2:]]) * 60
    events, delivered = samples[-1][2], samples[-1][3]
    print("  RSS samples (s, MB, events stored, delivered):")
    step = max(1, len(samples) // 12)
    for s in samples[::step] + [samples[-1]]:
        print(f"    {s[0] - samples[0][0]:6.1f}  {s[1]:6.1f}  {s[2]:>8,}  {s[3]:>8,}")
    print(f"  stored {events:,} events, delivered {delivered:,} by the end")
    print()
    print(f"RESULT memory: start {start_rss:.1f} MB, peak {peak:.1f} MB, end {end_rss:.1f} MB; slope over the"
          f" second half of the load {per_10k:+.2f} MB per 10k events ({per_min:+.1f} MB/min)"
          f"  (target < 100 MB and flat: {'PASS' if peak < 100 and abs(per_10k) < 1 else 'MISS'})")


if __name__ == "__main__":
    main()
