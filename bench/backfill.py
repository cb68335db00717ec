"""Backfill throughput and memory: `relay backfill stripe` over N Stripe events served by the
Stripe API stand-in (tests/emulators/stripe_api.py, on 127.0.0.1 in this process), into
a fresh SQLite ledger with Simmer configured (so each event also writes a delivery row).

    python bench/backfill.py [--events 10000]

Prints events/s (wall clock of the `relay backfill` process, start to exit) and its peak
RSS (VmHWM). Target (issue 9): ≥ 500 events/s, RSS < 150 MB. The Events API client paces
itself at 20 requests/s (100 events each), so the API side allows up to ~2,000 events/s.
"""

from __future__ import annotations

import argparse
import copy
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PY, relay_env, workdir  # noqa: E402
from tests.emulators.stripe_api import StripeAPIEmulator  # noqa: E402
from tests.helpers import checkout_event  # noqa: E402

KEY = "sk_test_bench_backfill_0123456789"


def events(n: int, now: float) -> list[dict]:
    """n unique paid checkout.session.completed events over the last hour (~3.5 KB each)."""
    template = checkout_event(email="buyer@example.com")
    out = []
    for i in range(n):
        event = copy.deepcopy(template)
        tag = f"{i:010d}"
        session = event["data"]["object"]
        event["id"] = event["id"][: -len(tag)] + tag
        event["created"] = int(now - 3600 + i * 3600 / n)
        session["id"] = session["id"][: -len(tag)] + tag
        session["payment_intent"] = session["payment_intent"][: -len(tag)] + tag
        session["customer"] = f"cus_bench{tag}"
        out.append(event)
    return out


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--timeout", type=float, default=300)
    args = p.parse_args()
    print(f"backfill: {os.cpu_count()} CPUs, {args.events:,} Stripe events from the API stand-in "
          "→ relay backfill stripe → SQLite (Simmer configured)", flush=True)
    now = time.time()
    with StripeAPIEmulator(KEY) as api, workdir("relay-bench-backfill-") as tmp:
        for event in events(args.events, now):
            api.add_event(event)
        db = tmp / "relay.db"
        env = relay_env(f"sqlite:///{db}", extra={
            "RELAY_STRIPE__API_KEY": KEY, "RELAY_STRIPE__API_BASE": api.url,
        })
        out_path = tmp / "backfill.out"
        started = time.perf_counter()
        with out_path.open("wb") as out:
            proc = subprocess.Popen([PY, "-m", "relay", "backfill", "stripe", "--since", "2h"],
                                    cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT)
            peak = 0.0
            deadline = time.time() + args.timeout
            while proc.poll() is None:
                peak = max(peak, peak_rss_mb(proc.pid) or 0.0)
                if time.time() > deadline:
                    proc.kill()
                    raise SystemExit("backfill did not finish in time")
                time.sleep(0.05)
        took = time.perf_counter() - started
        text = out_path.read_text(errors="replace")
        if proc.returncode != 0:
            raise SystemExit(f"relay backfill failed ({proc.returncode}):\n{text[-2000:]}")
        with sqlite3.connect(db) as conn:
            recorded = conn.execute("SELECT count(*) FROM conversions").fetchone()[0]
            deliveries = conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]
        summary = text.strip().splitlines()[-1]
        print(f"  {summary}")
        print(f"  {recorded:,} conversions and {deliveries:,} deliveries in the ledger; "
              f"{api.pages} pages served")
        rate = args.events / took
        print(f"RESULT backfill {rate:,.0f} events/s ({args.events:,} in {took:.1f} s), "
              f"peak RSS {peak:.1f} MB (targets: >= 500 events/s, < 150 MB)", flush=True)
        if recorded != args.events:
            raise SystemExit(f"expected {args.events} conversions, found {recorded}")


if __name__ == "__main__":
    main()
