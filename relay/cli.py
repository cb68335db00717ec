"""`relay` command line: serve, worker, migrate, check, deliveries, retry, simulate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from relay import logs
from relay.errors import ConfigError, StoreError
from relay.settings import Settings, load_settings
from relay.store import FAILED, SKIPPED, STATUSES, open_store


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="relay", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="web app with the delivery worker (default deploy)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--no-worker", action="store_true", help="do not run the delivery worker here")

    sub.add_parser("worker", help="the delivery worker alone")
    sub.add_parser("migrate", help="create or upgrade the schema")
    sub.add_parser("check", help="validate the configuration and print it, secrets masked")

    p = sub.add_parser("deliveries", help="list deliveries")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--destination")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--id", type=int, help="one delivery, with every attempt made")

    p = sub.add_parser(
        "retry", help="requeue failed or skipped deliveries; enable a destination disabled by a 410"
    )
    p.add_argument("ids", nargs="*", type=int, help="these deliveries (failed or skipped)")
    p.add_argument("--failed", action="store_true", help="every failed delivery")
    p.add_argument(
        "--skipped",
        action="store_true",
        help="every skipped delivery (after fixing what made it unsendable)",
    )
    p.add_argument(
        "--destination",
        help="only this destination's; alone, enables it again after its endpoint said 410 Gone",
    )

    p = sub.add_parser("simulate", help="post a signed sample webhook to a running relay")
    p.add_argument("source")
    p.add_argument("--event")
    p.add_argument("--url", help="the relay's base URL (default http://127.0.0.1:$PORT)")
    p.add_argument("--email", default="buyer@example.com")
    p.add_argument("--anonymous-id")
    p.add_argument("--click-id")
    p.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more passthrough metadata, e.g. pagent_session_id=…; repeatable",
    )

    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    logs.setup(settings.log_level)
    # The event loop hands each commit's fsync to a thread; that thread must get the GIL
    # back quickly when the fsync ends, or every batch waits the default 5 ms switch
    # interval behind request parsing (measured: ~+15 % ingest with 0.5 ms).
    sys.setswitchinterval(0.0005)
    try:
        COMMANDS[args.command](settings, args)
    except (ConfigError, StoreError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        sys.exit(1)


def serve(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    from relay.app import create_app

    app = create_app(settings, run_worker=not args.no_worker)
    uvicorn.run(
        app,
        host=args.host or settings.host,
        port=settings.listen_port if args.port is None else args.port,  # 0: any free port
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.worker.shutdown_grace_seconds) + 5,
    )


def worker(settings: Settings, args: argparse.Namespace) -> None:
    from relay.destinations import build_destinations
    from relay.enrich import build_enricher
    from relay.metrics import Metrics
    from relay.worker import Worker

    async def run() -> None:
        store = open_store(settings.store_url)
        await store.open()
        enricher = build_enricher(settings)
        w = Worker(
            store, build_destinations(settings), settings.worker, metrics=Metrics(), enrich=enricher
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(w.stop()))
        try:
            await w.run()
        finally:
            if enricher is not None:
                await enricher.aclose()
            await store.close()

    asyncio.run(run())


def migrate(settings: Settings, args: argparse.Namespace) -> None:
    async def run() -> None:
        store = open_store(settings.store_url)
        await store.open()  # creates or upgrades the schema
        await store.close()

    asyncio.run(run())
    print("schema is up to date")


def check(settings: Settings, args: argparse.Namespace) -> None:
    from relay.destinations import build_destinations
    from relay.sources import build_sources

    build_sources(settings)
    destinations = build_destinations(settings)
    described = settings.describe()
    _show_disabled(settings, destinations, described)
    print(orjson.dumps(described, option=orjson.OPT_INDENT_2).decode())
    if not settings.enabled_sources():
        print(
            "warning: no source is configured; every webhook will be answered 404", file=sys.stderr
        )


def _show_disabled(
    settings: Settings, destinations: dict[str, Any], described: dict[str, Any]
) -> None:
    """`relay check`: mark the destinations their endpoint disabled (HTTP 410), read from the
    ledger, with since when, and say how to enable them. A ledger that does not exist yet
    is not created; one that cannot be read is a warning, not a failed check."""
    url = settings.store_url
    if url.startswith("sqlite:"):
        from pathlib import Path

        from relay.store.sqlite import SQLiteStore

        if not Path(SQLiteStore(url).path).exists():
            return

    async def read() -> dict[str, Any]:
        store = open_store(url)
        await store.open()
        try:
            return await store.disabled_destinations()
        finally:
            await store.close()

    try:
        disabled = asyncio.run(read())
    except StoreError as exc:
        print(f"warning: could not read which destinations are disabled: {exc}", file=sys.stderr)
        return
    for name, state in sorted(disabled.items()):
        if name not in destinations:
            continue
        changed = bool(state.fingerprint) and destinations[name].fingerprint() != state.fingerprint
        described["destinations"][name]["disabled"] = {
            "since": _stamp(state.since) + " UTC",
            "reason": state.reason,
            "url_changed": changed,
        }
        then = (
            "its URL has changed since: the worker enables it when it starts"
            if changed
            else f"`relay retry --destination {name}` (or a new URL) enables it"
        )
        print(
            f"warning: destination {name} is disabled since {_stamp(state.since)} UTC"
            f" ({state.reason[:80]}); its deliveries wait; {then}",
            file=sys.stderr,
        )


def deliveries(settings: Settings, args: argparse.Namespace) -> None:
    async def run() -> tuple[list[Any], list[Any]]:
        store = open_store(settings.store_url)
        await store.open()
        try:
            if args.id is not None:
                rows = await store.deliveries(delivery_id=args.id)
                return rows, (await store.attempts(args.id) if rows else [])
            return await store.deliveries(args.status, args.destination, args.limit), []
        finally:
            await store.close()

    rows, attempts = asyncio.run(run())
    if args.json:
        for row in rows:
            item = {k: getattr(row, k) for k in row.__dataclass_fields__}
            if args.id is not None:
                item["attempt_log"] = [
                    {k: getattr(a, k) for k in a.__dataclass_fields__} for a in attempts
                ]
            print(orjson.dumps(item).decode())
        return
    if not rows:
        print("no such delivery" if args.id is not None else "no deliveries")
        return
    print(
        f"{'ID':>6}  {'DESTINATION':<10} {'STATUS':<9} {'TRIES':>5}  {'NEXT/UPDATED':<20} "
        f"{'KIND':<22} ORDER  ERROR"
    )
    for r in rows:
        when = r.next_attempt_at if r.status == "pending" else r.updated_at
        err = (r.last_error or "").replace("\n", " ")[:120]
        print(
            f"{r.id:>6}  {r.destination:<10} {r.status:<9} {r.attempts:>5}  {_stamp(when):<20} "
            f"{r.kind:<22} {r.order_key}  {err}"
        )
    for n, a in enumerate(attempts, start=1):
        code = a.status_code if a.status_code is not None else "-"
        print(
            f"  attempt {n}: {_stamp(a.started_at)}  {a.outcome:<9} HTTP {code}  "
            f"{a.duration_ms:.0f} ms  {a.detail[:200]}"
        )


def _stamp(when: float | None) -> str:
    return datetime.fromtimestamp(when or 0, UTC).strftime("%Y-%m-%d %H:%M:%S")


def retry(settings: Settings, args: argparse.Namespace) -> None:
    # `--destination D` alone enables D again after its endpoint disabled it (HTTP 410).
    enable_only = bool(args.destination) and not (args.ids or args.failed or args.skipped)
    if not args.ids and not args.failed and not args.skipped and not args.destination:
        raise ConfigError("give delivery ids, or --failed / --skipped [--destination D]")
    if args.ids:
        statuses = (FAILED, SKIPPED)
    else:
        statuses = tuple(s for s, on in ((FAILED, args.failed), (SKIPPED, args.skipped)) if on)

    async def run() -> tuple[Any, int, dict[str, Any]]:
        store = open_store(settings.store_url)
        await store.open()
        try:
            enabled = await store.enable_destination(args.destination) if args.destination else None
            count = 0
            if not enable_only:
                count = await store.requeue(args.ids, args.destination, time.time(), statuses)
            return enabled, count, await store.disabled_destinations()
        finally:
            await store.close()

    enabled, count, disabled = asyncio.run(run())
    if enabled is not None:
        print(
            f"destination {enabled.destination} enabled again (disabled since"
            f" {_stamp(enabled.since)} UTC: {enabled.reason[:80]})"
        )
    elif enable_only:
        raise ConfigError(
            f"destination {args.destination!r} is not disabled; give delivery ids,"
            " or --failed / --skipped to requeue its deliveries"
        )
    if not enable_only:
        print(f"requeued {count} deliver{'y' if count == 1 else 'ies'}")
    for name, state in sorted(disabled.items()):
        print(
            f"note: destination {name} is disabled since {_stamp(state.since)} UTC; its deliveries"
            f" wait until `relay retry --destination {name}`",
            file=sys.stderr,
        )


def simulate(settings: Settings, args: argparse.Namespace) -> None:
    import httpx

    from relay.samples import simulate as make

    try:
        body, headers = make(
            args.source,
            settings,
            args.event,
            email=args.email,
            anonymous_id=args.anonymous_id,
            click_id=args.click_id,
            metadata=dict(item.split("=", 1) for item in args.metadata if "=" in item),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    base = args.url or f"http://127.0.0.1:{settings.listen_port}"
    url = f"{base.rstrip('/')}/webhooks/{args.source}"
    with contextlib.suppress(KeyboardInterrupt):
        response = httpx.post(url, content=body, headers=headers, timeout=30)
        print(f"{response.status_code} {response.text}")
        if response.status_code >= 400:
            sys.exit(1)


COMMANDS = {
    "serve": serve,
    "worker": worker,
    "migrate": migrate,
    "check": check,
    "deliveries": deliveries,
    "retry": retry,
    "simulate": simulate,
}
