"""What the processor API stand-ins share beyond `Emulator`: malformed pages on demand and
query-string helpers.

    emu.malformed_next(1)                          # the next answer is 200 with a page of the
                                                   #   wrong shape ({"data": "…"}, no cursor)
    emu.malformed_next(1, raw=b'{"data": [')       # …or with these exact bytes (cut JSON)
    emu.malformed_when(lambda path, query: …)      # once, for the first request it matches

`emu.pages` counts the list pages served (200s of a list endpoint); `emu.page_cap = n`
serves at most n entries a page whatever the page size asked (to exercise pagination).
"""

from __future__ import annotations

import contextvars
from collections import deque
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from tests.emulators.base import Emulator, Rejection

MALFORMED_PAGE = {"data": "this is not a list", "object": "list"}
_QUERY: contextvars.ContextVar[str] = contextvars.ContextVar("query", default="")


class ProcessorEmulator(Emulator):
    def __init__(self, port: int | None = None) -> None:
        super().__init__(port)
        self._raw: deque[bytes] = deque()
        self.pages = 0
        self.queries: list[tuple[str, list[tuple[str, str]]]] = []  # (path, query) in order
        self.page_cap: int | None = None  # serve at most this many per page (to test paging)
        self.faulted: list[int] = []  # indexes in `queries` answered by an injected fault
        self._when: list[tuple[Any, bytes]] = []

    def malformed_next(self, count: int = 1, raw: bytes | None = None) -> None:
        import json

        for _ in range(count):
            self._raw.append(raw if raw is not None else json.dumps(MALFORMED_PAGE).encode())

    def malformed_when(self, predicate: Any, raw: bytes | None = None) -> None:
        import json

        self._when.append((predicate, raw if raw is not None else json.dumps(MALFORMED_PAGE).encode()))

    def queries_of(self, path: str) -> list[list[tuple[str, str]]]:
        return [q for p, q in self.queries if p == path]

    async def _endpoint(self, request: Request) -> Response:
        if self._raw and request.method == "GET":
            from tests.emulators.base import Seen

            body = self._raw.popleft()
            self.requests.append(Seen(request.method, request.url.path,
                                      {k.lower(): v for k, v in request.headers.items()}, b""))
            return Response(body, status_code=200, media_type="application/json")
        _QUERY.set(request.url.query)  # each request runs in its own task: its own value
        params = parse_qsl(request.url.query, keep_blank_values=True)
        self.queries.append((request.url.path, params))
        for entry in list(self._when):
            predicate, raw = entry
            if request.method == "GET" and predicate(request.url.path, dict(params)):
                self._when.remove(entry)
                self.faulted.append(len(self.queries) - 1)
                return Response(raw, status_code=200, media_type="application/json")
        if self._faults:
            self.faulted.append(len(self.queries) - 1)
        return await super()._endpoint(request)


def query() -> list[tuple[str, str]]:
    """The query string of the request being handled, as (key, value) pairs, repeats kept."""
    return parse_qsl(_QUERY.get(), keep_blank_values=True)


def integer(value: str | None, name: str, default: int, low: int, high: int | None,
            error: Any) -> int:
    """A query integer within [low, high]; `error(message, param)` builds the Rejection."""
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise error(f"Invalid integer: {value[:20]}", name) from None
    if number < low or (high is not None and number > high):
        raise error(f"{name} must be between {low} and {high}", name)
    return number


__all__ = ["ProcessorEmulator", "Rejection", "integer", "query"]
