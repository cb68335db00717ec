"""The web app: `POST /webhooks/<source>`, `GET /healthz`, `GET /metrics` (behind
`Authorization: Bearer $RELAY_ADMIN_TOKEN` when that is set), `GET /relay.js`, and the
console under `/console` when RELAY_ADMIN_TOKEN is set (relay/console/).

`create_app(settings)` wires the store, the sources, the destinations and (by
default) the delivery worker into one Starlette app. A webhook is answered 200
only after the transaction holding it has committed.

Before a body is read, a request is checked on what costs nothing to check: a
locked-out client address (relay.throttle), the source's signature header or Basic
credentials (`Source.verify_headers`), and room in the budget of bodies being read
at once (relay.limits); the body then has RELAY_BODY_TIMEOUT_SECONDS to arrive.
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
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from relay.destinations import Destination, build_destinations
from relay.enrich import build_enricher
from relay.errors import AuthError, PayloadError, SignatureError, StoreError
from relay.intake import DUPLICATE, FETCHING, IGNORED, QUARANTINED, Intake
from relay.limits import BodyBudget
from relay.logs import short
from relay.metrics import Metrics, authorized
from relay.reconcile import Reconciler
from relay.settings import Settings, load_settings
from relay.sources import Source, build_sources
from relay.store import Store, open_store
from relay.tally import Tally
from relay.thin import ThinEvents
from relay.throttle import Throttle
from relay.worker import Worker

log = logging.getLogger("relay.web")
KNOWN_SOURCES = ("stripe", "lemonsqueezy", "paddle", "chargebee")


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class BodyTooLarge(Exception):
    pass


class BodyBusy(Exception):
    """The budget of body bytes being read at once is spent (relay.limits)."""


TOO_MANY_FAILURES = "too many wrong credentials from this address, retry later"
BUSY_RETRY_AFTER = 5  # seconds; the processors retry a 503 on their own schedule anyway


def close(retry: int | None = None) -> dict[str, str]:
    """Headers that make uvicorn close the connection after the answer (and Retry-After)."""
    headers = {"Connection": "close"}
    if retry is not None:
        headers["Retry-After"] = str(retry)
    return headers


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
    budget: BodyBudget = field(init=False)
    throttles: dict[str, Throttle] = field(init=False)
    thin: ThinEvents | None = None  # the worker's thin-event fetcher, when it runs here

    def __post_init__(self) -> None:
        self.intake = Intake(self.settings, self.store, self.sources, self.destinations)
        self.budget = BodyBudget(self.settings.max_inflight_body_bytes)
        failures = self.settings.chargebee.max_auth_failures
        self.throttles = {name: Throttle(failures=failures) for name in self.sources}


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

    tally = Tally(relay.store, relay.metrics)  # the 24 h figures of the console

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await relay.store.open()
        tally.start()
        task = None
        enricher = None
        reconciler: Reconciler | None = None
        reconciling = None
        fetching = None
        if run_worker:
            options = dict(worker_options or {})
            if "enrich" not in options:
                enricher = options["enrich"] = build_enricher(settings)
            relay.worker = Worker(
                relay.store,
                relay.destinations,
                settings.worker,
                metrics=relay.metrics,
                retention_days=settings.retention_days,
                **options,
            )
            task = asyncio.create_task(relay.worker.run(), name="relay-worker")
            reconciler = Reconciler(
                settings, relay.store, relay.destinations, wake=relay.worker.wake
            )
            if reconciler.enabled:  # the worker process also re-reads the processors' APIs
                reconciling = asyncio.create_task(reconciler.run(), name="relay-reconcile")
            thin = ThinEvents(settings, relay.store, relay.destinations, wake=relay.worker.wake)
            if thin.enabled:  # …and fetches the objects Stripe thin events name
                relay.thin = thin
                fetching = asyncio.create_task(thin.run(), name="relay-thin-events")
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
            if relay.thin is not None and fetching is not None:
                await relay.thin.stop()
                with contextlib.suppress(Exception):
                    await fetching
            if reconciler is not None and reconciling is not None:
                await reconciler.stop()
                with contextlib.suppress(Exception):
                    await reconciling
            if relay.worker is not None and task is not None:
                await relay.worker.stop()
                with contextlib.suppress(Exception):
                    await task
            if enricher is not None:
                await enricher.aclose()
            await tally.stop()
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

    admin_token = settings.admin_token.get_secret_value() if settings.admin_token else ""

    async def metrics(request: Request) -> Response:
        if admin_token and not authorized(request.headers.get("authorization"), admin_token):
            return JSON(
                {"error": "/metrics needs Authorization: Bearer <RELAY_ADMIN_TOKEN>"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="relay"'},
            )
        try:
            body = await relay.metrics.render(relay.store, relay.destinations)
        except StoreError as exc:
            log.warning("metrics: store unavailable: %s", exc)
            return JSON({"error": "store unavailable"}, status_code=503)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    routes: list[BaseRoute] = [
        Route("/webhooks/{source}", webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/relay.js", browser_script(), methods=["GET", "HEAD"]),
    ]
    if settings.admin_token is not None and settings.admin_token.get_secret_value():
        from relay import console  # without the token nothing is mounted: /console… is 404

        routes.append(Mount("/console", app=console.build(relay)))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.relay = relay
    app.state.tally = tally
    return app


def browser_script() -> Any:
    """`GET /relay.js`: the browser half of attribution (relay/static/relay.js), read once.
    Cached for an hour and revalidated by ETag, so a relay upgrade reaches browsers soon."""
    import hashlib
    from importlib.resources import files

    body = (files("relay") / "static" / "relay.js").read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {
        "Cache-Control": "public, max-age=3600",
        "ETag": etag,
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Resource-Policy": "cross-origin",  # loaded by the merchant's own site
    }

    async def serve(request: Request) -> Response:
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="text/javascript; charset=utf-8", headers=headers)

    return serve


async def read_body(request: Request, limit: int, budget: BodyBudget, within: float) -> bytes:
    """The body, within bounds: at most `limit` bytes (BodyTooLarge); reserved in the
    budget of bytes being read at once before anything is read (BodyBusy); complete
    within `within` seconds (TimeoutError). A client gone mid-upload raises starlette's
    ClientDisconnect."""
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit():
        reserved = int(declared)
        if reserved > limit:
            raise BodyTooLarge
    else:
        reserved = limit  # chunked: the largest it may become
    if not budget.take(reserved):
        raise BodyBusy
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(within):
            async for chunk in request.stream():
                size += len(chunk)
                if size > reserved:
                    raise BodyTooLarge
                chunks.append(chunk)
    finally:
        budget.give(reserved)
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

    # Before the body is read: a locked-out address, a missing or impossible signature
    # header and wrong Basic credentials cost no body buffer (the connection is closed,
    # so whatever the client still sends is not read either).
    now = time.time()
    throttle = relay.throttles[name]
    address = request.client.host if request.client else None
    wait = throttle.locked(address)
    if wait:
        return answer("throttled", {"error": TOO_MANY_FAILURES}, 429, **close(retry=wait))
    try:
        source.verify_headers(request.headers, now)
    except SignatureError as exc:
        log.warning("webhook source=%s rejected: %s", name, exc)
        if isinstance(exc, AuthError):
            wait = throttle.failed(address)
            if wait:
                return answer("throttled", {"error": TOO_MANY_FAILURES}, 429, **close(retry=wait))
        extra = {"WWW-Authenticate": 'Basic realm="relay"'} if exc.status_code == 401 else {}
        return answer("rejected", {"error": str(exc)}, exc.status_code, **extra, **close())
    throttle.succeeded(address)

    limit = relay.settings.max_body_bytes
    try:
        body = await read_body(request, limit, relay.budget, relay.settings.body_timeout_seconds)
    except BodyTooLarge:
        too_large = {"error": f"body is larger than {limit} bytes"}
        return answer("too_large", too_large, 413, **close())
    except BodyBusy:
        log.warning("webhook source=%s refused: RELAY_MAX_INFLIGHT_BODY_BYTES reached", name)
        busy = {"error": "too many requests being read at once, retry later"}
        return answer("busy", busy, 503, **close(retry=BUSY_RETRY_AFTER))
    except TimeoutError:
        log.warning("webhook source=%s cut: the body took over RELAY_BODY_TIMEOUT_SECONDS", name)
        return answer("too_slow", {"error": "the body arrived too slowly"}, 408, **close())
    except ClientDisconnect:
        log.info("webhook source=%s: the client disconnected before its body was complete", name)
        return answer("disconnected", {"error": "client disconnected"}, 400)

    try:
        source.verify(body, request.headers, now)
    except SignatureError as exc:
        log.warning("webhook source=%s rejected: %s", name, exc)
        extra = {"WWW-Authenticate": 'Basic realm="relay"'} if exc.status_code == 401 else {}
        return answer("rejected", {"error": str(exc)}, exc.status_code, **extra)
    try:
        result = await relay.intake.accept(name, body, now)
    except PayloadError as exc:  # not a JSON object at all (NotJSONObject): stored nowhere
        log.warning("webhook source=%s malformed: %s", name, exc)
        return answer("malformed", {"error": str(exc)}, 400)
    except Exception as exc:  # StoreError or worse: nothing acked, the processor retries
        log.error("webhook source=%s event not stored: %s", name, exc)
        return answer("store_error", {"error": "store unavailable, retry later"}, 503)

    parsed = result.parsed
    tag = f"source={name} event={short(parsed.event_id)} type={short(parsed.event_type)}"
    if result.status == DUPLICATE:
        log.info("webhook %s duplicate", tag)
        return answer("duplicate", {"status": "duplicate", "event_id": parsed.event_id})
    if result.status == IGNORED:
        log.info("webhook %s ignored: %s", tag, result.reason)
        return answer("ignored", {"status": "ignored", "reason": result.reason})
    if result.status == FETCHING:  # a Stripe thin event: the worker fetches its object
        log.info("webhook %s stored: %s", tag, result.reason)
        if relay.thin is not None:
            relay.thin.wake()
        return answer(
            "fetching",
            {"status": "fetching", "event_id": parsed.event_id, "reason": result.reason},
        )
    if result.status == QUARANTINED:
        # Stored, answered 200 so the processor stops retrying a body that will not
        # parse (Stripe would disable the endpoint); `relay replay` reads it again later.
        log.warning("webhook %s quarantined: %s", tag, result.reason)
        return answer(
            "quarantined",
            {"status": "quarantined", "event_id": parsed.event_id, "reason": result.reason},
        )
    recorded = result.recorded
    assert recorded is not None
    if recorded.deliveries and relay.worker is not None:
        relay.worker.wake()
    log.info(
        "webhook %s accepted conversions=%s known=%s deliveries=%d",
        tag,
        ",".join(f"{c.kind}:{short(c.order_key)}" for c in recorded.conversions) or "-",
        ",".join(f"{c.kind}:{short(c.order_key)}" for c in recorded.known) or "-",
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
