"""A real HTTP server on 127.0.0.1 standing in for a destination API.

Each emulator is a Starlette app that enforces its destination's documented
rules and answers as that API does. It runs under uvicorn in a thread, so the
relay talks to it over a real socket. Tests inject faults:

    emu.fail_next(2, 503)                      # the next 2 valid requests get a 503
    emu.fail_next(1, 429, {"Retry-After": "1"})
    emu.delay = 3.0                            # answer slowly (client timeouts)
    emu.rate_limit_per_minute = 50             # enforce a sliding-window limit (429)

`emu.accepted` lists the requests the API accepted; `emu.rejected` the ones it
refused with its rule-breaking reason; `emu.faulted` the valid requests that got
an injected fault instead of an answer; `emu.requests` all of them in order.

Order of a request's handling: (delay) → `validate` → injected fault → rate
limit → `handle`. A request is validated before any fault is injected, so a
fault case still checks what was sent: a request that breaks a rule while a
fault is queued is a rejection, recorded as such, and the fault stays queued
for the next valid request. `validate` must not change state; `handle` does
what the API does with a valid request (record it, deduplicate, answer).
Subclasses written before this split validate in `handle`; they still work.

The port is reserved when the emulator is made (a socket bound but not
listening: connections are refused until `start()`), so a URL can be handed out
before the server runs and no other process can take the port meanwhile. The
same socket is handed to uvicorn. Module-scoped emulators are `reset()` between
tests (see tests/destinations/conftest.py), so no state leaks from one to the next.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import uvicorn
from iso4217 import Currency
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    parsed: Any = None
    at: float = field(default_factory=time.time)
    query: str = ""  # the raw query string (GA4 takes its secret there)


class Rejection(Exception):
    """`body` is the answer; `reason` (default: the body) is what `rejected` records, for
    an API that answers a refused request without saying why (GA4's /mp/collect)."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None,
                 reason: Any = None) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.reason = body if reason is None else reason


# ISO 4217 codes from the `iso4217` package (independent of relay's own table), less
# XTS (reserved for testing) and XXX (no currency): what an API takes as a currency.
ISO_CURRENCIES = frozenset(c.code for c in Currency) - {"XTS", "XXX"}


def is_currency(value: Any) -> bool:
    """An active ISO 4217 code, upper case ("XYZ", "usd" and "US$" are not)."""
    return isinstance(value, str) and value in ISO_CURRENCIES


def real_datetime(value: str) -> datetime | None:
    """The moment an ISO-8601 string names, or None for an impossible one (2024-02-31)."""
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def reserve_port(port: int = 0) -> socket.socket:
    """A TCP socket bound to 127.0.0.1:`port` (0: any free one), not yet listening.

    Nobody else can bind the port while it is held, and connections to it are
    refused until someone listens on it: a destination that is down."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def free_port() -> int:
    """A port that was free a moment ago. Racy (check-then-bind): prefer `reserve_port`,
    or an Emulator, which holds its port from construction."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Emulator:
    """Subclasses implement `validate(seen)` (the documented rules; raise Rejection) and
    `handle(seen)` (the answer to a valid request, and its effect)."""

    path = "/"
    default_rate_limit_per_minute: int | None = None

    def __init__(self, port: int | None = None) -> None:
        self._sock: socket.socket | None = reserve_port(port or 0)
        self.port = int(self._sock.getsockname()[1])
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        Emulator.reset(self)

    # -------------------------------------------------------------- control

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        """Forget every request and fault: the state of a freshly started stand-in.
        Subclasses with state of their own extend this."""
        self.accepted: list[Seen] = []
        self.rejected: list[tuple[Seen, int, Any]] = []
        self.faulted: list[tuple[Seen, int]] = []
        self.requests: list[Seen] = []
        self._faults: deque[tuple[int, dict[str, str], Any]] = deque()
        self.delay = 0.0
        self.rate_limit_per_minute = self.default_rate_limit_per_minute
        self._window: deque[float] = deque()
        # A request still in flight from before the reset (a killed relay's, a slow
        # answer) must not land in the new lists: it is answered 503 and recorded nowhere.
        self._generation = getattr(self, "_generation", 0) + 1

    def fail_next(self, count: int, status: int, headers: dict[str, str] | None = None,
                  body: Any = None) -> None:
        for _ in range(count):
            self._faults.append((status, headers or {}, body if body is not None else {"error": "injected"}))

    def start(self) -> Emulator:
        app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=["GET", "POST", "PUT", "DELETE"])])
        # timeout_graceful_shutdown: a deliberately slow answer (emu.delay) must not hold stop()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off", access_log=False, timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        if self._sock is None:  # restarted after stop(): take the same port again
            self._sock = reserve_port(self.port)
        sock, self._sock = self._sock, None  # uvicorn listens on it and closes it at stop
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started:
            if time.time() > deadline or not self._thread.is_alive():
                raise RuntimeError("emulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._server = None
        self._thread = None
        if self._sock is not None:  # made but never started
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -------------------------------------------------------------- serving

    async def _endpoint(self, request: Request) -> Response:
        generation = self._generation
        try:
            body = await request.body()
        except ClientDisconnect:  # the relay died mid-request (crash tests)
            return Response(status_code=499)
        if generation != self._generation:
            return Response(status_code=503)
        seen = Seen(request.method, request.url.path, {k.lower(): v for k, v in request.headers.items()}, body,
                    query=request.url.query)
        self.requests.append(seen)
        if self.delay:
            await asyncio.sleep(self.delay)
            if generation != self._generation:
                return Response(status_code=503)
        try:
            self.validate(seen)
        except Rejection as exc:
            return self._reject(seen, exc)
        if self._faults:
            status, headers, payload = self._faults.popleft()
            self.faulted.append((seen, status))
            return JSONResponse(payload, status_code=status, headers=headers)
        if self.rate_limit_per_minute is not None:
            now = time.time()
            with self._lock:
                while self._window and self._window[0] <= now - 60:
                    self._window.popleft()
                if len(self._window) >= self.rate_limit_per_minute:
                    wait = int(self._window[0] + 60 - now) + 1
                    self.rejected.append((seen, 429, "rate limit"))
                    return self.rate_limited(wait)
                self._window.append(now)
        try:
            status, payload = self.handle(seen)
        except Rejection as exc:
            return self._reject(seen, exc)
        self.accepted.append(seen)
        if payload is None:
            return Response(status_code=status)
        return JSONResponse(payload, status_code=status)

    def _reject(self, seen: Seen, exc: Rejection) -> Response:
        self.rejected.append((seen, exc.status, exc.reason))
        if exc.body is None:  # an API that answers without a body (GA4's 204)
            return Response(status_code=exc.status, headers=exc.headers)
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    def rate_limited(self, wait: int) -> Response:
        return JSONResponse({"error": "rate limit exceeded"}, status_code=429,
                            headers={"Retry-After": str(wait)})

    def validate(self, seen: Seen) -> None:
        """Raise Rejection when the request breaks a documented rule. No state changes."""

    def handle(self, seen: Seen) -> tuple[int, Any]:
        raise NotImplementedError
