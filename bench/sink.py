"""A bare Starlette endpoint on uvicorn: 200 to any request, after reading its body.

Used as the bare baseline of bench/ingest.py and as the destination sink of
bench/delivery.py, bench/latency.py and bench/memory.py. With BENCH_SINK_RECORD=1 it
records the arrival time of each request by its order id (Simmer's `order_id` or the
generic webhook's `data.order_key`); GET /arrivals returns them as JSON.
"""

from __future__ import annotations

import os
import time

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

RECORD = os.environ.get("BENCH_SINK_RECORD") == "1"
arrivals: dict[str, float] = {}
OK = b'{"ok":true}'


async def anything(request: Request) -> Response:
    body = await request.body()
    if RECORD:
        at = time.time()
        try:
            doc = orjson.loads(body)
            key = doc.get("order_id") or doc.get("data", {}).get("order_key")
        except (orjson.JSONDecodeError, AttributeError):
            key = None
        if key:
            arrivals.setdefault(key, at)
    return Response(OK, media_type="application/json")


async def healthz(request: Request) -> Response:
    return Response(OK, media_type="application/json")


async def get_arrivals(request: Request) -> Response:
    return Response(orjson.dumps(arrivals), media_type="application/json")


app = Starlette(routes=[
    Route("/healthz", healthz, methods=["GET"]),
    Route("/arrivals", get_arrivals, methods=["GET"]),
    Route("/{path:path}", anything, methods=["GET", "POST", "PUT"]),
])
