"""Test helpers: fixtures from ../shared, processor signing, a real `relay serve` process."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RELAY_SHARED_DIR", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"

STRIPE_SECRET = "whsec_test_secret"
SIMMER_KEY = "simmer_sk_test_0123456789"
SIMMER_PROJECT = "proj_test"
IMPACT_SID = "IRtestSID123"
IMPACT_TOKEN = "impact-auth-token-xyz"


def fixture_bytes(relative: str) -> bytes:
    path = FIXTURES / relative
    if not path.is_file():
        raise FileNotFoundError(f"fixture {path} is missing (set RELAY_SHARED_DIR to the shared/ folder)")
    return path.read_bytes()


def fixture(relative: str) -> Any:
    return json.loads(fixture_bytes(relative))


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05,
               message: str = "condition") -> Any:
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


async def wait_async(predicate: Callable[[], Awaitable[Any]], timeout: float = 20.0,
                     message: str = "condition") -> Any:
    """`wait_until` inside a test's event loop: await `predicate()` until it is truthy."""
    deadline = time.time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------ Stripe


def stripe_v1(body: bytes, secret: str, timestamp: int) -> str:
    """Stripe's `v1` signature written out from its docs, not the SDK relay verifies with:
    hex HMAC-SHA256 of `{t}.{raw body}`, keyed with the whole secret, `whsec_` included.
    (tests/sources/test_stripe_signatures.py checks it against the shared vectors.)"""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def stripe_headers(body: bytes, secret: str = STRIPE_SECRET, timestamp: int | None = None) -> dict[str, str]:
    t = int(time.time()) if timestamp is None else timestamp
    return {"Stripe-Signature": f"t={t},v1={stripe_v1(body, secret, t)}", "Content-Type": "application/json"}


JPY_FIXTURE = "stripe/checkout.session.completed.payment.jpy.api-2025-06-30.basil.unattributed.json"


def checkout_event(
    *,
    amount: int = 4900,
    currency: str = "usd",
    email: str | None = "buyer@example.com",
    metadata: dict[str, str] | None = None,
    payment_status: str = "paid",
    event_type: str = "checkout.session.completed",
    livemode: bool = True,
    created: int | None = None,
    session_id: str | None = None,
    event_id: str | None = None,
    tax: int = 0,
    shipping: int = 0,
    discount: int = 0,
    customer: str | None = "cus_TestCustomer01",
) -> dict[str, Any]:
    """A checkout.session.* event built from the real JPY capture, with chosen values."""
    event = copy.deepcopy(fixture(JPY_FIXTURE))
    suffix = uuid.uuid4().hex
    session = event["data"]["object"]
    session.update(
        id=session_id or f"cs_live_a1{suffix}{suffix[:24]}",  # 66 chars, like real ids
        amount_subtotal=amount - tax - shipping + discount,
        amount_total=amount,
        currency=currency,
        customer=customer,
        livemode=livemode,
        metadata=metadata or {},
        payment_status=payment_status,
        payment_intent=f"pi_3{suffix[:23]}",
        total_details={"amount_discount": discount, "amount_shipping": shipping, "amount_tax": tax},
    )
    session["customer_details"]["email"] = email
    event.update(
        id=event_id or f"evt_1{suffix[:23]}",
        created=int(time.time()) - 5 if created is None else created,
        livemode=livemode,
        type=event_type,
    )
    return event


def body_of(event: dict[str, Any]) -> bytes:
    return json.dumps(event, indent=2).encode()


# ------------------------------------------------------------------ relay process


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 30) -> None:
    """SIGTERM (a graceful shutdown), then SIGKILL if it does not end within `grace`."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


LISTENING = re.compile(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)")


class RelayProcess:
    """`python -m relay serve` on 127.0.0.1 with its own env and SQLite file.

    Without a `port`, relay binds port 0 itself (the kernel picks a free one, no
    check-then-bind race) and the port is read from uvicorn's "running on" line; a
    restarted process may get another port, and `url` follows it."""

    _made = 0

    def __init__(self, env: dict[str, str], workdir: Path, port: int | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.env = env
        self.workdir = workdir
        self.fixed_port = port
        self.port: int | None = port
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        RelayProcess._made += 1
        self.name = f"relay-{RelayProcess._made}"
        self._logs: list[Path] = []

    @property
    def url(self) -> str:
        if self.port is None:
            raise AssertionError("relay has not been started yet: no port")
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> RelayProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "DATABASE_URL"))}
        env.update(self.env)
        env.setdefault("PYTHONPATH", str(REPO))
        log = self.workdir / f"{self.name}-{len(self._logs)}.log"
        self._logs.append(log)
        port = 0 if self.fixed_port is None else self.fixed_port
        self.port = self.fixed_port
        with log.open("wb") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "serve", "--host", "127.0.0.1", "--port", str(port),
                 *self.args],
                cwd=self.workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_healthy()
        return self

    def _listening_port(self) -> int | None:
        found = LISTENING.search(self._logs[-1].read_bytes()) if self._logs and self._logs[-1].exists() else None
        return int(found.group(1)) if found else None

    def wait_healthy(self, timeout: float = 20.0) -> None:
        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"relay exited with {self.proc.returncode}:\n{self.logs()}")
            if self.port is None:
                self.port = self._listening_port()
                if self.port is None:
                    return False
            try:
                return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout, message="relay /healthz")

    def post(self, source: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(f"{self.url}/webhooks/{source}", content=body, headers=headers or {}, timeout=30)

    def post_stripe(self, event: dict[str, Any] | bytes, **kw: Any) -> httpx.Response:
        body = event if isinstance(event, bytes) else body_of(event)
        return self.post("stripe", body, stripe_headers(body, **kw))

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(30)

    def stop(self) -> None:
        stop_process(self.proc)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self._logs if p.exists())

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "DATABASE_URL"))}
        env.update(self.env)
        env.setdefault("PYTHONPATH", str(REPO))
        result = subprocess.run([sys.executable, "-m", "relay", *args], cwd=self.workdir, env=env,
                                capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"relay {' '.join(args)} failed: {result.stderr}")
        return result

    def deliveries(self, **filters: str) -> list[dict[str, Any]]:
        args = ["deliveries", "--json", "--limit", "100000"]
        for key, value in filters.items():
            args += [f"--{key}", value]
        out = self.cli(*args).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]


def sqlite_count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608
