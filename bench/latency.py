"""End-to-end latency: signed Stripe webhooks at a steady rate into `relay serve` (worker
on, SQLite) → Simmer destination (no client-side rate limit) pointed at a loopback sink
that records when each order arrives. Prints p50/p99 of (arrival − send time).

    python bench/latency.py [--rate 100] [--seconds 20]

Targets (shared/PERFORMANCE.md): p50 < 25 ms, p99 < 100 ms at 100 webhooks/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Bodies, percentile, relay_env, relay_proc, sink_proc, url_of, workdir  # noqa: E402


async def drive(relay_url: str, bodies: Bodies, n: int, rate: float) -> tuple[dict[str, float], list[float], int]:
    prepared = []
    for i in range(n):
        session, body = bodies.body(i)
        prepared.append((session, body, {"Stripe-Signature": bodies.sign(body), "Content-Type": "application/json"}))
    sent: dict[str, float] = {}
    answers: list[float] = []
    failures = 0
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as client:
        async def post(session: str, body: bytes, headers: dict[str, str]) -> None:
            nonlocal failures
            t = time.time()
            sent[session] = t
            r = await client.post(relay_url + "/webhooks/stripe", content=body, headers=headers)
            answers.append(time.time() - t)
            if r.status_code != 200 or r.json().get("status") != "accepted":
                failures += 1

        tasks = []
        t0 = time.perf_counter()
        for i, item in enumerate(prepared):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(post(*item)))
        await asyncio.gather(*tasks)
    return sent, answers, failures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=100)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args()
    n = int(args.rate * args.seconds)
    print(f"latency: {os.cpu_count()} CPUs, {n:,} webhooks at {args.rate:g}/s → relay serve (worker on,"
          f" SQLite) → Simmer destination → loopback sink", flush=True)
    with workdir("relay-bench-latency-") as tmp:
        sink = sink_proc(tmp, record=True).start()
        env = relay_env(f"sqlite:///{tmp / 'relay.db'}", dest_url=url_of(sink) + "/api/conversion",
                        destination="simmer", extra={"RELAY_LOG_LEVEL": args.log_level})
        relay = relay_proc(tmp, env).start()
        try:
            print(f"  relay loop/parser: {relay.modules()}", flush=True)
            bodies = Bodies()
            sent, answers, failures = asyncio.run(drive(url_of(relay), bodies, n, args.rate))
            deadline = time.time() + 15
            arrivals: dict[str, float] = {}
            while time.time() < deadline:
                arrivals = httpx.get(url_of(sink) + "/arrivals", timeout=10).json()
                if len(arrivals) >= len(sent):
                    break
                time.sleep(0.2)
        finally:
            relay.stop()
            sink.stop()
    lat = [(arrivals[s] - t) * 1000 for s, t in sent.items() if s in arrivals]
    ack = [a * 1000 for a in answers]
    missing = len(sent) - len(lat)
    print(f"  webhook answered (200): p50 {percentile(ack, 50):.1f} ms, p99 {percentile(ack, 99):.1f} ms;"
          f" non-accepted answers: {failures}")
    print(f"  arrived at the sink: {len(lat):,} of {len(sent):,} (missing {missing})")
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    print(f"  send → arrival: p50 {p50:.1f} ms, p90 {percentile(lat, 90):.1f} ms, p99 {p99:.1f} ms,"
          f" max {max(lat) if lat else float('nan'):.1f} ms")
    print()
    print(f"RESULT latency at {args.rate:g}/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms  (targets p50 < 25 ms, "
          f"p99 < 100 ms: {'PASS' if p50 < 25 else 'MISS'} / {'PASS' if p99 < 100 and not missing else 'MISS'})")


if __name__ == "__main__":
    main()
