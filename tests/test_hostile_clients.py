"""Unauthenticated clients against a real `relay serve` on 127.0.0.1 (raw sockets).

What a user would check: held bodies do not blow up the process's memory and valid
webhooks are still served meanwhile; past the budget of bodies being read the answer is
503 with Retry-After; a body that trickles in is cut with 408; headers that do not
complete close the connection; a client gone mid-upload is one log line; repeated
wrong Chargebee credentials from one address are answered 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import (
    STRIPE_SECRET,
    RelayProcess,
    body_of,
    checkout_event,
    stripe_headers,
    wait_until,
)
from tests.sources.util import basic

CB_USER, CB_PASSWORD = "relay-hook", "cb-hook-password-0123456789"
BOGUS_SIGNATURE = "Stripe-Signature: t=1700000000,v1=" + "0" * 64 + "\r\n"


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",
        "RELAY_STRIPE__WEBHOOK_SECRETS": STRIPE_SECRET,
        "RELAY_CHARGEBEE__USERNAME": CB_USER,
        "RELAY_CHARGEBEE__PASSWORD": CB_PASSWORD,
        **extra,
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def head(declared: int, signature: str = BOGUS_SIGNATURE, path: str = "/webhooks/stripe") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"{signature}Content-Length: {declared}\r\n\r\n").encode()


def connect(relay: RelayProcess, timeout: float = 20.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=timeout)
    return sock


def read_answer(sock: socket.socket) -> bytes:
    """Everything the relay sends until it closes the connection (or the socket times out)."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def valid_webhook(relay: RelayProcess) -> int:
    return relay.post_stripe(checkout_event()).status_code


# ------------------------------------------------------------------ memory


async def _hold(port: int, declared: int, send: int, signature: str, held: asyncio.Event) -> None:
    """Send `send` bytes of a `declared`-byte body, then hold the connection until `held`."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    try:
        writer.write(head(declared, signature))
        chunk = b"x" * 65536
        for start in range(0, send, len(chunk)):
            writer.write(chunk[: min(len(chunk), send - start)])
            await asyncio.wait_for(writer.drain(), 30)
        await held.wait()
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()


@pytest.mark.slow
def test_300_held_1mb_bodies_cost_under_100mb_and_webhooks_are_served(tmp_path, relay_factory):
    relay = relay_factory(env(tmp_path, RELAY_BODY_TIMEOUT_SECONDS="60"), "--no-worker")
    assert valid_webhook(relay) == 200  # code paths loaded before the baseline
    assert relay.proc is not None
    base = rss_mb(relay.proc.pid)
    declared, send = 1_048_000, 1_048_000 - 8192
    peaks: list[float] = []

    async def attack(signature: str) -> None:
        held = asyncio.Event()
        clients = [asyncio.create_task(_hold(relay.port, declared, send, signature, held)) for _ in range(300)]
        loop = asyncio.get_running_loop()
        # Wait until the bodies are in (RSS stops growing), sampling meanwhile.
        last, steady = 0.0, 0
        deadline = loop.time() + 60
        while steady < 5 and loop.time() < deadline:
            await asyncio.sleep(0.2)
            now = rss_mb(relay.proc.pid)
            peaks.append(now)
            steady = steady + 1 if abs(now - last) < 1 else 0
            last = now
        status = await asyncio.to_thread(valid_webhook, relay)  # while the bodies are held
        peaks.append(rss_mb(relay.proc.pid))
        held.set()
        await asyncio.gather(*clients)
        assert status == 200

    asyncio.run(attack(""))  # no signature header at all
    asyncio.run(attack(BOGUS_SIGNATURE))  # a header that passes the header check
    grown = max(peaks) - base
    assert grown < 100, f"RSS grew {grown:.0f} MB over {base:.0f} MB holding 300 bodies of 1 MB"


def test_past_the_body_budget_503_with_retry_after_and_small_webhooks_still_pass(tmp_path, relay_factory):
    # 300,000 bytes in flight at most; bodies over 64 KiB share half of it.
    relay = relay_factory(env(tmp_path, RELAY_MAX_INFLIGHT_BODY_BYTES="300000"), "--no-worker")
    first = connect(relay)
    try:
        first.sendall(head(100_000) + b"{")  # holds 100,000 bytes of the budget
        wait_until(lambda: valid_webhook(relay) == 200, message="the first body being read")
        second = connect(relay)
        with second:
            second.sendall(head(100_000))  # 200,000 large bytes > 150,000
            answer = read_answer(second)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"\r\nretry-after: " in answer.lower()
        assert b"connection: close" in answer.lower()
        assert valid_webhook(relay) == 200  # a real webhook is small: it still fits
    finally:
        first.close()
    assert wait_until(lambda: valid_webhook(relay) == 200, message="a webhook after the release")


# ------------------------------------------------------------------ slow clients


def test_a_body_that_trickles_in_is_cut_with_408(tmp_path, relay_factory):
    relay = relay_factory(env(tmp_path, RELAY_BODY_TIMEOUT_SECONDS="1"), "--no-worker")
    with connect(relay) as sock:
        sock.sendall(head(1000))
        started = time.monotonic()
        sock.settimeout(0.3)
        answer = b""
        while time.monotonic() - started < 20:
            try:
                sock.sendall(b"x")
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"connection: close" in answer.lower()
    assert 0.9 <= elapsed < 20, elapsed  # cut, and not before the deadline
    assert valid_webhook(relay) == 200


def _open_for(sock: socket.socket, drip: bytes | None, limit: float) -> float:
    """Seconds until the relay closed the connection (limit if it did not), sending `drip`
    every 0.2 s meanwhile (nothing if None)."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < limit:
        try:
            if drip is not None:
                sock.sendall(drip)
            if sock.recv(65536) == b"":
                break
        except TimeoutError:
            continue
        except OSError:
            break
    return time.monotonic() - started


def test_silent_and_slow_header_clients_are_disconnected(tmp_path, relay_factory):
    relay = relay_factory(env(tmp_path, RELAY_HEADER_TIMEOUT_SECONDS="1"), "--no-worker")
    with connect(relay) as silent:
        assert 0.9 <= _open_for(silent, None, 20) < 20
    with connect(relay) as slow:
        slow.sendall(b"POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert 0.9 <= _open_for(slow, b"X-Slow: a\r\n", 20) < 20  # cut although bytes keep coming
    assert valid_webhook(relay) == 200


def test_keep_alive_and_headers_in_pieces_still_work(tmp_path, relay_factory):
    relay = relay_factory(env(tmp_path, RELAY_HEADER_TIMEOUT_SECONDS="2"), "--no-worker")
    with connect(relay) as sock:
        for _ in range(2):  # two requests on one connection, each sent in pieces
            body = body_of(checkout_event())
            headers = "".join(f"{k}: {v}\r\n" for k, v in stripe_headers(body).items())
            request = (f"POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            for piece in (request[:20], request[20:60], request[60:]):
                sock.sendall(piece)
                time.sleep(0.2)
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
            time.sleep(1.0)  # idle between requests: keep-alive, not a header deadline


# ------------------------------------------------------------------ logs


def test_a_client_gone_mid_upload_is_one_log_line(tmp_path, relay_factory):
    relay = relay_factory(env(tmp_path), "--no-worker")
    body = body_of(checkout_event())
    with connect(relay) as sock:
        sock.sendall(head(len(body), "".join(f"{k}: {v}\r\n" for k, v in stripe_headers(body).items()))
                     + body[:100])
        time.sleep(0.3)
    wait_until(lambda: "disconnected" in relay.logs(), message="the disconnect logged")
    assert valid_webhook(relay) == 200
    logs = relay.logs()
    assert "Traceback" not in logs and "ClientDisconnect" not in logs, logs
    assert len([line for line in logs.splitlines() if "disconnected" in line]) == 1, logs


# ------------------------------------------------------------------ Chargebee throttle


def chargebee(relay: RelayProcess, password: str, forwarded_for: str | None = None) -> httpx.Response:
    headers = basic(CB_USER, password)
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    return relay.post("chargebee", b"{}", headers)


def test_repeated_wrong_chargebee_credentials_are_throttled_per_address(tmp_path, relay_factory):
    relay = relay_factory(env(tmp_path), "--no-worker")  # no trusted proxy
    answers = [chargebee(relay, "wrong-password", forwarded_for="198.51.100.7") for _ in range(5)]
    assert [r.status_code for r in answers[:4]] == [401] * 4
    locked = answers[4]
    assert locked.status_code == 429
    wait = int(locked.headers["retry-after"])
    assert 1 <= wait <= 60
    # X-Forwarded-For from an untrusted peer changes nothing; the right password waits too.
    assert chargebee(relay, "wrong-password", forwarded_for="198.51.100.8").status_code == 429
    assert chargebee(relay, CB_PASSWORD).status_code == 429
    time.sleep(wait + 0.2)
    # Past the lock-out the right credentials get through (to the body's own answer).
    assert chargebee(relay, CB_PASSWORD).status_code not in (401, 429)
    assert chargebee(relay, "wrong-password").status_code == 401  # counting starts over


def test_behind_a_trusted_proxy_the_forwarded_address_is_throttled(tmp_path, relay_factory):
    relay = relay_factory(env(tmp_path, RELAY_TRUSTED_PROXIES="127.0.0.1"), "--no-worker")
    for _ in range(5):
        last = chargebee(relay, "wrong-password", forwarded_for="198.51.100.7")
    assert last.status_code == 429
    assert chargebee(relay, CB_PASSWORD, forwarded_for="198.51.100.7").status_code == 429
    # Another client behind the same proxy is not locked out.
    assert chargebee(relay, CB_PASSWORD, forwarded_for="198.51.100.9").status_code not in (401, 429)
    assert chargebee(relay, "wrong-password", forwarded_for="198.51.100.9").status_code == 401
