"""A real HTTP server on 127.0.0.1 standing in for a destination API.

Each emulator is a Starlette app that enforces its destination's documented
rules and answers as that API does. It runs under uvicorn in a thread, so the
relay talks to it over a real socket. Tests inject faults:

    emu.fail_next(2, 503)                      # the next 2 requests get a 503
    emu.fail_next(1, 429, {"Retry-After": "1"})
    emu.delay = 3.0                            # answer slowly (client timeouts)
    emu.rate_limit_per_minute = 50             # enforce a sliding-window limit (429)

`emu.accepted` lists the requests the API accepted; `emu.rejected` the ones it
refused with its rule-breaking reason.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import uvicorn
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Emulator:
    """Subclasses set `routes` (path, method) and implement `handle(request, body)`."""

    path = "/"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.accepted: list[Seen] = []
        self.rejected: list[tuple[Seen, int, Any]] = []
        self.requests: list[Seen] = []
        self._faults: deque[tuple[int, dict[str, str], Any]] = deque()
        self.delay = 0.0
        self.rate_limit_per_minute: int | None = None
        self._window: deque[float] = deque()
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- control

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, count: int, status: int, headers: dict[str, str] | None = None,
                  body: Any = None) -> None:
        for _ in range(count):
            self._faults.append((status, headers or {}, body if body is not None else {"error": "injected"}))

    def start(self) -> Emulator:
        app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=["GET", "POST", "PUT", "DELETE"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started:
            if time.time() > deadline:
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

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -------------------------------------------------------------- serving

    async def _endpoint(self, request: Request) -> Response:
        try:
            body = await request.body()
        except ClientDisconnect:  # the relay died mid-request (crash tests)
            return Response(status_code=499)
        seen = Seen(request.method, request.url.path, {k.lower(): v for k, v in request.headers.items()}, body,
                    query=request.url.query)
        self.requests.append(seen)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self._faults:
            status, headers, payload = self._faults.popleft()
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
            self.rejected.append((seen, exc.status, exc.reason))
            if exc.body is None:  # an API that answers without a body (GA4's 204)
                return Response(status_code=exc.status, headers=exc.headers)
            return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)
        self.accepted.append(seen)
        if payload is None:
            return Response(status_code=status)
        return JSONResponse(payload, status_code=status)

    def rate_limited(self, wait: int) -> Response:
        return JSONResponse({"error": "rate limit exceeded"}, status_code=429,
                            headers={"Retry-After": str(wait)})

    def handle(self, seen: Seen) -> tuple[int, Any]:
        raise NotImplementedError
