"""SQLite backend: one file, WAL, synchronous=FULL, group commit.

Calls are queued; one runner task takes all the calls waiting at that moment,
runs each in its own SAVEPOINT inside one transaction and commits once, then
answers each caller. Webhooks that arrive together therefore share one fsync,
and each is still answered only after the commit that made it durable
(PERFORMANCE.md: a commit per webhook caps ingest near the commit rate).

The statements themselves run on the event loop's thread: they take
microseconds, and a writer thread of their own would spend most of its time
waiting for the GIL after each sqlite3 call (measured: a convoy that halved
ingest). Only what can block — taking the write lock (`BEGIN IMMEDIATE` waits
up to `busy_timeout` when another process holds it) and the commit's fsync —
runs in a worker thread, while the loop goes on parsing the next webhooks.

`synchronous=FULL` is the documented choice: a 200 means the event survives
power loss, not only a process crash.

Several processes may share the file (`relay serve --no-worker` plus `relay
worker`): writes take the lock with BEGIN IMMEDIATE and wait `busy_timeout`.

Personal data: a new file (and so its -wal and -shm, which SQLite creates with the
file's mode) is readable by its owner only; `secure_delete` is on, so what retention and
`relay forget` erase is overwritten in the file, and `compact`/`forget` checkpoint and
truncate the WAL so no older copy of a page stays there.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import orjson

from relay import refunds
from relay.conversion import KINDS, REFUND, REVENUE_KINDS, Conversion
from relay.errors import StoreError
from relay.store import (
    DELIVERED,
    ERASED_BY_FORGET,
    FAILED,
    FOLLOWING,
    FORGET,
    PENDING,
    REJECTED_THERE,
    RESEND,
    RESEND_DETAIL,
    RETENTION,
    Attempt,
    Claim,
    DeliveryRow,
    DestinationError,
    DisabledDestination,
    EventRecord,
    FollowUp,
    Forgotten,
    ReconcileState,
    Recorded,
    RefundSibling,
    RefundTarget,
    Retained,
    Settlement,
    Store,
    StoredConversion,
    StoredEvent,
    SubmissionClaim,
    SubmissionResult,
    customer_key,
    email_hash,
    erase_personal,
    memory_kind,
    mentions,
    reason_label,
    remembered,
    stored_email_hash,
    upper_bound,
)

log = logging.getLogger("relay.store")
# 3: event status; 4: reconcile_state; 5: counts and erasure; 6: destination_states;
# 7: submissions; 8: the console (conversions.email_hash, tallies, destination_errors)
SCHEMA_VERSION = 8
ERASURE_VERSION = 5  # the step adding maintained delivery counts and erasure (see _upgrade_erasure)
SCHEMA_SUBMISSIONS = 7  # the version `_upgrade_submissions` brings (renumber here)
WAL_TRUNCATE_WAIT = 0.5  # seconds one `compact` try waits for other processes' readers…
WAL_TRUNCATE_TRIES = 4  # …and how many tries before it is left to the next run
MAX_BATCH = 512
WATCH_SECONDS = 0.1  # how often `watch` looks for other processes' commits
T = TypeVar("T")


def _upgrade_event_status(conn: sqlite3.Connection) -> None:
    """Schema 3: every verified webhook is kept with a status (accepted | ignored |
    quarantined), a reason and when it was last replayed. Rows from before were all
    accepted. Idempotent: columns are added only when missing."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(events)")}
    for column, kind in (
        ("status", "TEXT NOT NULL DEFAULT 'accepted'"),
        ("reason", "TEXT"),
        ("replayed_at", "REAL"),
    ):
        if column not in columns:
            conn.execute(f"ALTER TABLE events ADD COLUMN {column} {kind}")
    conn.execute("CREATE INDEX IF NOT EXISTS events_status ON events (status, received_at)")
    conn.execute("CREATE INDEX IF NOT EXISTS events_received ON events (received_at)")


def _upgrade_console(conn: sqlite3.Connection) -> None:
    """Schema 8 (the console): each conversion carries the SHA-256 of its buyer's
    normalized email (`email_hash`, indexed), so a search by email is a lookup. Rows
    recorded before get theirs computed here, once, in the transaction that adds the
    column. (The tallies tables come from sqlite.sql.) Idempotent."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(conversions)")}
    if "email_hash" not in columns:
        conn.execute("ALTER TABLE conversions ADD COLUMN email_hash TEXT")
        after = 0
        while True:
            rows = conn.execute(
                "SELECT id, data FROM conversions WHERE id > ? ORDER BY id LIMIT 1000", (after,)
            ).fetchall()
            if not rows:
                break
            after = rows[-1][0]
            hashes = [(stored_email_hash(data), row_id) for row_id, data in rows]
            conn.executemany(
                "UPDATE conversions SET email_hash = ? WHERE id = ?",
                [pair for pair in hashes if pair[0] is not None],
            )
    conn.execute(
        "CREATE INDEX IF NOT EXISTS conversions_email ON conversions (email_hash)"
        " WHERE email_hash IS NOT NULL"
    )


def _upgrade_submissions(conn: sqlite3.Connection, from_version: int | None) -> None:
    """SCHEMA_SUBMISSIONS: impact.com outcomes and reversals, attribution memory.

    - `conversions.link_ref`: the value a refund shares with the purchase it refunds
      (relay/refunds.py `link_ref`), indexed; filled in for the rows already there.
    - `submissions`: one followed submission per delivery (a queued answer, impact's
      QueuedUri) with its state and when to look next; `submission_counts`: outcome
      counters kept in the same transactions (O(1) for /metrics).
    - `attribution_memory`: a customer's remembered attribution ids, per source and
      customer key (RELAY_ATTRIBUTION__MEMORY).
    Idempotent: every object is created only when missing."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(conversions)")}
    if "link_ref" not in columns:
        conn.execute("ALTER TABLE conversions ADD COLUMN link_ref TEXT")
    conn.execute(
        "CREATE INDEX IF NOT EXISTS conversions_link ON conversions (source, link_ref)"
        " WHERE link_ref IS NOT NULL"
    )
    for statement in _SUBMISSIONS_DDL:
        conn.execute(statement)
    if from_version is not None and from_version < SCHEMA_SUBMISSIONS:
        rows = conn.execute(
            "SELECT id, data FROM conversions WHERE link_ref IS NULL"
            " AND kind IN ('purchase', 'subscription_renewed', 'refund')"
        ).fetchall()
        links = [(refunds.link_ref(Conversion.from_json(data)), row_id) for row_id, data in rows]
        conn.executemany(
            "UPDATE conversions SET link_ref = ? WHERE id = ?", [x for x in links if x[0]]
        )


_SUBMISSIONS_DDL = (
    """CREATE TABLE IF NOT EXISTS submissions (
        id            INTEGER PRIMARY KEY,
        delivery_id   INTEGER NOT NULL UNIQUE REFERENCES deliveries (id),
        destination   TEXT    NOT NULL,
        uri           TEXT    NOT NULL,
        kind          TEXT    NOT NULL,
        state         TEXT    NOT NULL,
        checks        INTEGER NOT NULL DEFAULT 0,
        started_at    REAL    NOT NULL,
        next_check_at REAL,
        lease_until   REAL,
        lease_token   TEXT,
        error_type    TEXT,
        error_reason  TEXT,
        detail        TEXT,
        updated_at    REAL    NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS submissions_due ON submissions (destination, next_check_at)"
    " WHERE state = 'following'",
    """CREATE TABLE IF NOT EXISTS submission_counts (
        destination TEXT    NOT NULL,
        outcome     TEXT    NOT NULL,
        error_type  TEXT    NOT NULL,
        reason      TEXT    NOT NULL,
        n           INTEGER NOT NULL,
        PRIMARY KEY (destination, outcome, error_type, reason)
    )""",
    """CREATE TABLE IF NOT EXISTS attribution_memory (
        source        TEXT NOT NULL,
        customer_key  TEXT NOT NULL,
        attribution   BLOB NOT NULL,
        conversion_id INTEGER,
        created_at    REAL NOT NULL,
        updated_at    REAL NOT NULL,
        seen_at       REAL NOT NULL,
        PRIMARY KEY (source, customer_key)
    )""",
    "CREATE INDEX IF NOT EXISTS attribution_memory_seen ON attribution_memory (seen_at)",
)


class SQLiteStore(Store):
    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        raw = url.split("?", 1)[0][len("sqlite://") :]
        # sqlite:///relay.db → relay.db ; sqlite:////abs/path.db → /abs/path.db
        self.path = raw[1:] if raw.startswith("/") else raw
        if not self.path:
            raise ValueError("sqlite URL has no file path (use sqlite:///relay.db)")
        query = parse_qs(parts.query)
        self.busy_timeout_ms = int(query.get("busy_timeout", ["5000"])[0])
        self._conn: sqlite3.Connection | None = None
        self._pending: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        # jobs that must run with no transaction open (a WAL checkpoint), between batches
        self._outside: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._kick: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._wakes: list[Callable[[], None]] = []  # `watch` callbacks
        self._executor: ThreadPoolExecutor | None = None  # lock waits and commits
        self._closed = False

    # ------------------------------------------------------------ plumbing

    async def open(self) -> None:
        if self._runner is not None:
            return
        try:
            self._conn = await asyncio.to_thread(self._connect)
        except Exception as exc:
            why = path_problem(self.path) or exc
            raise StoreError(f"cannot open SQLite database {self.path!r}: {why}") from None
        self._closed = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="relay-sqlite")
        self._kick = asyncio.Event()
        self._runner = asyncio.create_task(self._run(self._conn, self._kick), name="relay-sqlite")

    async def close(self) -> None:
        if self._runner is None or self._closed:
            return
        self._closed = True
        assert self._kick is not None
        self._kick.set()
        runner, conn, executor = self._runner, self._conn, self._executor
        self._runner, self._conn = None, None

        def finish(_: Any) -> None:  # once the runner has answered its last batch
            if conn is not None:
                conn.close()
            if executor is not None:
                executor.shutdown(wait=False)

        runner.add_done_callback(finish)
        with contextlib.suppress(Exception):
            # Shielded: a caller cancelled while closing must not abandon a batch whose
            # lock wait or commit is running in a thread.
            await asyncio.shield(runner)

    def _connect(self) -> sqlite3.Connection:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        _create_private(self.path)
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,  # used by the loop thread and, for lock and fsync, a pool thread
            timeout=self.busy_timeout_ms / 1000,
        )
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            # Erased personal data is overwritten, not only unlinked (retention, forget).
            conn.execute("PRAGMA secure_delete = ON")
            self._migrate(conn)
            # From now on a busy lock fails at once and `_begin` waits for it off the loop.
            conn.execute("PRAGMA busy_timeout = 0")
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        schema = resources.files("relay.store").joinpath("sqlite.sql").read_text()
        # executescript commits any open transaction first, so the script brings its own.
        conn.executescript("BEGIN IMMEDIATE;\n" + schema + "\nCOMMIT;")
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            if row[0] is not None and row[0] > SCHEMA_VERSION:
                raise StoreError(
                    f"database schema {row[0]} is newer than this relay ({SCHEMA_VERSION})"
                )
            columns = {r[1] for r in conn.execute("PRAGMA table_info(deliveries)")}
            for column, kind in (
                ("in_doubt", "INTEGER NOT NULL DEFAULT 0"),
                ("sent_attempt", "INTEGER"),
            ):
                if column not in columns:  # version 1 → 2
                    conn.execute(f"ALTER TABLE deliveries ADD COLUMN {column} {kind}")
            _upgrade_event_status(conn)
            if row[0] is None or row[0] < ERASURE_VERSION:
                _upgrade_erasure(conn)
            _upgrade_submissions(conn, row[0])
            _upgrade_console(conn)
            if row[0] != SCHEMA_VERSION:
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def _run(self, conn: sqlite3.Connection, kick: asyncio.Event) -> None:
        seen_version = None
        while True:
            if self._wakes:  # `watch`: did another process commit since we last looked?
                with contextlib.suppress(sqlite3.Error):
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
                    if seen_version is not None and version != seen_version:
                        for wake in self._wakes:
                            wake()
                    seen_version = version
            while self._outside:
                fn, args, fut = self._outside.pop(0)
                if fut.done():
                    continue
                try:
                    value = await self._in_thread(fn, conn, *args)
                except Exception as exc:
                    if not fut.done():
                        fut.set_exception(StoreError(f"database error: {exc}"))
                else:
                    if not fut.done():
                        fut.set_result(value)
            if not self._pending:
                if self._closed:
                    return
                kick.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(kick.wait(), WATCH_SECONDS if self._wakes else None)
                continue
            batch = self._pending[:MAX_BATCH]
            del self._pending[:MAX_BATCH]
            try:
                await self._run_batch(conn, batch)
            except Exception:  # never let the runner die: callers would hang
                log.exception("sqlite runner: unexpected error")
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(StoreError("database error"))

    async def _run_batch(
        self,
        conn: sqlite3.Connection,
        batch: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]],
    ) -> None:
        """Run a batch in one transaction and commit once.

        Every caller is answered whatever happens: if SQLite abandons the whole
        transaction (disk full, I/O error), every call of the batch fails, including
        those that had succeeded, since nothing of them is durable."""
        batch = [item for item in batch if not item[2].done()]  # callers that gave up
        committed = []

        def commit() -> None:
            conn.execute("COMMIT")
            committed.append(True)

        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            await self._begin(conn)
            try:
                # Fast path: no savepoints. The calls are written not to fail halfway;
                # if one does anyway, the batch is rolled back and redone call by call.
                results = [(fut, fn(conn, *args), None) for fn, args, fut in batch]
            except Exception:
                conn.execute("ROLLBACK")
                await self._begin(conn)
                results = self._run_guarded(conn, batch)
            await self._in_thread(commit)  # the fsync: off the event loop
        except BaseException as exc:  # cancellation included: every caller gets an answer
            if committed:  # cancelled while the commit ran to its end: the results stand
                self._answer(results)
                raise
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            if isinstance(exc, Exception):
                log.error("sqlite transaction failed: %s", exc)
            err = StoreError(
                f"database is unavailable: {exc}"
                if isinstance(exc, Exception)
                else "store is closing"
            )
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(err)
            if not isinstance(exc, Exception):
                raise
            return
        self._answer(results)

    @staticmethod
    def _answer(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
        for fut, value, error in results:
            if fut.done():
                continue
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(value)

    @staticmethod
    def _run_guarded(
        conn: sqlite3.Connection,
        batch: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]],
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        """Each call in its own savepoint: one failing call does not sink the others."""
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        for fn, args, fut in batch:
            conn.execute("SAVEPOINT op")
            try:
                value = fn(conn, *args)
                conn.execute("RELEASE op")
                results.append((fut, value, None))
            except Exception as exc:
                if not conn.in_transaction:
                    raise  # SQLite rolled the whole transaction back (disk full, I/O error)
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                if not isinstance(exc, StoreError):
                    exc = StoreError(f"database error: {exc}")
                results.append((fut, None, exc))
        return results

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking sqlite3 call on the store's own thread. If the caller is cancelled
        meanwhile, wait for the call to end anyway: the connection must not be used by two
        threads, nor a transaction left open behind the caller's back. (Not
        `asyncio.shield`: its extra hop per commit measurably slowed ingest.)"""
        assert self._executor is not None
        job = self._executor.submit(fn, *args)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await asyncio.wrap_future(job)  # a call already running still finishes
            raise

    async def _begin(self, conn: sqlite3.Connection) -> None:
        """Take the write lock: at once when free (the usual case), else wait for it in a
        thread, up to busy_timeout, so the event loop never blocks on another process."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            await self._in_thread(self._begin_waiting, conn)

    def _begin_waiting(self, conn: sqlite3.Connection) -> None:
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        pause = 0.001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if (
                    "locked" not in str(exc) and "busy" not in str(exc)
                ) or time.monotonic() > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.05)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._runner is None or self._closed or self._runner.done():
            raise StoreError("store is not open")
        assert self._kick is not None
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, args, fut))
        self._kick.set()
        return await fut

    async def _call_outside(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` on the store's thread between batches, no transaction open."""
        if self._runner is None or self._closed or self._runner.done():
            raise StoreError("store is not open")
        assert self._kick is not None
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._outside.append((fn, args, fut))
        self._kick.set()
        return await fut

    # ------------------------------------------------------------ interface

    async def watch(self, wake: Callable[[], None]) -> None:
        """Wake the worker when another process commits (`relay worker` beside `relay serve
        --no-worker` on one file). The runner reads `PRAGMA data_version` on its own
        connection between batches and every 100 ms when idle: it changes only on other
        connections' commits, is read from memory, and costs next to nothing. The
        worker's own polling stays the safety net."""
        self._wakes.append(wake)
        if self._kick is not None:
            self._kick.set()  # start looking now

    async def ping(self) -> None:
        await self._call(_ping)

    async def record(
        self,
        event: EventRecord,
        conversions: Sequence[Conversion],
        destinations_for: Callable[[Conversion], Sequence[str]],
    ) -> Recorded:
        return await self._call(
            _record, event, conversions, destinations_for, self.attribution_memory
        )

    async def events(
        self,
        statuses: Sequence[str] = (),
        source: str | None = None,
        since: float | None = None,
        limit: int | None = 50,
        ids: Sequence[int] = (),
        with_body: bool = False,
        oldest_first: bool = False,
        before: tuple[float, int] | None = None,
    ) -> list[StoredEvent]:
        return await self._call(
            _events,
            tuple(statuses),
            source,
            since,
            limit,
            tuple(ids),
            with_body,
            oldest_first,
            before,
        )

    async def replay(
        self,
        event_row: int,
        status: str,
        reason: str | None,
        event_id: str,
        conversions: Sequence[Conversion],
        destinations_for: Callable[[Conversion], Sequence[str]],
        now: float,
        dry_run: bool = False,
    ) -> Recorded:
        args = (event_row, status, reason, event_id, conversions, destinations_for, now, dry_run)
        return await self._call(_replay, *args, self.attribution_memory)

    async def conversions_by_key(
        self, keys: Sequence[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], Conversion]:
        return await self._call(_conversions_by_key, tuple(keys)) if keys else {}

    async def without_delivery(
        self,
        destination: str,
        since: float,
        until: float | None = None,
        after: int = 0,
        limit: int = 500,
    ) -> list[tuple[int, Conversion]]:
        return await self._call(_without_delivery, destination, since, until, after, limit)

    async def add_deliveries(
        self, destination: str, conversion_ids: Sequence[int], now: float
    ) -> int:
        if not conversion_ids:
            return 0
        return await self._call(_add_deliveries, destination, tuple(conversion_ids), now)

    async def resend(self, ids: Sequence[int], now: float) -> list[int]:
        return await self._call(_resend, tuple(ids), now) if ids else []

    async def claim(
        self, destinations: Sequence[str], limit: int, lease_seconds: float, now: float
    ) -> list[Claim]:
        if not destinations or limit <= 0:
            return []
        return await self._call(_claim, tuple(destinations), limit, lease_seconds, now)

    async def settle(self, claim: Claim, settlement: Settlement, now: float) -> bool:
        return await self._call(_settle, claim, settlement, now)

    async def mark_sent(self, claims: Sequence[Claim]) -> None:
        if claims:
            await self._call(_mark_sent, [(c.delivery_id, c.lease_token) for c in claims])

    async def extend(self, claims: Sequence[Claim], until: float) -> None:
        if claims:
            await self._call(_extend, [(until, c.delivery_id, c.lease_token) for c in claims])

    async def next_due(self, destinations: Sequence[str]) -> float | None:
        if not destinations:
            return None
        return await self._call(_next_due, tuple(destinations))

    async def deliveries(
        self,
        status: str | None = None,
        destination: str | None = None,
        limit: int = 50,
        delivery_id: int | None = None,
    ) -> list[DeliveryRow]:
        return await self._call(_deliveries, status, destination, limit, delivery_id)

    async def attempts(self, delivery_id: int) -> list[Attempt]:
        return await self._call(_attempts, delivery_id)

    async def requeue(
        self,
        ids: Sequence[int] = (),
        destination: str | None = None,
        now: float = 0.0,
        statuses: Sequence[str] = (FAILED,),
    ) -> int:
        return await self._call(_requeue, tuple(ids), destination, now, tuple(statuses))

    async def stats(self, now: float) -> dict[str, Any]:
        return await self._call(_stats, now)

    async def retain(
        self, cutoff: float, now: float, cursor: Any = None, limit: int = 500
    ) -> Retained:
        return await self._call(_retain, cutoff, now, cursor, limit)

    # forget: the steps Store.forget runs, each in its own short transaction

    async def _forget_by_keys(self, keys: list[str]) -> tuple[set[int], set[str]]:
        return await self._call(_by_customer_keys, keys)

    async def _forget_memory(self, keys: list[str]) -> int:
        return await self._call(_forget_memory, keys) if keys else 0

    async def _forget_scan_conversions(
        self, email: str, cursor: Any, limit: int
    ) -> tuple[set[int], set[str], Any]:
        return await self._call(_scan_conversions, email, cursor, limit)

    async def _forget_scan_events(
        self, email: str | None, customers: list[str], after: int, chunk: int
    ) -> tuple[set[int], int | None]:
        return await self._call(_scan_events, email, customers, after, chunk)

    async def _forget_chunk(
        self, conversions: list[int], events: list[int], now: float
    ) -> tuple[Forgotten, set[int], set[int]]:
        return await self._call(_forget_chunk, conversions, events, now)

    async def compact(self) -> bool:
        """Checkpoint the WAL into the file and truncate it, so pages holding erased data
        stay in no -wal file. Another process in a long read postpones it: a few short
        tries (the ledger is free for others in between), then False (the next run does it)."""
        for _ in range(WAL_TRUNCATE_TRIES):
            if await self._call_outside(_truncate_wal, WAL_TRUNCATE_WAIT):
                return True
            await asyncio.sleep(0.2)
        log.warning("store: the WAL could not be truncated now (another process is reading)")
        return False

    async def add_tallies(
        self,
        hour: int,
        counts: Mapping[tuple[str, str, str], int],
        errors: Mapping[str, DestinationError],
        prune_before: int,
    ) -> None:
        await self._call(_add_tallies, hour, dict(counts), dict(errors), prune_before)

    async def tallies(self, since_hour: int) -> dict[tuple[str, str, str], int]:
        return await self._call(_tallies, since_hour)

    async def destination_errors(self) -> dict[str, DestinationError]:
        return await self._call(_destination_errors)

    async def oldest_pending(self, destinations: Sequence[str]) -> dict[str, float]:
        return await self._call(_oldest_pending, tuple(destinations))

    async def delivery_page(
        self,
        statuses: Sequence[str],
        destinations: Sequence[str],
        source: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before: tuple[float, int] | None = None,
        limit: int = 50,
    ) -> list[DeliveryRow]:
        if not statuses or not destinations or limit <= 0:
            return []
        args = (tuple(statuses), tuple(destinations), source, since, until, before, limit)
        return await self._call(_delivery_page, *args)

    async def conversion(self, conversion_id: int) -> StoredConversion | None:
        return await self._call(_conversion, conversion_id)

    async def conversion_deliveries(self, conversion_id: int) -> list[DeliveryRow]:
        return await self._call(_conversion_deliveries, conversion_id)

    async def find_conversions(
        self,
        sources: Sequence[str],
        order_key: str | None = None,
        email_hash: str | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> list[StoredConversion]:
        if (order_key is None) == (email_hash is None):
            raise ValueError("give an order key or an email hash")
        return await self._call(
            _find_conversions, tuple(sources), order_key, email_hash, before, limit
        )

    async def find_events(self, sources: Sequence[str], event_id: str) -> list[StoredEvent]:
        return await self._call(_find_events, tuple(sources), event_id)

    async def rate_block(self, key: str, per_minute: int, until: float) -> None:
        await self._call(_rate_block, key, per_minute, until)

    async def disable_destination(
        self, destination: str, reason: str, fingerprint: str | None, now: float
    ) -> bool:
        return await self._call(_disable_destination, destination, reason, fingerprint, now)

    async def enable_destination(self, destination: str) -> DisabledDestination | None:
        return await self._call(_enable_destination, destination)

    async def disabled_destinations(self) -> dict[str, DisabledDestination]:
        return await self._call(_disabled_destinations)

    async def rate_acquire(self, key: str, per_minute: int, now: float) -> float:
        return await self._call(_rate_acquire, key, per_minute, now)

    async def claim_submissions(
        self, destinations: Sequence[str], limit: int, lease_seconds: float, now: float
    ) -> list[SubmissionClaim]:
        if not destinations or limit <= 0:
            return []
        return await self._call(_claim_submissions, tuple(destinations), limit, lease_seconds, now)

    async def settle_submission(
        self, claim: SubmissionClaim, result: SubmissionResult, now: float
    ) -> bool:
        return await self._call(_settle_submission, claim, result, now)

    async def hold_submissions(self, destination: str, until: float) -> int:
        return await self._call(_hold_submissions, destination, until)

    async def next_submission_due(self, destinations: Sequence[str]) -> float | None:
        if not destinations:
            return None
        return await self._call(_next_submission_due, tuple(destinations))

    async def submission_stats(self) -> dict[str, Any]:
        return await self._call(_submission_stats)

    async def refund_target(self, conversion_id: int, destination: str) -> RefundTarget:
        return await self._call(_refund_target, conversion_id, destination)

    async def reconcile_lease(
        self, source: str, owner: str, now: float, until: float
    ) -> ReconcileState | None:
        return await self._call(_reconcile_lease, source, owner, now, until)

    async def reconcile_progress(
        self, source: str, owner: str, mark: float | None, until: float
    ) -> bool:
        return await self._call(_reconcile_progress, source, owner, mark, until)

    async def reconcile_done(
        self, source: str, owner: str, now: float, mark: float | None, error: str | None
    ) -> None:
        await self._call(_reconcile_done, source, owner, now, mark, error)

    async def reconcile_states(self) -> list[ReconcileState]:
        return await self._call(_reconcile_states)

    async def existing(self, source: str, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        if not keys:
            return set()
        return await self._call(_existing, source, tuple(keys))


# ---------------------------------------------------------------- file and schema steps


def _create_private(path: str) -> None:
    """Create a missing ledger file readable by its owner only (SQLite gives its -wal and
    -shm the file's mode). An existing file keeps its mode."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


# Version 5 (ERASURE_VERSION): delivery counts kept exact by triggers, so `stats` (/metrics)
# costs the same at 10 deliveries and at 10M whatever code path writes deliveries; the
# oldest pending age from an index; erasure marks and the indexes retention walks.
_ERASURE_STEP = (
    """CREATE TABLE IF NOT EXISTS delivery_counts (
        destination TEXT NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (destination, status)) WITHOUT ROWID""",
    """CREATE TRIGGER IF NOT EXISTS deliveries_count_insert AFTER INSERT ON deliveries BEGIN
        INSERT INTO delivery_counts (destination, status, n) VALUES (NEW.destination, NEW.status, 1)
            ON CONFLICT (destination, status) DO UPDATE SET n = n + 1;
    END""",
    """CREATE TRIGGER IF NOT EXISTS deliveries_count_update AFTER UPDATE OF status, destination
        ON deliveries
        WHEN OLD.status IS NOT NEW.status OR OLD.destination IS NOT NEW.destination BEGIN
        UPDATE delivery_counts SET n = n - 1
         WHERE destination = OLD.destination AND status = OLD.status;
        INSERT INTO delivery_counts (destination, status, n) VALUES (NEW.destination, NEW.status, 1)
            ON CONFLICT (destination, status) DO UPDATE SET n = n + 1;
    END""",
    """CREATE TRIGGER IF NOT EXISTS deliveries_count_delete AFTER DELETE ON deliveries BEGIN
        UPDATE delivery_counts SET n = n - 1
         WHERE destination = OLD.destination AND status = OLD.status;
    END""",
    # replaces deliveries_status (status, destination): the same lookups, plus the oldest
    # pending delivery of a destination in O(log n) — no extra index to write
    "CREATE INDEX IF NOT EXISTS deliveries_status_age"
    " ON deliveries (status, destination, created_at)",
    "DROP INDEX IF EXISTS deliveries_status",
    # retention walks the conversions not erased yet by conversion time; forget and
    # retention find an event's other conversions. Both shrink as rows are erased.
    "CREATE INDEX IF NOT EXISTS conversions_retention ON conversions (occurred_at)"
    " WHERE erased_at IS NULL",
    "CREATE INDEX IF NOT EXISTS conversions_event ON conversions (event_row)"
    " WHERE erased_at IS NULL",
    # how far retention's walk over the events has come (events without conversions)
    "CREATE TABLE IF NOT EXISTS retention_state (key TEXT PRIMARY KEY, value REAL NOT NULL)",
    # the counts, built once from the table (exact: the write lock is held until COMMIT)
    "DELETE FROM delivery_counts",
    "INSERT INTO delivery_counts (destination, status, n)"
    " SELECT destination, status, count(*) FROM deliveries GROUP BY destination, status",
)


def _upgrade_erasure(conn: sqlite3.Connection) -> None:
    """Schema step to ERASURE_VERSION, inside `_migrate`'s transaction (also on a new file)."""
    for table, column, kind in (
        ("events", "erased_at", "REAL"),
        ("conversions", "erased_at", "REAL"),
        ("conversions", "erased_by", "TEXT"),
    ):
        if column not in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    for statement in _ERASURE_STEP:
        conn.execute(statement)


# ---------------------------------------------------------------- statements (writer thread)


def _ping(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT version FROM schema_version LIMIT 1").fetchone()


def _record(
    conn: sqlite3.Connection,
    event: EventRecord,
    conversions: Sequence[Conversion],
    destinations_for: Callable[[Conversion], Sequence[str]],
    memory: str = "first",
) -> Recorded:
    cur = conn.execute(
        "INSERT INTO events (source, event_id, event_type, received_at, body, status, reason)"
        " VALUES (?,?,?,?,?,?,?) ON CONFLICT (source, event_id) DO NOTHING",
        (
            event.source,
            event.event_id,
            event.event_type,
            event.received_at,
            event.body,
            event.status,
            event.reason,
        ),
    )
    if cur.rowcount == 0:
        return Recorded(duplicate=True)
    assert cur.lastrowid is not None
    return _record_conversions(
        conn, cur.lastrowid, event.received_at, conversions, destinations_for, memory
    )


def _record_conversions(
    conn: sqlite3.Connection,
    event_row: int,
    now: float,
    conversions: Sequence[Conversion],
    destinations_for: Callable[[Conversion], Sequence[str]],
    memory: str = "first",
) -> Recorded:
    """The conversions of one event (row `event_row`), deduped, and their deliveries."""
    result = Recorded(duplicate=False)
    for conversion in conversions:
        prefix = refunds.earlier_prefix(conversion)
        if prefix is not None:  # a cumulative refund: record only what is new
            exists = conn.execute(
                "SELECT 1 FROM conversions WHERE source = ? AND kind = ? AND order_key = ?",
                (conversion.source, conversion.kind, conversion.order_key),
            ).fetchone()
            # A range on the unique (source, kind, order_key) index: the prefix ends with
            # ':' and ';' is the next character, so [prefix, prefix[:-1] + ';') is exactly
            # the keys that start with it (BINARY collation).
            earlier = conn.execute(
                "SELECT data FROM conversions WHERE source = ? AND kind = 'refund'"
                " AND order_key >= ? AND order_key < ?",
                (conversion.source, prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)),
            ).fetchall()
            delta = (
                None
                if exists
                else refunds.refund_delta(
                    conversion, [Conversion.from_json(row[0]).total or 0 for row in earlier]
                )
            )
            if delta is None:
                result.known.append(conversion)
                continue
            conversion = delta
        ckey = customer_key(conversion)
        if conversion.new_customer is None and conversion.kind in REVENUE_KINDS and ckey:
            prior = conn.execute(
                "SELECT 1 FROM conversions WHERE source = ? AND customer_key = ?"
                " AND kind IN ('purchase', 'subscription_renewed') LIMIT 1",
                (conversion.source, ckey),
            ).fetchone()
            conversion = conversion.replace(new_customer=prior is None)
        if ckey and memory_kind(conversion, memory):  # one indexed lookup
            known = conn.execute(
                "SELECT attribution FROM attribution_memory WHERE source = ? AND customer_key = ?",
                (conversion.source, ckey),
            ).fetchone()
            if known is not None:
                conversion = remembered(conversion, memory, orjson.loads(known[0]))
        cur = conn.execute(
            "INSERT INTO conversions (source, kind, order_key, event_row, customer_key,"
            " occurred_at, created_at, data, link_ref, email_hash) VALUES (?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (source, kind, order_key) DO NOTHING",
            (
                conversion.source,
                conversion.kind,
                conversion.order_key,
                event_row,
                ckey,
                conversion.occurred_at.timestamp(),
                now,
                conversion.to_json(),
                refunds.link_ref(conversion),
                email_hash(conversion.customer.email),
            ),
        )
        if cur.rowcount == 0:
            result.known.append(conversion)
            continue
        conversion_id = cur.lastrowid
        if ckey and memory != "off":
            _remember(conn, conversion, ckey, conversion_id, now, memory)
        result.conversions.append(conversion)
        for destination in destinations_for(conversion):
            conn.execute(
                "INSERT INTO deliveries (conversion_id, destination, status, next_attempt_at,"
                " created_at, updated_at) VALUES (?,?,?,?,?,?)",
                (conversion_id, destination, PENDING, now, now, now),
            )
            result.deliveries += 1
    return result


def _remember(
    conn: sqlite3.Connection,
    conversion: Conversion,
    ckey: str,
    conversion_id: int | None,
    now: float,
    memory: str,
) -> None:
    """Attribution memory, in the record's transaction: a conversion that brought ids of
    its own is remembered (`first`: only if nothing is yet; `last`: replacing); one that
    was given remembered ids keeps the memory alive. `seen_at` is the latest conversion
    time that wrote or used it: retention removes a memory seen before its cutoff."""
    seen = conversion.occurred_at.timestamp()
    if "attribution_memory" in conversion.refs:
        conn.execute(
            "UPDATE attribution_memory SET seen_at = max(seen_at, ?)"
            " WHERE source = ? AND customer_key = ?",
            (seen, conversion.source, ckey),
        )
    elif conversion.attribution:
        update = (
            "DO UPDATE SET attribution = excluded.attribution,"
            " conversion_id = excluded.conversion_id, updated_at = excluded.updated_at,"
            " seen_at = max(seen_at, excluded.seen_at)"
            if memory == "last"
            else "DO NOTHING"
        )
        conn.execute(
            "INSERT INTO attribution_memory (source, customer_key, attribution, conversion_id,"
            " created_at, updated_at, seen_at) VALUES (?,?,?,?,?,?,?)"
            f" ON CONFLICT (source, customer_key) {update}",
            (
                conversion.source,
                ckey,
                orjson.dumps(conversion.attribution),
                conversion_id,
                now,
                now,
                seen,
            ),
        )


def _retain_memory(conn: sqlite3.Connection, cutoff: float, limit: int) -> Retained:
    """Retention's last phase: remembered ids neither written nor used since the cutoff."""
    cur = conn.execute(
        "DELETE FROM attribution_memory WHERE rowid IN"
        " (SELECT rowid FROM attribution_memory WHERE seen_at < ? LIMIT ?)",
        (cutoff, limit),
    )
    return Retained(memories=cur.rowcount, done=cur.rowcount < limit, cursor=("memory",))


def _forget_memory(conn: sqlite3.Connection, keys: list[str]) -> int:
    """`forget`: the buyer's remembered ids, under any of their customer keys."""
    marks = ",".join("?" * len(keys))
    return conn.execute(
        f"DELETE FROM attribution_memory WHERE customer_key IN ({marks})",  # noqa: S608
        keys,
    ).rowcount


_EVENT_COLUMNS = "id, source, event_id, event_type, status, reason, received_at, replayed_at"


def _events(
    conn: sqlite3.Connection,
    statuses: tuple[str, ...],
    source: str | None,
    since: float | None,
    limit: int | None,
    ids: tuple[int, ...],
    with_body: bool,
    oldest_first: bool,
    before: tuple[float, int] | None = None,
) -> list[StoredEvent]:
    where: list[str] = []
    args: list[Any] = []
    if before is not None:  # keyset: the rows listed after (received_at, id), newest first
        where.append("(received_at < ? OR (received_at = ? AND id < ?))")
        args.extend((before[0], before[0], before[1]))
    if statuses:
        where.append(f"status IN ({','.join('?' * len(statuses))})")
        args.extend(statuses)
    if source:
        where.append("source = ?")
        args.append(source)
    if since is not None:
        where.append("received_at >= ?")
        args.append(since)
    if ids:
        where.append(f"id IN ({','.join('?' * len(ids))})")
        args.extend(ids)
    order = "ASC" if oldest_first else "DESC"
    sql = (
        f"SELECT {_EVENT_COLUMNS}{', body' if with_body else ''} FROM events"  # noqa: S608
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY received_at {order}, id {order}"
        + (" LIMIT ?" if limit is not None else "")
    )
    if limit is not None:
        args.append(limit)
    return [StoredEvent(*row) for row in conn.execute(sql, args)]


def _replay(
    conn: sqlite3.Connection,
    event_row: int,
    status: str,
    reason: str | None,
    event_id: str,
    conversions: Sequence[Conversion],
    destinations_for: Callable[[Conversion], Sequence[str]],
    now: float,
    dry_run: bool,
    memory: str = "first",
) -> Recorded:
    row = conn.execute("SELECT source, event_id FROM events WHERE id = ?", (event_row,)).fetchone()
    if row is None:
        raise StoreError(f"event {event_row} is not in the ledger")
    if dry_run:  # do it all, report it, undo it
        conn.execute("SAVEPOINT replay_dry_run")
    try:
        conn.execute(
            "UPDATE events SET status = ?, reason = ?, replayed_at = ? WHERE id = ?",
            (status, reason, now, event_row),
        )
        if event_id != row[1]:
            conn.execute(
                "UPDATE events SET event_id = ? WHERE id = ? AND NOT EXISTS"
                " (SELECT 1 FROM events WHERE source = ? AND event_id = ?)",
                (event_id, event_row, row[0], event_id),
            )
        return _record_conversions(conn, event_row, now, conversions, destinations_for, memory)
    finally:
        if dry_run:
            conn.execute("ROLLBACK TO replay_dry_run")
            conn.execute("RELEASE replay_dry_run")


def _conversions_by_key(
    conn: sqlite3.Connection, keys: tuple[tuple[str, str, str], ...]
) -> dict[tuple[str, str, str], Conversion]:
    found = {}
    for key in keys:
        row = conn.execute(
            "SELECT data FROM conversions WHERE source = ? AND kind = ? AND order_key = ?", key
        ).fetchone()
        if row is not None:
            found[key] = Conversion.from_json(row[0])
    return found


def _without_delivery(
    conn: sqlite3.Connection,
    destination: str,
    since: float,
    until: float | None,
    after: int,
    limit: int,
) -> list[tuple[int, Conversion]]:
    rows = conn.execute(
        "SELECT c.id, c.data FROM conversions c"
        " WHERE c.id > ? AND c.created_at >= ? AND (? IS NULL OR c.created_at < ?)"
        " AND c.erased_at IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM deliveries d"
        "                 WHERE d.conversion_id = c.id AND d.destination = ?)"
        " ORDER BY c.id LIMIT ?",
        (after, since, until, until, destination, limit),
    ).fetchall()
    return [(row_id, Conversion.from_json(data)) for row_id, data in rows]


def _add_deliveries(
    conn: sqlite3.Connection, destination: str, conversion_ids: tuple[int, ...], now: float
) -> int:
    # rowcount, not total_changes: the delivery-count triggers' writes are not deliveries
    cur = conn.executemany(
        "INSERT INTO deliveries (conversion_id, destination, status, next_attempt_at,"
        " created_at, updated_at) SELECT id, ?, ?, ?, ?, ? FROM conversions WHERE id = ?"
        " ON CONFLICT (conversion_id, destination) DO NOTHING",
        [(destination, PENDING, now, now, now, cid) for cid in conversion_ids],
    )
    return cur.rowcount


def _resend(conn: sqlite3.Connection, ids: tuple[int, ...], now: float) -> list[int]:
    marks = ",".join("?" * len(ids))
    rows = conn.execute(
        f"SELECT id, attempts FROM deliveries WHERE id IN ({marks}) AND status = ?",  # noqa: S608
        (*ids, DELIVERED),
    ).fetchall()
    for delivery_id, attempts in rows:
        conn.execute(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?,"
            " sent_attempt = NULL, lease_until = NULL, lease_token = NULL, recovered = 0,"
            " in_doubt = 0, updated_at = ? WHERE id = ?",
            (now, now, delivery_id),
        )
        conn.execute(
            "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, outcome,"
            " status_code, detail) VALUES (?, ?, ?, 0, ?, NULL, ?)",
            (delivery_id, attempts, now, RESEND, RESEND_DETAIL),
        )
    return sorted(row[0] for row in rows)


def _claim(
    conn: sqlite3.Connection,
    destinations: tuple[str, ...],
    limit: int,
    lease_seconds: float,
    now: float,
) -> list[Claim]:
    token = uuid.uuid4().hex
    marks = ",".join("?" * len(destinations))
    rows = conn.execute(
        f"""
        UPDATE deliveries
           SET lease_until = ?, lease_token = ?, attempts = attempts + 1, updated_at = ?,
               recovered = CASE WHEN lease_token IS NULL THEN 0 ELSE 1 END,
               in_doubt = CASE WHEN lease_token IS NOT NULL AND sent_attempt = attempts
                               THEN 1 ELSE 0 END
         WHERE id IN (
               SELECT id FROM deliveries
                WHERE status = 'pending' AND destination IN ({marks})
                  AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until < ?)
                ORDER BY next_attempt_at LIMIT ?)
        RETURNING id, conversion_id, destination, attempts, recovered, in_doubt
        """,  # noqa: S608 - only placeholders are interpolated
        (now + lease_seconds, token, now, *destinations, now, now, limit),
    ).fetchall()
    if not rows:
        return []
    ids = {r[1] for r in rows}
    data = dict(
        (r[0], (r[1], r[2], r[3]))
        for r in conn.execute(
            "SELECT id, data, created_at, erased_by FROM conversions"  # noqa: S608
            f" WHERE id IN ({','.join('?' * len(ids))})",
            tuple(ids),
        )
    )
    claims = []
    for delivery_id, conversion_id, destination, attempts, recovered, in_doubt in rows:
        raw, created, erased = data[conversion_id]
        claims.append(
            Claim(
                delivery_id=delivery_id,
                destination=destination,
                attempt=attempts,
                conversion_id=conversion_id,
                conversion=Conversion.from_json(raw),
                lease_token=token,
                created_at=created,
                recovered=bool(recovered),
                in_doubt=bool(in_doubt),
                erased=erased,
            )
        )
    return claims


def _settle(conn: sqlite3.Connection, claim: Claim, s: Settlement, now: float) -> bool:
    cur = conn.execute(
        """
        UPDATE deliveries
           SET status = ?, next_attempt_at = COALESCE(?, next_attempt_at),
               attempts = attempts - ?, lease_until = NULL, lease_token = NULL, recovered = 0, in_doubt = 0,
               last_status_code = COALESCE(?, last_status_code),
               last_error = CASE WHEN ? = 'delivered' THEN NULL ELSE COALESCE(?, last_error) END,
               updated_at = ?, delivered_at = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_at END
         WHERE id = ? AND lease_token = ?
        """,
        (
            s.status,
            s.next_attempt_at,
            0 if s.count_attempt else 1,
            s.status_code,
            s.status,
            s.error,
            now,
            s.status,
            now,
            claim.delivery_id,
            claim.lease_token,
        ),
    )
    if cur.rowcount == 0:
        return False
    if s.attempt is not None:
        a = s.attempt
        conn.execute(
            "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, outcome,"
            " status_code, detail) VALUES (?,?,?,?,?,?,?)",
            (
                claim.delivery_id,
                claim.attempt,
                a.started_at,
                a.duration_ms,
                a.outcome,
                a.status_code,
                a.detail[:1000],
            ),
        )
    if s.follow_up is not None and s.status == DELIVERED:
        _follow(conn, claim.delivery_id, claim.destination, s.follow_up, now)
    return True


def _mark_sent(conn: sqlite3.Connection, rows: list[tuple[int, str]]) -> None:
    conn.executemany(
        "UPDATE deliveries SET sent_attempt = attempts WHERE id = ? AND lease_token = ?", rows
    )


def _extend(conn: sqlite3.Connection, rows: list[tuple[float, int, str]]) -> None:
    conn.executemany(
        "UPDATE deliveries SET lease_until = ? WHERE id = ? AND lease_token = ?"
        " AND status = 'pending'",
        rows,
    )


def _next_due(conn: sqlite3.Connection, destinations: tuple[str, ...]) -> float | None:
    marks = ",".join("?" * len(destinations))
    row = conn.execute(
        f"SELECT min(max(next_attempt_at, coalesce(lease_until, 0))) FROM deliveries"  # noqa: S608
        f" WHERE status = 'pending' AND destination IN ({marks})",
        destinations,
    ).fetchone()
    return row[0]


def _deliveries(
    conn: sqlite3.Connection,
    status: str | None,
    destination: str | None,
    limit: int,
    delivery_id: int | None,
) -> list[DeliveryRow]:
    where: list[str] = []
    args: list[Any] = []
    if delivery_id is not None:
        where.append("d.id = ?")
        args.append(delivery_id)
    if status:
        where.append("d.status = ?")
        args.append(status)
    if destination:
        where.append("d.destination = ?")
        args.append(destination)
    sql = (
        "SELECT d.id, d.destination, d.status, d.attempts,"
        " CASE WHEN d.status = 'pending' THEN d.next_attempt_at END,"
        f" {_DELIVERY_TAIL}"
        " FROM deliveries d JOIN conversions c ON c.id = d.conversion_id"
        " LEFT JOIN submissions s ON s.delivery_id = d.id"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY d.id DESC LIMIT ?"
    )
    return [DeliveryRow(*row) for row in conn.execute(sql, (*args, limit))]


# The DeliveryRow columns after the first five (d.id … CASE next_attempt_at).
_DELIVERY_TAIL = (
    "d.last_status_code, d.last_error, c.source, c.kind, c.order_key, d.created_at,"
    " d.updated_at, c.erased_by,"
    " CASE WHEN d.status <> 'pending' THEN s.state END,"
    " CASE WHEN d.status <> 'pending' THEN s.detail END, d.conversion_id"
)
_DELIVERY_COLUMNS = (
    "d.id, d.destination, d.status, d.attempts,"
    " CASE WHEN d.status = 'pending' THEN d.next_attempt_at END, " + _DELIVERY_TAIL
)


def _attempts(conn: sqlite3.Connection, delivery_id: int) -> list[Attempt]:
    return [
        Attempt(started, ms, outcome, code, detail or "")
        for started, ms, outcome, code, detail in conn.execute(
            "SELECT started_at, duration_ms, outcome, status_code, detail FROM attempts"
            " WHERE delivery_id = ? ORDER BY id",
            (delivery_id,),
        )
    ]


def _requeue(
    conn: sqlite3.Connection,
    ids: tuple[int, ...],
    destination: str | None,
    now: float,
    statuses: tuple[str, ...],
) -> int:
    where, args = [f"status IN ({','.join('?' * len(statuses))})"], list(statuses)
    if ids:
        where.append(f"id IN ({','.join('?' * len(ids))})")
        args.extend(ids)
    if destination:
        where.append("destination = ?")
        args.append(destination)
    # a conversion whose personal data is gone cannot be sent again (`relay retry` says so)
    where.append(
        "NOT EXISTS (SELECT 1 FROM conversions c WHERE c.id = deliveries.conversion_id"
        " AND c.erased_at IS NOT NULL)"
    )
    cur = conn.execute(
        "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?,"  # noqa: S608
        " sent_attempt = NULL, lease_until = NULL, lease_token = NULL, updated_at = ? WHERE "
        + " AND ".join(where),
        (now, now, *args),
    )
    return cur.rowcount


def _stats(conn: sqlite3.Connection, now: float) -> dict[str, Any]:
    """From the trigger-kept counts and one index probe per destination with pending
    deliveries: no scan of `deliveries`."""
    by_status = {
        (dest, status): n
        for dest, status, n in conn.execute(
            "SELECT destination, status, n FROM delivery_counts WHERE n <> 0"
        )
    }
    oldest = None
    for dest in sorted({d for d, status in by_status if status == PENDING}):
        first = conn.execute(
            "SELECT min(created_at) FROM deliveries WHERE status = 'pending' AND destination = ?",
            (dest,),
        ).fetchone()[0]
        if first is not None and (oldest is None or first < oldest):
            oldest = first
    return {
        "by_status": by_status,
        "oldest_pending_age": 0.0 if oldest is None else max(0.0, now - oldest),
    }


# ---------------------------------------------------------------- console reads


def _add_tallies(
    conn: sqlite3.Connection,
    hour: int,
    counts: dict[tuple[str, str, str], int],
    errors: dict[str, DestinationError],
    prune_before: int,
) -> None:
    conn.executemany(
        "INSERT INTO tallies (hour, kind, name, outcome, n) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (hour, kind, name, outcome) DO UPDATE SET n = n + excluded.n",
        [(hour, *key, n) for key, n in sorted(counts.items()) if n],
    )
    conn.executemany(
        "INSERT INTO destination_errors (destination, at, delivery_id, status_code, error)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (destination) DO UPDATE SET at = excluded.at,"
        " delivery_id = excluded.delivery_id, status_code = excluded.status_code,"
        " error = excluded.error WHERE excluded.at >= destination_errors.at",
        [(name, e.at, e.delivery_id, e.status_code, e.error) for name, e in sorted(errors.items())],
    )
    conn.execute("DELETE FROM tallies WHERE hour < ?", (prune_before,))


def _tallies(conn: sqlite3.Connection, since_hour: int) -> dict[tuple[str, str, str], int]:
    return {
        (kind, name, outcome): n
        for kind, name, outcome, n in conn.execute(
            "SELECT kind, name, outcome, sum(n) FROM tallies WHERE hour >= ?"
            " GROUP BY kind, name, outcome",
            (since_hour,),
        )
    }


def _destination_errors(conn: sqlite3.Connection) -> dict[str, DestinationError]:
    return {
        name: DestinationError(at, error, code, delivery_id)
        for name, at, delivery_id, code, error in conn.execute(
            "SELECT destination, at, delivery_id, status_code, error FROM destination_errors"
        )
    }


def _oldest_pending(conn: sqlite3.Connection, destinations: tuple[str, ...]) -> dict[str, float]:
    found = {}
    for name in destinations:  # one step down deliveries_status_age each
        row = conn.execute(
            "SELECT min(created_at) FROM deliveries WHERE status = 'pending' AND destination = ?",
            (name,),
        ).fetchone()
        if row[0] is not None:
            found[name] = row[0]
    return found


def _delivery_page(
    conn: sqlite3.Connection,
    statuses: tuple[str, ...],
    destinations: tuple[str, ...],
    source: str | None,
    since: float | None,
    until: float | None,
    before: tuple[float, int] | None,
    limit: int,
) -> list[DeliveryRow]:
    # A range of deliveries_status_age (status, destination, created_at, and the rowid
    # SQLite keeps last in every index) per pair, walked backwards from its one upper bound.
    before, until = upper_bound(before, until)
    where = ["d.status = ?", "d.destination = ?"]
    args: list[Any] = []
    if before is not None:
        where.append("(d.created_at, d.id) < (?, ?)")
        args.extend(before)
    if since is not None:
        where.append("d.created_at >= ?")
        args.append(since)
    if until is not None:
        where.append("d.created_at < ?")
        args.append(until)
    if source:
        where.append("c.source = ?")
        args.append(source)
    sql = (
        f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d"  # noqa: S608 - no value interpolated
        " JOIN conversions c ON c.id = d.conversion_id"
        " LEFT JOIN submissions s ON s.delivery_id = d.id"
        f" WHERE {' AND '.join(where)} ORDER BY d.created_at DESC, d.id DESC LIMIT ?"
    )
    rows: list[DeliveryRow] = []
    for status in statuses:
        for destination in destinations:
            rows.extend(
                DeliveryRow(*row) for row in conn.execute(sql, (status, destination, *args, limit))
            )
    rows.sort(key=lambda row: (row.created_at, row.id), reverse=True)
    return rows[:limit]


_CONVERSION_COLUMNS = "id, event_row, created_at, data, erased_by"


def _stored_conversion(row: tuple[Any, ...]) -> StoredConversion:
    return StoredConversion(row[0], row[1], row[2], Conversion.from_json(row[3]), row[4])


def _conversion(conn: sqlite3.Connection, conversion_id: int) -> StoredConversion | None:
    row = conn.execute(
        f"SELECT {_CONVERSION_COLUMNS} FROM conversions WHERE id = ?",  # noqa: S608
        (conversion_id,),
    ).fetchone()
    return None if row is None else _stored_conversion(row)


def _conversion_deliveries(conn: sqlite3.Connection, conversion_id: int) -> list[DeliveryRow]:
    return [
        DeliveryRow(*row)
        for row in conn.execute(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d"  # noqa: S608
            " JOIN conversions c ON c.id = d.conversion_id"
            " LEFT JOIN submissions s ON s.delivery_id = d.id"
            " WHERE d.conversion_id = ? ORDER BY d.destination",
            (conversion_id,),
        )
    ]


def _find_conversions(
    conn: sqlite3.Connection,
    sources: tuple[str, ...],
    order_key: str | None,
    hashed: str | None,
    before: int | None,
    limit: int,
) -> list[StoredConversion]:
    if order_key is not None:
        # The unique (source, kind, order_key) index, one probe per source and kind.
        where = (
            f"source IN ({','.join('?' * len(sources))})"
            f" AND kind IN ({','.join('?' * len(KINDS))}) AND order_key = ?"
        )
        args: list[Any] = [*sources, *KINDS, order_key]
    else:
        where, args = "email_hash = ?", [hashed]
    if before is not None:
        where += " AND id < ?"
        args.append(before)
    return [
        _stored_conversion(row)
        for row in conn.execute(
            f"SELECT {_CONVERSION_COLUMNS} FROM conversions WHERE {where}"  # noqa: S608
            " ORDER BY id DESC LIMIT ?",
            (*args, limit),
        )
    ]


def _find_events(
    conn: sqlite3.Connection, sources: tuple[str, ...], event_id: str
) -> list[StoredEvent]:
    if not sources:
        return []
    return [
        StoredEvent(*row)
        for row in conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events"  # noqa: S608
            f" WHERE source IN ({','.join('?' * len(sources))}) AND event_id = ?",
            (*sources, event_id),
        )
    ]


# ---------------------------------------------------------------- retention and forget


def _retain(
    conn: sqlite3.Connection, cutoff: float, now: float, cursor: Any, limit: int
) -> Retained:
    """One batch: first the conversions (by conversion time, from `cursor`), then the
    events without conversions (from the walk's saved position)."""
    result = Retained(done=False)
    phase = cursor[0] if cursor else "conversions"
    if phase == "memory":
        return _retain_memory(conn, cutoff, limit)
    if phase == "conversions":
        after_at, after_id = (cursor[1], cursor[2]) if cursor else (float("-inf"), 0)
        rows = conn.execute(
            "SELECT c.id, c.occurred_at, c.event_row, c.data,"
            " EXISTS (SELECT 1 FROM deliveries d WHERE d.conversion_id = c.id"
            "         AND d.status = 'pending')"
            " FROM conversions c WHERE c.erased_at IS NULL AND c.occurred_at < ?"
            " AND (c.occurred_at > ? OR (c.occurred_at = ? AND c.id > ?))"
            " ORDER BY c.occurred_at, c.id LIMIT ?",
            (cutoff, after_at, after_at, after_id, limit),
        ).fetchall()
        events = set()
        for cid, _, event_row, raw, pending in rows:
            if pending:  # not settled yet: a later run takes it
                continue
            conn.execute(
                "UPDATE conversions SET data = ?, erased_at = ?, erased_by = ? WHERE id = ?",
                (erase_personal(Conversion.from_json(raw)).to_json(), now, RETENTION, cid),
            )
            result.conversions += 1
            events.add(event_row)
        for event_row in sorted(events):  # an event goes once none of its conversions keeps data
            result.events += _erase_event_if_done(conn, event_row, now)
        if len(rows) == limit:
            result.cursor = ("conversions", rows[-1][1], rows[-1][0])
            return result
        result.cursor = ("events",)
        return result
    row = conn.execute("SELECT value FROM retention_state WHERE key = 'events'").fetchone()
    position = int(row[0]) if row else 0
    rows = conn.execute(
        "SELECT e.id, e.received_at, e.erased_at IS NULL,"
        " EXISTS (SELECT 1 FROM conversions c WHERE c.event_row = e.id AND c.erased_at IS NULL)"
        " FROM events e WHERE e.id > ? ORDER BY e.id LIMIT ?",
        (position, limit),
    ).fetchall()
    for eid, received_at, unerased, has_data in rows:
        if received_at >= cutoff:  # ids follow arrival: the rest is younger
            result.done = True
            break
        position = eid
        if unerased and not has_data:  # with data: its conversions' erasure takes it
            conn.execute("UPDATE events SET body = x'', erased_at = ? WHERE id = ?", (now, eid))
            result.events += 1
    else:
        result.done = len(rows) < limit
    conn.execute(
        "INSERT INTO retention_state (key, value) VALUES ('events', ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (position,),
    )
    result.cursor = ("events",)
    if result.done:  # then the remembered attribution ids (_retain_memory)
        result.done, result.cursor = False, ("memory",)
    return result


def _erase_event_if_done(conn: sqlite3.Connection, event_row: int, now: float) -> int:
    cur = conn.execute(
        "UPDATE events SET body = x'', erased_at = ? WHERE id = ? AND erased_at IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM conversions c WHERE c.event_row = ?"
        "                 AND c.erased_at IS NULL)",
        (now, event_row, event_row),
    )
    return cur.rowcount


def _sources(conn: sqlite3.Connection) -> list[str]:
    """The distinct sources of the conversions, by jumps through the customer index."""
    found: list[str] = []
    row = conn.execute("SELECT min(source) FROM conversions").fetchone()
    while row[0] is not None:
        found.append(row[0])
        row = conn.execute(
            "SELECT min(source) FROM conversions WHERE source > ?", (row[0],)
        ).fetchone()
    return found


def _by_customer_keys(conn: sqlite3.Connection, keys: list[str]) -> tuple[set[int], set[str]]:
    """Conversions (erased or not) with these customer keys, and the customer ids they name."""
    ids: set[int] = set()
    customers: set[str] = set()
    marks = ",".join("?" * len(keys))
    for source in _sources(conn):
        for cid, key in conn.execute(
            f"SELECT id, customer_key FROM conversions WHERE source = ?"  # noqa: S608
            f" AND customer_key IN ({marks})",
            (source, *keys),
        ):
            ids.add(cid)
            if key.startswith("id:"):
                customers.add(key[3:])
    return ids, customers


def _scan_conversions(
    conn: sqlite3.Connection, email: str, cursor: Any, limit: int
) -> tuple[set[int], set[str], Any]:
    """One chunk of the conversions still holding data, looking for the email."""
    after_at, after_id = cursor or (float("-inf"), 0)
    rows = conn.execute(
        "SELECT id, occurred_at, data FROM conversions WHERE erased_at IS NULL"
        " AND (occurred_at > ? OR (occurred_at = ? AND id > ?))"
        " ORDER BY occurred_at, id LIMIT ?",
        (after_at, after_at, after_id, limit),
    ).fetchall()
    ids: set[int] = set()
    customers: set[str] = set()
    needle = email.encode()
    for cid, _, raw in rows:
        if needle in bytes(raw).lower() and mentions(raw, email):
            ids.add(cid)
            found = Conversion.from_json(raw).customer.id
            if found:
                customers.add(found)
    return ids, customers, ((rows[-1][1], rows[-1][0]) if len(rows) == limit else None)


def _scan_events(
    conn: sqlite3.Connection,
    email: str | None,
    customers: list[str],
    after: int,
    chunk: int,
) -> tuple[set[int], int | None]:
    """One id range of the stored bodies, looking for the email or a customer id."""
    tests, args = [], []
    if email:
        tests.append("instr(lower(CAST(body AS TEXT)), ?) > 0")
        args.append(email)
    for cid in customers:
        tests.append("instr(CAST(body AS TEXT), ?) > 0")
        args.append(f'"{cid}"')
    last = conn.execute("SELECT max(id) FROM events").fetchone()[0] or 0
    found = {
        eid
        for eid, body in conn.execute(
            "SELECT id, body FROM events WHERE id > ? AND id <= ? AND erased_at IS NULL"  # noqa: S608
            " AND (" + " OR ".join(tests) + ")",
            (after, after + chunk, *args),
        )
        if mentions(body, email, customers)
    }
    return found, (after + chunk if after + chunk < last else None)


def _forget_chunk(
    conn: sqlite3.Connection, conversions: list[int], events: list[int], now: float
) -> tuple[Forgotten, set[int], set[int]]:
    """Erase these conversions (and unlink their customer key), fail their pending
    deliveries, erase their events' bodies and these other events' bodies. Returns the
    counts, the other conversions of those events, and the events erased."""
    changed = Forgotten()
    own_events: set[int] = set()
    if conversions:
        marks = ",".join("?" * len(conversions))
        rows = conn.execute(
            f"SELECT id, event_row, data, erased_at, erased_by, customer_key FROM conversions"  # noqa: S608
            f" WHERE id IN ({marks})",
            conversions,
        ).fetchall()
        for cid, event_row, raw, erased_at, erased_by, key in rows:
            own_events.add(event_row)
            if erased_at is not None and erased_by == FORGET and key is None:
                continue
            data = (
                raw
                if erased_at is not None
                else erase_personal(Conversion.from_json(raw)).to_json()
            )
            conn.execute(
                "UPDATE conversions SET data = ?, erased_at = coalesce(erased_at, ?),"
                " erased_by = ?, customer_key = NULL, email_hash = NULL WHERE id = ?",
                (data, now, FORGET, cid),
            )
            changed.conversions += 1
        changed.deliveries = conn.execute(
            f"UPDATE deliveries SET status = 'failed', last_error = ?, lease_until = NULL,"  # noqa: S608
            f" lease_token = NULL, updated_at = ? WHERE status = 'pending'"
            f" AND conversion_id IN ({marks})",
            (ERASED_BY_FORGET, now, *conversions),
        ).rowcount
    targets = sorted(own_events | set(events))
    for eid in targets:
        changed.events += conn.execute(
            "UPDATE events SET body = x'', erased_at = coalesce(erased_at, ?)"
            " WHERE id = ? AND (erased_at IS NULL OR length(body) > 0)",
            (now, eid),
        ).rowcount
    related: set[int] = set()
    if own_events:
        marks = ",".join("?" * len(own_events))
        related = {
            r[0]
            for r in conn.execute(
                f"SELECT id FROM conversions WHERE erased_at IS NULL"  # noqa: S608
                f" AND event_row IN ({marks})",
                sorted(own_events),
            )
        }
    return changed, related, set(targets)


def _truncate_wal(conn: sqlite3.Connection, wait: float) -> bool:
    """PRAGMA wal_checkpoint(TRUNCATE), waiting up to `wait` for other processes' readers."""
    conn.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
    try:
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    finally:
        conn.execute("PRAGMA busy_timeout = 0")
    return busy == 0


def _disable_destination(
    conn: sqlite3.Connection, destination: str, reason: str, fingerprint: str | None, now: float
) -> bool:
    cur = conn.execute(
        "INSERT INTO destination_states (destination, disabled_at, reason, fingerprint)"
        " VALUES (?,?,?,?) ON CONFLICT (destination) DO NOTHING",
        (destination, now, reason, fingerprint),
    )
    return cur.rowcount == 1


def _enable_destination(conn: sqlite3.Connection, destination: str) -> DisabledDestination | None:
    row = conn.execute(
        "DELETE FROM destination_states WHERE destination = ?"
        " RETURNING destination, disabled_at, reason, fingerprint",
        (destination,),
    ).fetchone()
    return None if row is None else DisabledDestination(*row)


def _disabled_destinations(conn: sqlite3.Connection) -> dict[str, DisabledDestination]:
    return {
        row[0]: DisabledDestination(*row)
        for row in conn.execute(
            "SELECT destination, disabled_at, reason, fingerprint FROM destination_states"
        )
    }


def _rate_block(conn: sqlite3.Connection, key: str, per_minute: int, until: float) -> None:
    # per_minute sends dated 60 s before `until` keep the window full until exactly then
    conn.executemany(
        "INSERT INTO rate_limits (key, sent) VALUES (?, ?)", [(key, until - 60.0)] * per_minute
    )


def _rate_acquire(conn: sqlite3.Connection, key: str, per_minute: int, now: float) -> float:
    """Sliding 60-second log: at most `per_minute` sends in any 60 s, shared by every process."""
    conn.execute("DELETE FROM rate_limits WHERE key = ? AND sent <= ?", (key, now - 60.0))
    count, oldest = conn.execute(
        "SELECT count(*), min(sent) FROM rate_limits WHERE key = ?", (key,)
    ).fetchone()
    if count < per_minute:
        conn.execute("INSERT INTO rate_limits (key, sent) VALUES (?, ?)", (key, now))
        return 0.0
    if count > per_minute:  # the limit was lowered: wait for the surplus to age out
        oldest = conn.execute(
            "SELECT sent FROM rate_limits WHERE key = ? ORDER BY sent LIMIT 1 OFFSET ?",
            (key, count - per_minute),
        ).fetchone()[0]
    return max(0.001, oldest + 60.0 - now)


# ---------------------------------------------------------------- submissions (SCHEMA_SUBMISSIONS)


def _count(
    conn: sqlite3.Connection, destination: str, outcome: str, error_type: str, reason: str, n: int
) -> None:
    conn.execute(
        "INSERT INTO submission_counts (destination, outcome, error_type, reason, n)"
        " VALUES (?,?,?,?,?) ON CONFLICT (destination, outcome, error_type, reason)"
        " DO UPDATE SET n = n + excluded.n",
        (destination, outcome, error_type, reason, n),
    )


def _follow(
    conn: sqlite3.Connection, delivery_id: int, destination: str, f: FollowUp, now: float
) -> None:
    """Start following a delivery's submission (it replaces an earlier one), or forget the
    earlier one when this answer gave nothing to follow."""
    old = conn.execute(
        "SELECT state FROM submissions WHERE delivery_id = ?", (delivery_id,)
    ).fetchone()
    was_following = old is not None and old[0] == FOLLOWING
    if f.uri is None:
        if old is not None:
            conn.execute("DELETE FROM submissions WHERE delivery_id = ?", (delivery_id,))
            if was_following:
                _count(conn, destination, FOLLOWING, "", "", -1)
        return
    conn.execute(
        "INSERT INTO submissions (delivery_id, destination, uri, kind, state, checks, started_at,"
        " next_check_at, detail, updated_at) VALUES (?,?,?,?,?,0,?,?,?,?)"
        " ON CONFLICT (delivery_id) DO UPDATE SET destination = excluded.destination,"
        " uri = excluded.uri, kind = excluded.kind, state = excluded.state, checks = 0,"
        " started_at = excluded.started_at, next_check_at = excluded.next_check_at,"
        " lease_until = NULL, lease_token = NULL, error_type = NULL, error_reason = NULL,"
        " detail = excluded.detail, updated_at = excluded.updated_at",
        (
            delivery_id,
            destination,
            f.uri,
            f.kind,
            FOLLOWING,
            now,
            f.next_check_at,
            "queued; not looked at yet",
            now,
        ),
    )
    if not was_following:
        _count(conn, destination, FOLLOWING, "", "", 1)


def _claim_submissions(
    conn: sqlite3.Connection,
    destinations: tuple[str, ...],
    limit: int,
    lease_seconds: float,
    now: float,
) -> list[SubmissionClaim]:
    token = uuid.uuid4().hex
    marks = ",".join("?" * len(destinations))
    rows = conn.execute(
        f"""
        UPDATE submissions SET lease_until = ?, lease_token = ?
         WHERE id IN (
               SELECT id FROM submissions
                WHERE state = 'following' AND destination IN ({marks})
                  AND next_check_at <= ? AND (lease_until IS NULL OR lease_until < ?)
                ORDER BY next_check_at LIMIT ?)
        RETURNING id, delivery_id, destination, uri, kind, checks, started_at
        """,  # noqa: S608 - only placeholders are interpolated
        (now + lease_seconds, token, *destinations, now, now, limit),
    ).fetchall()
    claims = []
    for sub_id, delivery_id, destination, uri, kind, checks, started in rows:
        found = conn.execute(
            "SELECT c.order_key, d.attempts FROM deliveries d"
            " JOIN conversions c ON c.id = d.conversion_id WHERE d.id = ?",
            (delivery_id,),
        ).fetchone()
        order_key, attempts = found if found else ("", 0)
        claims.append(
            SubmissionClaim(
                sub_id,
                delivery_id,
                destination,
                uri,
                kind,
                checks,
                started,
                token,
                order_key,
                attempts,
            )
        )
    return claims


def _settle_submission(
    conn: sqlite3.Connection, claim: SubmissionClaim, r: SubmissionResult, now: float
) -> bool:
    cur = conn.execute(
        "UPDATE submissions SET state = ?, checks = checks + ?, next_check_at = ?,"
        " lease_until = NULL, lease_token = NULL, error_type = ?, error_reason = ?, detail = ?,"
        " updated_at = ? WHERE id = ? AND lease_token = ? AND state = 'following'",
        (
            r.state,
            1 if r.counted else 0,
            r.next_check_at,
            r.error_type,
            r.error_reason,
            r.detail[:1000],
            now,
            claim.id,
            claim.lease_token,
        ),
    )
    if cur.rowcount == 0:
        return False
    if r.attempt is not None:
        a = r.attempt
        conn.execute(
            "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, outcome,"
            " status_code, detail) VALUES (?,?,?,?,?,?,?)",
            (
                claim.delivery_id,
                claim.attempt,
                a.started_at,
                a.duration_ms,
                a.outcome,
                a.status_code,
                a.detail[:1000],
            ),
        )
    if r.state != FOLLOWING:
        _count(conn, claim.destination, FOLLOWING, "", "", -1)
        _count(
            conn, claim.destination, r.state, r.error_type or "", reason_label(r.error_reason), 1
        )
    if r.state == REJECTED_THERE and r.delivery_error:
        conn.execute(
            "UPDATE deliveries SET status = 'failed', last_error = ?, updated_at = ?"
            " WHERE id = ? AND status = 'delivered'",
            (r.delivery_error[:1000], now, claim.delivery_id),
        )
    return True


def _hold_submissions(conn: sqlite3.Connection, destination: str, until: float) -> int:
    cur = conn.execute(
        "UPDATE submissions SET next_check_at = ? WHERE destination = ? AND state = 'following'"
        " AND next_check_at < ?",
        (until, destination, until),
    )
    return cur.rowcount


def _next_submission_due(conn: sqlite3.Connection, destinations: tuple[str, ...]) -> float | None:
    marks = ",".join("?" * len(destinations))
    row = conn.execute(
        f"SELECT min(max(next_check_at, coalesce(lease_until, 0))) FROM submissions"  # noqa: S608
        f" WHERE state = 'following' AND destination IN ({marks})",
        destinations,
    ).fetchone()
    return row[0]


def _submission_stats(conn: sqlite3.Connection) -> dict[str, Any]:
    following: dict[str, int] = {}
    outcomes: dict[tuple[str, str, str, str], int] = {}
    for dest, outcome, error_type, reason, n in conn.execute(
        "SELECT destination, outcome, error_type, reason, n FROM submission_counts"
    ):
        if outcome == FOLLOWING:
            following[dest] = following.get(dest, 0) + n
        else:
            outcomes[(dest, outcome, error_type, reason)] = n
    return {"following": following, "outcomes": outcomes}


def _refund_target(conn: sqlite3.Connection, conversion_id: int, destination: str) -> RefundTarget:
    row = conn.execute(
        "SELECT source, link_ref FROM conversions WHERE id = ?", (conversion_id,)
    ).fetchone()
    if row is None or row[1] is None:
        return RefundTarget(link=None)
    source, link = row
    target = RefundTarget(link=link)
    purchase = conn.execute(
        "SELECT id, data, created_at FROM conversions WHERE source = ? AND link_ref = ?"
        " AND kind IN ('purchase', 'subscription_renewed') ORDER BY id LIMIT 1",
        (source, link),
    ).fetchone()
    if purchase is not None:
        target.purchase = Conversion.from_json(purchase[1])
        target.purchase_created_at = purchase[2]
        found = conn.execute(
            "SELECT d.status, d.last_error, d.next_attempt_at, s.state, s.next_check_at"
            " FROM deliveries d LEFT JOIN submissions s ON s.delivery_id = d.id"
            " WHERE d.conversion_id = ? AND d.destination = ?",
            (purchase[0], destination),
        ).fetchone()
        if found is not None:
            (
                target.delivery_status,
                target.delivery_error,
                target.next_attempt_at,
                target.confirmation,
                target.next_check_at,
            ) = found
    for cid, data, status, kind, state in conn.execute(
        "SELECT c.id, c.data, d.status, s.kind, s.state FROM conversions c"
        " LEFT JOIN deliveries d ON d.conversion_id = c.id AND d.destination = ?"
        " LEFT JOIN submissions s ON s.delivery_id = d.id"
        " WHERE c.source = ? AND c.link_ref = ? AND c.kind = ? ORDER BY c.id",
        (destination, source, link, REFUND),
    ):
        refund = Conversion.from_json(data)
        target.refunds.append(
            RefundSibling(cid, refund.total, refund.currency, status, kind, state)
        )
    return target


def path_problem(path: str) -> str | None:
    """What is wrong with `path` as the place of a SQLite file, in one line, or None.

    Called once opening failed, to replace SQLite's "unable to open database file" (or
    an errno from creating the directory) with the reason: a parent that is a file, a
    directory that this user may not write or that takes no new files (/proc), …"""
    target = Path(path).absolute()
    if target.is_dir():
        return f"{target} is a directory; name a file in it, e.g. {target / 'relay.db'}"
    for parent in reversed(target.parents):
        if parent.exists() and not parent.is_dir():
            return f"{parent} is a file, not a directory"
        if not parent.exists():
            above = parent.parent
            if not os.access(above, os.W_OK | os.X_OK):
                return f"{parent} does not exist and {above} is not writable by this user"
            return None  # it would be created; the error was something else
    directory = target.parent
    if os.statvfs(directory).f_flag & os.ST_RDONLY:
        return f"{directory} is on a read-only file system"
    if target.exists():
        if not os.access(target, os.R_OK | os.W_OK):
            return f"{target} is not readable and writable by this user"
        if not os.access(directory, os.W_OK | os.X_OK):
            return f"{directory} is not writable by this user (SQLite keeps its -wal file there)"
        return None
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{directory} is not writable by this user"
    probe = directory / f".relay-probe-{uuid.uuid4().hex}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as exc:
        if exc.errno == errno.ENOENT:  # the directory exists: it refuses new entries
            return f"{directory} takes no new files (a virtual file system?)"
        return f"no file can be created in {directory} ({exc.strerror})"
    os.unlink(probe)
    return None


# ---------------------------------------------------------------- reconcile

_STATE_COLUMNS = (
    "source, mark, last_run_at, last_success_at, last_error, last_error_at, runs, failures,"
    " lease_owner, lease_until"
)


def _reconcile_lease(
    conn: sqlite3.Connection, source: str, owner: str, now: float, until: float
) -> ReconcileState | None:
    row = conn.execute(
        "INSERT INTO reconcile_state (source, last_run_at, lease_owner, lease_until)"
        " VALUES (?, ?, ?, ?)"
        " ON CONFLICT (source) DO UPDATE SET last_run_at = excluded.last_run_at,"
        " lease_owner = excluded.lease_owner, lease_until = excluded.lease_until"
        " WHERE reconcile_state.lease_owner IS NULL OR reconcile_state.lease_owner = ?"
        " OR reconcile_state.lease_until IS NULL OR reconcile_state.lease_until < ?"
        " RETURNING source, mark, last_run_at, last_success_at, last_error, last_error_at, runs,"
        " failures, lease_owner, lease_until",
        (source, now, owner, until, owner, now),
    ).fetchone()
    return None if row is None else ReconcileState(*row)


def _reconcile_progress(
    conn: sqlite3.Connection, source: str, owner: str, mark: float | None, until: float
) -> bool:
    cur = conn.execute(
        "UPDATE reconcile_state SET mark = max(coalesce(mark, ?), coalesce(?, mark)),"
        " lease_until = ? WHERE source = ? AND lease_owner = ?",
        (mark, mark, until, source, owner),
    )
    return cur.rowcount > 0


def _reconcile_done(
    conn: sqlite3.Connection,
    source: str,
    owner: str,
    now: float,
    mark: float | None,
    error: str | None,
) -> None:
    if error is None:
        conn.execute(
            "UPDATE reconcile_state SET mark = max(coalesce(mark, ?), coalesce(?, mark)),"
            " last_success_at = ?, runs = runs + 1, lease_owner = NULL, lease_until = NULL"
            " WHERE source = ? AND lease_owner = ?",
            (mark, mark, now, source, owner),
        )
    else:
        conn.execute(
            "UPDATE reconcile_state SET last_error = ?, last_error_at = ?, failures = failures + 1,"
            " lease_owner = NULL, lease_until = NULL WHERE source = ? AND lease_owner = ?",
            (error[:1000], now, source, owner),
        )


def _reconcile_states(conn: sqlite3.Connection) -> list[ReconcileState]:
    return [
        ReconcileState(*row)
        for row in conn.execute(
            f"SELECT {_STATE_COLUMNS} FROM reconcile_state ORDER BY source"  # noqa: S608
        )
    ]


def _existing(
    conn: sqlite3.Connection, source: str, keys: tuple[tuple[str, str], ...]
) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for kind, order_key in keys:
        row = conn.execute(
            "SELECT 1 FROM conversions WHERE source = ? AND kind = ? AND order_key = ?",
            (source, kind, order_key),
        ).fetchone()
        if row is not None:
            found.add((kind, order_key))
    return found
