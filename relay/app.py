"""The web app: `POST /webhooks/<source>`, `GET /healthz`, `GET /metrics`.

`create_app(settings)` wires the store, the sources, the destinations and (by
default) the delivery worker into one Starlette app. A webhook is answered 200
only after the transaction holding it has committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.destinations import Destination, build_destinations
from relay.enrich import build_enricher
from relay.errors import PayloadError, SignatureError, StoreError
from relay.intake import IGNORED, Intake
from relay.metrics import Metrics
from relay.settings import Settings, load_settings
from relay.sources import Source, build_sources
from relay.store import Store, open_store
from relay.worker import Worker

log = logging.getLogger("relay.web")
KNOWN_SOURCES = ("stripe", "lemonsqueezy", "paddle", "chargebee")


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class BodyTooLarge(Exception):
    pass


@dataclass
class Relay:
    """Everything a request handler needs, built once per app."""

    settings: Settings
    store: Store
    sources: dict[str, Source]
    destinations: dict[str, Destination]
    metrics: Metrics = field(default_factory=Metrics)
    worker: Worker | None = None
    intake: Intake = field(init=False)

    def __post_init__(self) -> None:
        self.intake = Intake(self.settings, self.store, self.sources, self.destinations)


def create_app(
    settings: Settings | None = None,
    *,
    run_worker: bool = True,
    worker_options: dict[str, Any] | None = None,
) -> Starlette:
    settings = settings or load_settings()
    relay = Relay(
        settings=settings,
        store=open_store(settings.store_url),
        sources=build_sources(settings),
        destinations=build_destinations(settings),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await relay.store.open()
        task = None
        enricher = None
        if run_worker:
            options = dict(worker_options or {})
            if "enrich" not in options:
                enricher = options["enrich"] = build_enricher(settings)
            relay.worker = Worker(
                relay.store,
                relay.destinations,
                settings.worker,
                metrics=relay.metrics,
                **options,
            )
            task = asyncio.create_task(relay.worker.run(), name="relay-worker")
        log.info(
            "relay ready: store=%s sources=%s destinations=%s worker=%s",
            relay.store.url.split("://", 1)[0],
            ",".join(relay.sources) or "-",
            ",".join(relay.destinations) or "-",
            "on" if run_worker else "off",
        )
        try:
            yield
        finally:
            if relay.worker is not None and task is not None:
                await relay.worker.stop()
                with contextlib.suppress(Exception):
                    await task
            if enricher is not None:
                await enricher.aclose()
            await relay.store.close()

    async def webhook(request: Request) -> Response:
        return await receive(relay, request)

    async def healthz(request: Request) -> Response:
        try:
            await asyncio.wait_for(relay.store.ping(), timeout=2.0)
        except (StoreError, TimeoutError) as exc:
            # The detail (host, user, path) goes to the log, not to an unauthenticated caller.
            log.warning("healthz: store unavailable: %s", exc or "timeout")
            return JSON({"status": "unavailable", "store": "not answering"}, status_code=503)
        return JSON(
            {
                "status": "ok",
                "store": relay.store.url.split("://", 1)[0],
                "worker": relay.worker is not None,
                "sources": list(relay.sources),
                "destinations": list(relay.destinations),
            }
        )

    async def metrics(request: Request) -> Response:
        try:
            body = await relay.metrics.render(relay.store, relay.destinations)
        except StoreError as exc:
            log.warning("metrics: store unavailable: %s", exc)
            return JSON({"error": "store unavailable"}, status_code=503)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    app = Starlette(
        routes=[
            Route("/webhooks/{source}", webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.relay = relay
    return app


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def receive(relay: Relay, request: Request) -> Response:
    name = request.path_params["source"]
    source = relay.sources.get(name)
    if source is None:
        if name in KNOWN_SOURCES:
            return JSON({"error": f"source {name!r} is not configured"}, status_code=404)
        return JSON({"error": f"unknown source {name[:40]!r}"}, status_code=404)

    def answer(outcome: str, body: dict[str, Any], status: int = 200, **headers: str) -> Response:
        relay.metrics.webhook(name, outcome)
        return JSON(body, status_code=status, headers=headers or None)

    limit = relay.settings.max_body_bytes
    try:
        body = await read_body(request, limit)
    except BodyTooLarge:
        return answer("too_large", {"error": f"body is larger than {limit} bytes"}, 413)

    now = time.time()
    try:
        source.verify(body, request.headers, now)
    except SignatureError as exc:
        log.warning("webhook source=%s rejected: %s", name, exc)
        extra = {"WWW-Authenticate": 'Basic realm="relay"'} if exc.status_code == 401 else {}
        return answer("rejected", {"error": str(exc)}, exc.status_code, **extra)
    try:
        result = await relay.intake.accept(name, body, now)
    except PayloadError as exc:
        log.warning("webhook source=%s malformed: %s", name, exc)
        return answer("malformed", {"error": str(exc)}, 400)
    except Exception as exc:  # StoreError or worse: nothing acked, the processor retries
        log.error("webhook source=%s event not stored: %s", name, exc)
        return answer("store_error", {"error": "store unavailable, retry later"}, 503)

    parsed = result.parsed
    tag = f"source={name} event={parsed.event_id} type={parsed.event_type}"
    if result.status == IGNORED:
        log.info("webhook %s ignored: %s", tag, result.reason)
        return answer("ignored", {"status": "ignored", "reason": result.reason})
    recorded = result.recorded
    assert recorded is not None
    if recorded.duplicate:
        log.info("webhook %s duplicate", tag)
        return answer("duplicate", {"status": "duplicate", "event_id": parsed.event_id})
    if recorded.deliveries and relay.worker is not None:
        relay.worker.wake()
    log.info(
        "webhook %s accepted conversions=%s known=%s deliveries=%d",
        tag,
        ",".join(f"{c.kind}:{c.order_key}" for c in recorded.conversions) or "-",
        ",".join(f"{c.kind}:{c.order_key}" for c in recorded.known) or "-",
        recorded.deliveries,
    )
    out: dict[str, Any] = {
        "status": "accepted",
        "event_id": parsed.event_id,
        "conversions": [c.summary() for c in recorded.conversions],
        "deliveries": recorded.deliveries,
    }
    if recorded.known:
        out["already_recorded"] = [c.summary() for c in recorded.known]
    return answer("accepted", out)
