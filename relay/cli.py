"""`relay` command line: serve, worker, migrate, check, deliveries, retry, simulate,
events, replay, backfill, resend, forget."""

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

from relay import __version__, logs
from relay.errors import ConfigError, StoreError
from relay.settings import SOURCE_FIELDS, Settings, load_settings, settings_warnings
from relay.store import (
    DELIVERED,
    EVENT_STATUSES,
    FAILED,
    FOLLOW_UP,
    IGNORED,
    PENDING,
    QUARANTINED,
    SKIPPED,
    STATUSES,
    open_store,
)


class CommandFailed(Exception):
    """The command could not do what was asked; the message says why (exit status 1)."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="relay", description=__doc__)
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="web app with the delivery worker (default deploy)")
    p.add_argument("--host")
    p.add_argument("--port", type=_port)
    p.add_argument("--no-worker", action="store_true", help="do not run the delivery worker here")

    sub.add_parser("worker", help="the delivery worker alone")
    sub.add_parser("migrate", help="create or upgrade the schema")
    p = sub.add_parser("check", help="validate the configuration and print it, secrets masked")
    p.add_argument("--probe", choices=("ga4", "meta"), help="send a sample to the platform's check")

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

    p = sub.add_parser(
        "forget",
        help="erase one buyer's personal data now, everywhere relay stores it",
        description="Erase one buyer's personal data now: their conversions' email, name, "
        "phone, address, metadata and attribution ids, the raw bodies of their events and of "
        "every other stored event naming them, and the customer key linking them. Their "
        "pending deliveries fail with 'erased by relay forget'. Prints how many records changed.",
    )
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--email", help="the buyer's email address")
    who.add_argument("--customer", metavar="ID", help="the processor's customer id (e.g. cus_…)")

    from relay.samples import DEFAULT_EMAIL, EVENTS, events_help

    p = sub.add_parser(
        "simulate",
        help="post a signed sample webhook to a running relay",
        description="Sign a realistic test-mode sample webhook with the configured secret "
        "and post it to a running relay.",
        epilog=events_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", choices=list(EVENTS))
    p.add_argument("--event", help="the event to sample (listed below; default: the first)")
    p.add_argument("--url", help="the relay's base URL (default http://127.0.0.1:$PORT)")
    p.add_argument("--email", help=f"the buyer's email (default {DEFAULT_EMAIL}; not for Paddle)")
    p.add_argument("--anonymous-id")
    p.add_argument("--click-id")
    p.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more passthrough metadata, e.g. pagent_session_id=…; repeatable",
    )

    p = sub.add_parser("events", help="list stored webhooks (accepted, ignored, quarantined)")
    p.add_argument("--status", choices=EVENT_STATUSES)
    p.add_argument("--source", choices=SOURCE_FIELDS)
    p.add_argument("--since", help="received since: ISO 8601 date or time, or 48h / 7d")
    p.add_argument("--limit", type=_positive, default=50, help="at most N events (default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--id", type=int, help="one event, with its raw body")

    p = sub.add_parser(
        "replay",
        help="read stored webhooks again with the current code and configuration",
        description="Re-read stored raw bodies (no re-verification) and record what is new."
        " Without ids: ignored and quarantined events of the last 30 days."
        " Safe to run twice: the ledger dedupes on order key.",
    )
    p.add_argument("ids", nargs="*", type=int, help="these stored events (`relay events`)")
    p.add_argument("--status", choices=(IGNORED, QUARANTINED))
    p.add_argument("--source", choices=SOURCE_FIELDS)
    p.add_argument("--since", help="received since (default 30d when no ids are given)")
    p.add_argument("--dry-run", action="store_true", help="change nothing, say what would happen")

    p = sub.add_parser(
        "backfill",
        help="record what a processor's API has and the ledger lacks; or plan deliveries "
        "to a destination added after the fact",
        description=BACKFILL_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source", nargs="?", help="stripe, paddle, lemonsqueezy or chargebee: read its API"
    )
    p.add_argument("--destination", help="plan deliveries to this destination instead")
    p.add_argument("--since", metavar="T", help="from T: 2026-11-30, 2026-11-30T08:00:00Z, 48h, 7d")
    p.add_argument("--until", metavar="T", help="up to T (default: now)")
    p.add_argument("--dry-run", action="store_true", help="record nothing; say what would be")

    p = sub.add_parser(
        "resend", help="send delivered deliveries again, with the same idempotency key"
    )
    p.add_argument("ids", nargs="+", type=int)
    p.add_argument(
        "--force",
        action="store_true",
        help="also for destinations that cannot deduplicate (pagent counts it twice)",
    )

    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    for warning in settings_warnings():
        print(f"relay: warning: {warning}", file=sys.stderr)
    logs.setup(settings.log_level)
    # The event loop hands each commit's fsync to a thread; that thread must get the GIL
    # back quickly when the fsync ends, or every batch waits the default 5 ms switch
    # interval behind request parsing (measured: ~+15 % ingest with 0.5 ms).
    sys.setswitchinterval(0.0005)
    try:
        COMMANDS[args.command](settings, args)
    except (ConfigError, StoreError, CommandFailed) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        sys.exit(1)


def _port(text: str) -> int:
    """A listen port for --port: 1-65535 (uvicorn would take 99999 as 99999 - 65536), or 0
    for any free port (the one bound is in the startup log line)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text[:20]!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535 (or 0: any free one), got {port}")
    return port


def _positive(text: str) -> int:
    """A count for --limit: 1 or more (0 listed nothing, a negative one everything)."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text[:20]!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"give 1 or more, got {count}")
    return count


def serve(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    from relay import server
    from relay.app import create_app

    if settings.store_url.startswith("sqlite:"):
        # A bad path would otherwise surface as a traceback from the server's startup.
        from relay.store.sqlite import SQLiteStore, path_problem

        path = SQLiteStore(settings.store_url).path
        why = path_problem(path)
        if why:
            raise StoreError(f"cannot open SQLite database {path!r}: {why}")
    app = create_app(settings, run_worker=not args.no_worker)
    uvicorn.run(
        app,
        host=args.host or settings.host,
        port=settings.listen_port if args.port is None else args.port,  # 0: any free port
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.worker.shutdown_grace_seconds) + 5,
        **server.options(settings),
    )


def worker(settings: Settings, args: argparse.Namespace) -> None:
    from relay.destinations import build_destinations
    from relay.enrich import build_enricher
    from relay.metrics import Metrics
    from relay.reconcile import Reconciler
    from relay.tally import Tally
    from relay.thin import ThinEvents
    from relay.worker import Worker

    async def run() -> None:
        store = open_store(settings.store_url)
        await store.open()
        enricher = build_enricher(settings)
        destinations = build_destinations(settings)
        metrics = Metrics()
        w = Worker(
            store,
            destinations,
            settings.worker,
            metrics=metrics,
            enrich=enricher,
            retention_days=settings.retention_days,
        )
        reconciler = Reconciler(settings, store, destinations, wake=w.wake)
        thin = ThinEvents(settings, store, destinations, wake=w.wake)
        tally = Tally(store, metrics)  # delivery results for the console's 24 h figures
        tally.start()

        async def stop() -> None:
            await reconciler.stop()
            await thin.stop()
            await w.stop()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(stop()))
        try:
            await asyncio.gather(w.run(), reconciler.run(), thin.run())
        finally:
            if enricher is not None:
                await enricher.aclose()
            await tally.stop()
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
    if getattr(args, "probe", None):  # relay/probe.py: one sample to GA4's debug endpoint or Meta
        from relay.probe import run

        sys.exit(run(settings, args.probe))
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
    if args.id is not None and not rows:
        raise CommandFailed(f"no delivery {args.id} (`relay deliveries` lists them)")
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
        print("no deliveries")
        return
    print(
        f"{'ID':>6}  {'DESTINATION':<10} {'STATUS':<9} {'TRIES':>5}  {'NEXT/UPDATED':<20} "
        f"{'KIND':<22} ORDER  ERROR"
    )
    for r in rows:
        when = r.next_attempt_at if r.status == "pending" else r.updated_at
        err = (_confirmation(r) or r.last_error or "").replace("\n", " ")[:120]
        print(
            f"{r.id:>6}  {r.destination:<10} {r.status:<9} {r.attempts:>5}  {_stamp(when):<20} "
            f"{r.kind:<22} {r.order_key}  {err}"
        )
    n = looks = 0
    for a in attempts:
        if a.outcome == "resend":
            print(f"  {_stamp(a.started_at)}  {a.detail}")
            continue
        code = a.status_code if a.status_code is not None else "-"
        if a.outcome == FOLLOW_UP:  # a look at the queued submission, not a send
            looks += 1
            label = f"follow-up {looks}"
        else:
            n += 1
            label = f"attempt {n}"
        print(
            f"  {label}: {_stamp(a.started_at)}  {a.outcome:<9} HTTP {code}  "
            f"{a.duration_ms:.0f} ms  {a.detail[:200]}"
        )


def _confirmation(row: Any) -> str | None:
    """A followed submission's state for the ERROR column: why a delivered delivery is not
    yet (or never) confirmed; a rejection is the delivery's last error already."""
    if row.status != DELIVERED or not row.confirmation:
        return None
    return f"{row.destination} {row.confirmation}: {row.confirmation_detail or ''}".rstrip(": ")


def _stamp(when: float | None) -> str:
    return datetime.fromtimestamp(when or 0, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _not_retryable(delivery_id: int, rows: list[Any], destination: str | None) -> str | None:
    """Why `relay retry <id>` leaves this delivery alone, or None when it can requeue it."""
    if not rows:
        return f"no delivery {delivery_id} (`relay deliveries` lists them)"
    row = rows[0]
    if destination and row.destination != destination:
        return f"delivery {delivery_id} is for {row.destination}, not {destination}"
    if row.status == DELIVERED:
        return (
            f"delivery {delivery_id} is delivered already; to send it again on purpose, "
            f"use `relay resend {delivery_id}`"
        )
    if row.status == PENDING:
        return (
            f"delivery {delivery_id} is pending already: the worker sends it "
            f"(next attempt {_stamp(row.next_attempt_at)} UTC)"
        )
    if row.status not in (FAILED, SKIPPED):
        return f"delivery {delivery_id} is {row.status}; only failed or skipped ones are retried"
    return None


def retry(settings: Settings, args: argparse.Namespace) -> None:
    # `--destination D` alone enables D again after its endpoint disabled it (HTTP 410).
    enable_only = bool(args.destination) and not (args.ids or args.failed or args.skipped)
    if not args.ids and not args.failed and not args.skipped and not args.destination:
        raise ConfigError("give delivery ids, or --failed / --skipped [--destination D]")
    statuses: tuple[str, ...]
    if args.ids:
        statuses = (FAILED, SKIPPED)
    else:
        statuses = tuple(s for s, on in ((FAILED, args.failed), (SKIPPED, args.skipped)) if on)

    async def run() -> tuple[Any, int, list[str], list[Any], dict[str, Any]]:
        store = open_store(settings.store_url)
        await store.open()
        try:
            enabled = await store.enable_destination(args.destination) if args.destination else None
            if enable_only:
                return enabled, 0, [], [], await store.disabled_destinations()
            refused: list[str] = []
            ids: list[int] = []
            for delivery_id in dict.fromkeys(args.ids):
                rows = await store.deliveries(delivery_id=delivery_id)
                why = _not_retryable(delivery_id, rows, args.destination)
                if why:
                    refused.append(why)
                else:
                    ids.append(delivery_id)
            if args.ids and not ids:
                return (
                    enabled,
                    0,
                    refused,
                    [],
                    await store.disabled_destinations(),
                )  # requeue(()): all
            count = await store.requeue(ids, args.destination, time.time(), statuses)
            erased = await _erased_rows(store, ids, args.destination, statuses)
            return enabled, count, refused, erased, await store.disabled_destinations()
        finally:
            await store.close()

    enabled, count, refused, erased, disabled = asyncio.run(run())
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
    if not enable_only and (count or not refused):
        print(f"requeued {count} deliver{'y' if count == 1 else 'ies'}")
    for name, state in sorted(disabled.items()):
        print(
            f"note: destination {name} is disabled since {_stamp(state.since)} UTC; its deliveries"
            f" wait until `relay retry --destination {name}`",
            file=sys.stderr,
        )
    for why in refused:
        print(f"relay: {why}", file=sys.stderr)
    # never sent without its buyer: refused, and said so
    if args.ids:
        for row in erased:
            why = "relay forget" if row.erased == "forget" else "retention (RELAY_RETENTION_DAYS)"
            print(
                f"delivery {row.id} ({row.destination} {row.order_key}) not requeued: its"
                f" buyer's personal data was removed by {why}, so it cannot be sent again",
                file=sys.stderr,
            )
    elif erased:
        print(
            f"{len(erased)}{'+' if len(erased) >= 1000 else ''} deliver"
            f"{'y' if len(erased) == 1 else 'ies'} left as they are: their buyer's personal"
            " data was removed by retention or relay forget, so they cannot be sent again",
            file=sys.stderr,
        )
    if refused or (erased and (args.ids or not count)):
        sys.exit(1)


async def _erased_rows(
    store: Any, ids: list[int], destination: str | None, statuses: tuple[str, ...]
) -> list[Any]:
    """The deliveries `retry` was asked for whose conversion's personal data is erased."""
    if ids:
        rows = [row for i in ids for row in await store.deliveries(delivery_id=i)]
    else:
        rows = [
            row
            for status in statuses
            for row in await store.deliveries(status, destination, limit=1000)
        ]
    return [row for row in rows if row.erased and row.status in statuses]


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
    base = (args.url or f"http://127.0.0.1:{settings.listen_port}").rstrip("/")
    url = f"{base}/webhooks/{args.source}"
    with contextlib.suppress(KeyboardInterrupt):
        try:
            response = httpx.post(url, content=body, headers=headers, timeout=30)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise CommandFailed(f"nothing answers at {base} — is relay serve running?") from None
        except httpx.TimeoutException:
            raise CommandFailed(f"{url} did not answer within 30 s") from None
        except httpx.HTTPError as exc:
            raise CommandFailed(f"cannot post to {url}: {exc}") from None
        print(f"{response.status_code} {response.text}")
        if response.status_code >= 400:
            sys.exit(1)


def _since(text: str | None, now: float, flag: str = "--since") -> float | None:
    from relay.when import parse_time

    if text is None:
        return None
    try:
        return parse_time(text, now)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def _body_text(body: bytes) -> str:
    """The raw body, pretty-printed when it is JSON."""
    try:
        return orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        return body.decode("utf-8", errors="replace")


def events(settings: Settings, args: argparse.Namespace) -> None:
    now = time.time()
    since = _since(args.since, now)

    async def run() -> list[Any]:
        store = open_store(settings.store_url)
        await store.open()
        try:
            if args.id is not None:
                return await store.events(ids=[args.id], with_body=True)
            statuses = [args.status] if args.status else []
            return await store.events(statuses, args.source, since, args.limit)
        finally:
            await store.close()

    rows = asyncio.run(run())
    if not rows and args.id is not None:
        print(f"relay: no stored event with id {args.id} (see `relay events`)", file=sys.stderr)
        sys.exit(1)
    if args.json:
        for row in rows:
            item = {k: getattr(row, k) for k in row.__dataclass_fields__ if k != "body"}
            if args.id is not None and row.body is not None:
                item["body"] = row.body.decode("utf-8", errors="replace")
            print(orjson.dumps(item).decode())
        return
    if not rows:
        print("no events")
        return
    if args.id is not None:
        row = rows[0]
        for label, value in (
            ("id", row.id),
            ("source", row.source),
            ("event id", row.event_id),
            ("type", row.event_type or "-"),
            ("status", row.status),
            ("reason", row.reason or "-"),
            ("received", _stamp(row.received_at)),
            ("replayed", _stamp(row.replayed_at) if row.replayed_at else "never"),
        ):
            print(f"{label + ':':<10} {value}")
        print("body:")
        print(_body_text(row.body or b""))
        return
    print(
        f"{'ID':>7}  {'SOURCE':<12} {'STATUS':<11} {'RECEIVED':<19}  {'TYPE':<34} EVENT ID  REASON"
    )
    for r in rows:
        reason = (r.reason or "").replace("\n", " ")[:120]
        print(
            f"{r.id:>7}  {r.source:<12} {r.status:<11} {_stamp(r.received_at):<19}  "
            f"{(r.event_type or '-')[:34]:<34} {r.event_id}  {reason}"
        )


def _intake(settings: Settings, store: Any) -> Any:
    from relay.destinations import build_destinations
    from relay.intake import Intake
    from relay.sources import build_sources

    return Intake(settings, store, build_sources(settings), build_destinations(settings))


def replay(settings: Settings, args: argparse.Namespace) -> None:
    from relay import replay as replaying

    now = time.time()
    chosen = bool(args.ids or args.status or args.source or args.since)
    since = _since(args.since, now)
    if since is None and not args.ids:
        since = _since(replaying.DEFAULT_SINCE, now)
    statuses = [args.status] if args.status else ([] if args.ids else replaying.DEFAULT_STATUSES)

    async def run() -> replaying.Summary:
        store = open_store(settings.store_url)
        await store.open()
        try:
            intake = _intake(settings, store)
            selected = await replaying.select(intake, args.ids, statuses, args.source, since)
            if not chosen:
                print(
                    f"replaying ignored and quarantined events received since"
                    f" {_stamp(since)} UTC (give ids, --status, --source or --since to choose)"
                )
            return await replaying.replay(
                intake, selected, now, args.dry_run, lambda line: print(line, flush=True)
            )
        finally:
            await store.close()

    print(replaying.summarize(asyncio.run(run()), args.dry_run))


def backfill(settings: Settings, args: argparse.Namespace) -> None:
    """`relay backfill <source>` or `relay backfill --destination D`."""
    if args.source and args.destination:
        raise ConfigError("give either a source or --destination D, not both")
    if args.destination:
        backfill_destination(settings, args)
    else:
        backfill_source(settings, args)


def backfill_destination(settings: Settings, args: argparse.Namespace) -> None:
    """`relay backfill --destination D`: deliveries for conversions D has none for."""
    from relay import redeliver
    from relay.destinations import build_destinations

    destinations = build_destinations(settings)
    dest = destinations.get(args.destination)
    if dest is None:
        configured = ", ".join(destinations) or "none"
        raise ConfigError(
            f"destination {args.destination!r} is not configured (configured: {configured})"
        )
    now = time.time()
    since = _since(args.since, now)
    if since is None:
        since = redeliver.default_since(args.destination, dest, now)
    until = _since(args.until, now, "--until")
    if since >= (now if until is None else min(until, now)):
        raise ConfigError("--since must be before --until (and before now)")

    async def run() -> redeliver.Plan:
        store = open_store(settings.store_url)
        await store.open()
        try:
            return await redeliver.backfill_destination(
                store, args.destination, dest, since, until, now, args.dry_run
            )
        finally:
            await store.close()

    for line in redeliver.report(asyncio.run(run()), args.dry_run):
        print(line)


def resend(settings: Settings, args: argparse.Namespace) -> None:
    from relay import redeliver
    from relay.destinations import build_destinations

    destinations = build_destinations(settings)

    async def run() -> tuple[list[Any], list[str], list[int]]:
        store = open_store(settings.store_url)
        await store.open()
        try:
            ok, refused = await redeliver.check_resend(store, args.ids, destinations, args.force)
            if refused:  # bad input changes nothing
                return ok, refused, []
            return ok, refused, await redeliver.resend(store, ok)
        finally:
            await store.close()

    ok, refused, resent = asyncio.run(run())
    if refused:
        for line in refused:
            print(f"relay: {line}", file=sys.stderr)
        print("relay: nothing was resent", file=sys.stderr)
        sys.exit(1)
    for row in ok:
        if row.id in resent:
            print(f"resending delivery {row.id} to {row.destination} ({row.kind}:{row.order_key})")
    lost = [row.id for row in ok if row.id not in resent]
    if lost:
        print(
            f"relay: {', '.join(map(str, lost))} changed meanwhile and"
            f" {'was' if len(lost) == 1 else 'were'} not resent (see `relay deliveries --id N`)",
            file=sys.stderr,
        )
        sys.exit(1)


BACKFILL_HELP = """\
relay backfill <source> --since T [--until T] [--dry-run]
relay backfill --destination D [--since T] [--until T] [--dry-run]

Reads the processor's API for the period and records every conversion the ledger does
not have yet, exactly as if its webhook had arrived: the same event ids and order keys,
so a webhook that arrives later is a duplicate, and so is an event the webhook already
brought. Run it after relay was down, misconfigured or unreachable; the worker's reconcile
(RELAY_<SOURCE>__RECONCILE_INTERVAL_SECONDS) does the same by itself.

  stripe        Events API (RELAY_STRIPE__API_KEY); Stripe keeps 30 days of events
  paddle        Events API (RELAY_PADDLE__API_KEY); Paddle keeps 90 days
  lemonsqueezy  orders, subscriptions, subscription invoices (RELAY_LEMONSQUEEZY__API_KEY);
                the API has no custom_data, so these conversions carry no attribution ids
  chargebee     Events API (RELAY_CHARGEBEE__SITE, RELAY_CHARGEBEE__API_KEY)

It prints one line per event found and a summary (new conversions, already recorded,
ignored). Each event is recorded on its own: an interrupted run is resumed by running the
same command again. An API error stops it with a message and exit status 1.

With --destination D instead of a source, it plans a delivery to D for every conversion
recorded since T that D has none for (a destination added after the fact), within D's own
rules (the kinds it takes, its age window: Simmer's 7 days, the default --since).

T is an ISO 8601 date or time (UTC when it has no offset) or a span back from now:
90m, 48h, 7d, 2w.
"""


def backfill_source(settings: Settings, args: argparse.Namespace) -> None:
    """`relay backfill <source>`: the processor's API for a period, as if its webhooks came."""
    from relay.backfill import Report, run
    from relay.destinations import build_destinations
    from relay.errors import ProcessorAPIError
    from relay.intake import Intake
    from relay.processors import PROCESSORS, open_processor
    from relay.sources import source_for

    if not args.source:
        raise ConfigError("give a source (stripe, paddle, lemonsqueezy, chargebee) and --since")
    if args.source not in PROCESSORS:
        raise ConfigError(
            f"unknown source {args.source[:40]!r}: one of stripe, paddle, lemonsqueezy, chargebee"
        )
    if not args.since:
        raise ConfigError("--since is required: e.g. --since 48h or --since 2026-11-30")
    now = time.time()
    since = _since(args.since, now)
    until = _since(args.until, now, "--until")
    assert since is not None
    until = now if until is None else until
    until = min(until, now)
    if since >= until:
        raise ConfigError("--since must be before --until (and before now)")
    processor = open_processor(args.source, settings)
    notes = []
    if processor.history_seconds is not None and since < now - processor.history_seconds:
        oldest = now - processor.history_seconds
        if until <= oldest:
            raise ConfigError(
                f"{processor.processor}'s API keeps {processor.history_seconds / 86400:.0f} days"
                f" of events: nothing before {_stamp(oldest)} UTC can be read (--until is older)"
            )
        notes.append(
            f"{processor.processor}'s API keeps {processor.history_seconds / 86400:.0f} days "
            f"of events: reading from {_stamp(oldest)}, not {_stamp(since)}"
        )
        since = oldest
    notes.extend(processor.notes)
    report = Report(args.source, since, until, dry_run=args.dry_run, notes=list(notes))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)

    async def go() -> None:
        store = open_store(settings.store_url)
        await store.open()
        try:
            intake = Intake(
                settings,
                store,
                {args.source: source_for(settings, args.source)},
                build_destinations(settings),
            )
            await run(
                intake,
                processor,
                report.since,
                report.until,
                dry_run=args.dry_run,
                on_line=lambda line: print(line.text(), flush=False),
                report=report,
            )
        finally:
            await processor.aclose()
            await store.close()

    try:
        asyncio.run(go())
    except ProcessorAPIError as exc:
        print(report.summary(), flush=True)
        stop = "" if str(exc).endswith((".", "?", "!")) else "."
        print(
            f"relay: backfill {args.source} stopped: {exc}{stop} What was found before it is "
            "recorded; run the same command again to resume.",
            file=sys.stderr,
        )
        sys.exit(1)
    except KeyboardInterrupt:
        print(report.summary(), flush=True)
        print("relay: backfill interrupted; run it again to resume", file=sys.stderr)
        sys.exit(130)
    print(report.summary())


def forget(settings: Settings, args: argparse.Namespace) -> None:
    email = (args.email or "").strip()
    customer = (args.customer or "").strip()
    if args.email is not None and ("@" not in email or len(email) > 320):
        raise ConfigError("--email must be an email address")
    if args.customer is not None and not customer:
        raise ConfigError("--customer must be a customer id")

    async def run() -> Any:
        store = open_store(settings.store_url)
        await store.open()
        try:
            return await store.forget(
                email=email or None, customer_id=customer or None, now=time.time()
            )
        finally:
            await store.close()

    done = asyncio.run(run())
    if not done.records:
        print("nothing stored for that buyer (or already forgotten): 0 records changed")
        return
    print(
        f"forgotten: {done.records} records changed — personal data erased from "
        f"{_n(done.conversions, 'conversion')} and {_n(done.events, 'event body', 'event bodies')}"
        + (
            f"; {_n(done.memories, 'remembered attribution', 'remembered attributions')} removed"
            if done.memories
            else ""
        )
        + (
            f"; {_n(done.deliveries, 'pending delivery', 'pending deliveries')} failed"
            " (erased by relay forget)"
            if done.deliveries
            else ""
        )
    )
    if not done.compacted:
        print(
            "warning: the SQLite WAL could not be truncated yet (another process was reading);"
            " the worker's next hourly run does it",
            file=sys.stderr,
        )


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


COMMANDS = {
    "serve": serve,
    "worker": worker,
    "migrate": migrate,
    "check": check,
    "deliveries": deliveries,
    "retry": retry,
    "simulate": simulate,
    "events": events,
    "replay": replay,
    "backfill": backfill,
    "resend": resend,
    "forget": forget,
}
