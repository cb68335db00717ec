"""Hostile clients against a real `relay serve` on 127.0.0.1: memory held by bodies being
read, and how long slow clients keep a connection.

    python bench/hostile.py [--connections 300] [--body-bytes 1048000] [--hold 8]
                            [--slow 3] [--interval 2] [--max-seconds 40]

1. **Held bodies.** N connections each declare a `--body-bytes` body, send all but the last
   few KB of it and hold the connection open, once without a signature header ("unsigned")
   and once with a made-up one ("bogus signature", which passes any header check and so
   reaches the body). The relay's RSS is sampled meanwhile; valid signed webhooks are sent
   on fresh connections to see they are still served.
2. **Slow clients.** `--slow` connections each: say nothing; send a header line every
   `--interval` s; send complete headers and then one body byte every `--interval` s. Prints
   how long until the relay closed each (or "open" after `--max-seconds`) and what it said.

`RELAY_APP_PATH=/path/to/checkout` runs the relay from another checkout (e.g. main) for a
before/after comparison with the same client. Every request goes to 127.0.0.1 and the run
is bounded by its own timeouts.
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

from bench.common import Bodies, relay_env, relay_proc, rss_mb, url_of, workdir  # noqa: E402


async def hold_body(port: int, declared: int, send: int, signed: bool, hold: float) -> str:
    """Send `send` bytes of a declared `declared`-byte body, then wait up to `hold` s for an
    answer. Returns the status code seen, "closed" (no answer, connection gone) or "held"."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return f"connect failed ({type(exc).__name__})"
    sig = "Stripe-Signature: t=1700000000,v1=" + "0" * 64 + "\r\n" if signed else ""
    head = (
        f"POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{sig}Content-Length: {declared}\r\n\r\n"
    ).encode()
    chunk = b"x" * 65536
    try:
        writer.write(head)
        sent = 0
        while sent < send:
            n = min(len(chunk), send - sent)
            writer.write(chunk[:n])
            sent += n
            await asyncio.wait_for(writer.drain(), hold)
    except (OSError, TimeoutError):
        pass
    try:
        line = await asyncio.wait_for(reader.readline(), hold)
    except TimeoutError:
        return "held"
    except OSError:
        return "closed"
    finally:
        writer.close()
    return line.split()[1].decode() if line.startswith(b"HTTP/") else "closed"


async def valid_webhooks(url: str, bodies: Bodies, count: int, start: int) -> tuple[int, float]:
    """(how many of `count` signed webhooks were answered 200, slowest answer in s)."""
    ok, slowest = 0, 0.0
    async with httpx.AsyncClient(timeout=20) as client:
        for i in range(start, start + count):
            _, body = bodies.body(i)
            t = time.perf_counter()
            try:
                r = await client.post(
                    f"{url}/webhooks/stripe", content=body,
                    headers={"Stripe-Signature": bodies.sign(body), "Content-Type": "application/json"},
                )
                ok += r.status_code == 200
            except httpx.HTTPError:
                pass
            slowest = max(slowest, time.perf_counter() - t)
            await asyncio.sleep(0.05)
    return ok, slowest


async def held_bodies(relay_pid: int, port: int, url: str, bodies: Bodies, args: argparse.Namespace,
                      signed: bool, round_: int) -> dict[str, object]:
    base = rss_mb(relay_pid)
    peak = base
    send = max(0, args.body_bytes - 8192)
    clients = [asyncio.create_task(hold_body(port, args.body_bytes, send, signed, args.hold))
               for _ in range(args.connections)]
    await asyncio.sleep(1.0)  # the bodies are on their way; valid webhooks go in meanwhile
    valid = asyncio.create_task(valid_webhooks(url, bodies, 20, round_ * 1000))
    while not all(c.done() for c in clients):
        peak = max(peak, rss_mb(relay_pid))
        await asyncio.sleep(0.2)
    outcomes: dict[str, int] = {}
    for c in clients:
        outcomes[c.result()] = outcomes.get(c.result(), 0) + 1
    ok, slowest = await valid
    peak = max(peak, rss_mb(relay_pid))
    return {"base": base, "peak": peak, "outcomes": outcomes, "valid_ok": ok, "valid_slowest": slowest}


async def slow_client(port: int, kind: str, interval: float, max_seconds: float) -> tuple[float, str]:
    """(seconds until the relay closed the connection or max_seconds, what it answered)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    answer = ""

    async def drip() -> None:
        if kind == "silent":
            return
        if kind == "slow headers":
            writer.write(b"POST /webhooks/stripe HTTP/1.1\r\n")
            i = 0
            while True:
                await asyncio.sleep(interval)
                writer.write(b"X-Slow-%d: a\r\n" % i)
                i += 1
        writer.write(
            b"POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Stripe-Signature: t=1700000000,v1=" + b"0" * 64 + b"\r\nContent-Length: 1000\r\n\r\n"
        )
        while True:
            await asyncio.sleep(interval)
            writer.write(b"x")

    dripper = asyncio.create_task(drip())
    try:
        data = await asyncio.wait_for(reader.read(4096), max_seconds)
        if data.startswith(b"HTTP/"):
            answer = data.split()[1].decode()
            await asyncio.wait_for(reader.read(), max_seconds)  # then the close
        elapsed = time.monotonic() - t0
        return elapsed, answer or "closed"
    except TimeoutError:
        return max_seconds, "still open"
    except OSError:
        return time.monotonic() - t0, answer or "reset"
    finally:
        dripper.cancel()
        writer.close()


async def run(args: argparse.Namespace) -> None:
    bodies = Bodies()
    with workdir("relay-bench-hostile-") as tmp:
        env = relay_env(f"sqlite:///{tmp / 'relay.db'}")
        if os.environ.get("RELAY_APP_PATH"):
            env["PYTHONPATH"] = os.environ["RELAY_APP_PATH"]
        relay = relay_proc(tmp, env, "--no-worker").start()
        url = url_of(relay)
        port = int(url.rsplit(":", 1)[1])
        try:
            print(f"hostile: relay from {env['PYTHONPATH']}, pid {relay.pid}, {relay.modules()}", flush=True)
            for round_, signed in enumerate((False, True), 1):
                r = await held_bodies(relay.pid, port, url, bodies, args, signed, round_)
                what = "bogus signature" if signed else "unsigned"
                print(f"RESULT held bodies ({what}): {args.connections} connections x "
                      f"{args.body_bytes:,} declared bytes: RSS {r['base']:.0f} MB -> peak {r['peak']:.0f} MB "
                      f"(+{r['peak'] - r['base']:.0f} MB); answers {r['outcomes']}; valid webhooks meanwhile "
                      f"{r['valid_ok']}/20 answered 200, slowest {r['valid_slowest']:.2f} s", flush=True)
                await asyncio.sleep(2)
            for kind in ("silent", "slow headers", "slow body"):
                results = await asyncio.gather(*(slow_client(port, kind, args.interval, args.max_seconds)
                                                 for _ in range(args.slow)))
                cut = ", ".join(f"{s:.1f} s ({a})" for s, a in results)
                print(f"RESULT {kind} (one byte or line every {args.interval:g} s): {cut}", flush=True)
            print(f"  relay RSS at the end: {rss_mb(relay.pid):.0f} MB")
        finally:
            relay.stop()
            log = (tmp / "relay.log").read_text(errors="replace")
            print(f"  relay log: {len(log.splitlines())} lines, {log.count('Traceback')} tracebacks")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=300)
    p.add_argument("--body-bytes", type=int, default=1_048_000)
    p.add_argument("--hold", type=float, default=8.0, help="how long each held body waits for an answer")
    p.add_argument("--slow", type=int, default=3, help="connections per slow-client kind")
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--max-seconds", type=float, default=40.0)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
