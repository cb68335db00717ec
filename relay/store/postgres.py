"""PostgreSQL backend: many `serve` and `worker` processes on many machines, one ledger.

Driver: psycopg 3 with psycopg_pool.AsyncConnectionPool. One well-kept driver gives
us an asyncio connection pool, LISTEN/NOTIFY (`AsyncConnection.notifies()`) and
COPY, ships binary wheels (no compiler, no libpq on the host), and speaks
server-side parameters natively — no second driver for the listener.

- Schema: `postgres.sql`, applied by `open()` (and so by `relay migrate`) in one
  transaction under `pg_advisory_xact_lock`, so processes starting together
  serialize instead of racing on CREATE TABLE.
- `record()`: group commit, as in the SQLite store. Calls are queued; a runner takes
  all those waiting (up to MAX_BATCH) and records them in one transaction on one pooled
  connection with one commit and one `pg_notify` (so idle workers in other processes
  wake at once; delivered on commit); each caller is answered only after that commit.
  Up to BATCH_CONCURRENCY batches run at once. A batch is set-based: multi-row
  `INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING RETURNING` for events and for
  conversions (+ their deliveries in the same statement), sent in pipeline mode: two
  round trips per batch, not ~5 per webhook. New-customer derivation and cumulative
  refunds are decided in Python from what the ledger holds plus the batch's earlier
  calls, so a batch gives the same answers as its calls recorded one after the other.
  Any failure but a lost connection redoes the batch call by call, each in a savepoint
  (one bad call fails alone); a lost transaction fails every call of the batch.
  Deadlocks between batches of several processes are avoided by one lock order: the
  advisory locks of all cumulative refunds of the batch first (sorted by lock key), then
  event rows (sorted), then conversion rows (sorted).
- `claim()`: one statement, `UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED LIMIT n)
  RETURNING …`: concurrent workers never get the same row. The lease ends by time;
  a claim taken over from a dead worker is flagged `recovered` (computed from the
  old `lease_token` in the same UPDATE).
- `watch()`: a dedicated LISTEN connection in a background task; it reconnects
  with backoff by itself and wakes the worker after each reconnect (notifications
  sent while it was away are lost; polling is the safety net).
- `rate_acquire()`: a sliding log in PostgreSQL behind a per-key advisory lock
  (`relay_rate_acquire()` in the schema): one limit for all workers together.
- `stats()` (/metrics): counts kept by triggers in `delivery_counts`, one row per
  (destination, status, connection): the shard is `pg_backend_pid()`, so two transactions
  never update the same counter row (a backend runs one at a time) and concurrent
  workers never wait on each other for it; `compact()` folds the shards into shard 0.
  The oldest pending age is one index probe per destination.
- `retain()` / `forget()`: short transactions; retention takes a try-advisory lock per
  batch, so with several processes one works and the others skip.
- PostgreSQL unavailable: every method raises StoreError (webhooks answer 503,
  /healthz 503). The pool validates connections on checkout and reconnects in the
  background, so service resumes without a restart once the server is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from relay import refunds
from relay.conversion import KINDS, REFUND, REVENUE_KINDS, Conversion
from relay.errors import StoreError
from relay.settings import mask_url
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
ERASURE_VERSION = 5  # the step adding maintained delivery counts and erasure (_ERASURE_STEP)
SCHEMA_SUBMISSIONS = 7  # the version whose link_ref is filled in for older rows (renumber here)
CHANNEL = "relay_deliveries"
MIGRATE_LOCK = 726500  # pg_advisory_xact_lock key for schema changes
RETENTION_LOCK = 726502  # pg_try_advisory_xact_lock key: one retention batch at a time
COMPACT_LOCK = 726503  # pg_try_advisory_xact_lock key: one fold of the counter shards at a time
POOL_MIN = 1
POOL_MAX = 10
CHECKOUT_TIMEOUT = 5.0  # seconds a caller waits for a connection before StoreError
CONNECT_OPTIONS = {
    "connect_timeout": "5",
    "application_name": "relay",
    # a dead peer is noticed in ~20 s even on an idle LISTEN connection
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "2",
}
LISTEN_HEALTH_SECONDS = 30.0  # the listener checks its connection this often when idle
LISTEN_BACKOFF = (0.2, 10.0)  # first and longest wait between listener reconnects
MAX_BATCH = 256  # record() calls sharing one transaction and one commit
MAX_QUEUED = 20_000  # record() calls waiting beyond this are refused at once (503)
RECORD_DEADLINE = 30.0  # seconds a caller waits for its batch before giving up (503)
LOCK_TIMEOUT = "5s"  # a lock held elsewhere longer than this fails the call, not the batch
BATCH_CONCURRENCY = 2  # batches in flight at once per store (each on its own connection)


@dataclass(slots=True)
class _Call:
    event: EventRecord
    conversions: Sequence[Conversion]
    destinations_for: Callable[[Conversion], Sequence[str]]
    fut: asyncio.Future[Recorded]


# The group-commit statements (see PostgresStore._record_batch). Rows go in sorted by key:
# every batch takes its row locks in the same order, so two batches cannot deadlock.
# Advisory locks of every cumulative refund of a batch, in the order of their keys: volatile
# functions in the select list are evaluated after the sort.
_LOCK_SQL = (
    "SELECT pg_advisory_xact_lock(k) FROM"
    " (SELECT DISTINCT k FROM unnest(%b::bigint[]) AS k) AS keys ORDER BY k"
)


def lock_key(source: str, prefix: str) -> int:
    """The advisory-lock key of one refunded object: a stable signed 64-bit hash computed
    here, so no text the processor sent ever reaches the lock statement."""
    digest = hashlib.blake2b(f"{source}:{prefix}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def _fill_link_refs(conn: psycopg.AsyncConnection[Any]) -> None:
    """SCHEMA_SUBMISSIONS: the link of every purchase, renewal and refund recorded before it, read
    from the stored conversion by the same rule as new rows (relay/refunds.py)."""
    after = 0
    while True:
        cur = await conn.execute(
            "SELECT id, data FROM conversions WHERE id > %s AND link_ref IS NULL"
            " AND kind IN ('purchase', 'subscription_renewed', 'refund') ORDER BY id LIMIT 5000",
            (after,),
        )
        rows = await cur.fetchall()
        if not rows:
            return
        after = rows[-1][0]
        links = [(refunds.link_ref(Conversion.from_json(bytes(d))), i) for i, d in rows]
        links = [x for x in links if x[0]]
        if links:
            await conn.execute(
                "UPDATE conversions c SET link_ref = t.link FROM unnest(%s::text[], %s::bigint[])"
                " AS t (link, id) WHERE c.id = t.id",
                ([x[0] for x in links], [x[1] for x in links]),
            )


_MEMORY_SQL = (
    "SELECT t.source, t.customer_key, m.attribution"
    " FROM unnest(%b::text[], %b::text[]) AS t (source, customer_key)"
    " JOIN attribution_memory m USING (source, customer_key)"
)
# Remembered ids (sorted by key; one row per key per batch) and memories put to use.
# (source, customer key, ids, recorded at, the conversion time: seen_at, see sqlite's
# _remember)
_REMEMBER_INSERT = (
    "INSERT INTO attribution_memory (source, customer_key, attribution, created_at, updated_at,"
    " seen_at) SELECT t.source, t.key, t.ids, t.at, t.at, t.seen FROM unnest(%b::text[],"
    " %b::text[], %b::bytea[], %b::float8[], %b::float8[]) AS t (source, key, ids, at, seen)"
    " ON CONFLICT (source, customer_key) "
)
_REMEMBER_SQL = {
    "first": _REMEMBER_INSERT + "DO NOTHING",
    "last": _REMEMBER_INSERT + "DO UPDATE SET attribution = excluded.attribution,"
    " updated_at = excluded.updated_at,"
    " seen_at = greatest(attribution_memory.seen_at, excluded.seen_at)",
}
_MEMORY_USED_SQL = (
    "UPDATE attribution_memory m SET seen_at = greatest(m.seen_at, t.seen)"
    " FROM unnest(%b::text[], %b::text[], %b::float8[]) AS t (source, customer_key, seen)"
    " WHERE m.source = t.source AND m.customer_key = t.customer_key"
)

_EVENTS_SQL = (
    "INSERT INTO events (source, event_id, event_type, received_at, body, status, reason)"
    " SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::float8[], %b::bytea[],"
    " %b::text[], %b::text[])"
    " ON CONFLICT (source, event_id) DO NOTHING RETURNING id, source, event_id"
)
_CUSTOMERS_SQL = (
    "SELECT DISTINCT c.source, c.customer_key"
    " FROM unnest(%b::text[], %b::text[]) AS t (source, customer_key)"
    " JOIN conversions c ON c.source = t.source AND c.customer_key = t.customer_key"
    " WHERE c.kind IN ('purchase', 'subscription_renewed')"
)
_EXISTING_SQL = (
    "SELECT c.source, c.kind, c.order_key"
    " FROM unnest(%b::text[], %b::text[], %b::text[]) AS t (source, kind, order_key)"
    " JOIN conversions c USING (source, kind, order_key)"
)
_EARLIER_SQL = (
    "SELECT t.source, t.prefix, c.data FROM unnest(%b::text[], %b::text[]) AS t (source, prefix)"
    " JOIN conversions c ON c.source = t.source AND c.kind = 'refund'"
    " AND starts_with(c.order_key, t.prefix)"
)
# Conversions (deduped by ON CONFLICT), the deliveries of those really inserted, and one
# pg_notify when there is any: one statement.
_CONVERSIONS_SQL = """
WITH ins AS (
    INSERT INTO conversions (source, kind, order_key, event_row, customer_key, occurred_at,
                             created_at, data, link_ref, email_hash)
    SELECT * FROM unnest(%(source)b::text[], %(kind)b::text[], %(order_key)b::text[],
                         %(event_row)b::bigint[], %(customer_key)b::text[],
                         %(occurred_at)b::float8[], %(created_at)b::float8[], %(data)b::bytea[],
                         %(link_ref)b::text[], %(email_hash)b::text[])
    ON CONFLICT (source, kind, order_key) DO NOTHING
    RETURNING id, source, kind, order_key
), dl AS (
    INSERT INTO deliveries (conversion_id, destination, status, next_attempt_at, created_at,
                            updated_at)
    SELECT ins.id, t.destination, %(status)s, t.at, t.at, t.at
      FROM unnest(%(d_source)b::text[], %(d_kind)b::text[], %(d_order_key)b::text[],
                  %(d_destination)b::text[], %(d_at)b::float8[])
           AS t (source, kind, order_key, destination, at)
      JOIN ins USING (source, kind, order_key)
    RETURNING 1
), note AS (
    SELECT pg_notify(%(channel)s, '') FROM (SELECT 1 FROM dl LIMIT 1) AS any_delivery
)
SELECT id, source, kind, order_key, (SELECT count(*) FROM note) FROM ins
"""


async def _hash_existing_emails(conn: psycopg.AsyncConnection[Any]) -> None:
    """Schema 8: the email hash of every conversion recorded before conversions carried
    one, computed with the same Python as new rows get (`stored_email_hash`)."""
    after = 0
    while True:
        cur = await conn.execute(
            "SELECT id, data FROM conversions WHERE id > %s ORDER BY id LIMIT 1000", (after,)
        )
        rows = await cur.fetchall()
        if not rows:
            return
        after = rows[-1][0]
        pairs = [(row_id, stored_email_hash(bytes(data))) for row_id, data in rows]
        pairs = [(row_id, hashed) for row_id, hashed in pairs if hashed is not None]
        if pairs:
            await conn.execute(
                "UPDATE conversions c SET email_hash = t.hash"
                " FROM unnest(%s::bigint[], %s::text[]) AS t (id, hash) WHERE c.id = t.id",
                ([p[0] for p in pairs], [p[1] for p in pairs]),
            )


_DELIVERY_COLUMNS = sql.SQL(
    "d.id, d.destination, d.status, d.attempts,"
    " CASE WHEN d.status = 'pending' THEN d.next_attempt_at END,"
    " d.last_status_code, d.last_error, c.source, c.kind, c.order_key,"
    " d.created_at, d.updated_at, c.erased_by,"
    " CASE WHEN d.status <> 'pending' THEN s.state END,"
    " CASE WHEN d.status <> 'pending' THEN s.detail END, d.conversion_id"
)


def delivery_page_sql(
    statuses: Sequence[str],
    destinations: Sequence[str],
    source: str | None,
    since: float | None,
    until: float | None,
    before: tuple[float, int] | None,
    limit: int,
) -> tuple[sql.Composed, list[Any]]:
    """The statement of `delivery_page`: one walk down deliveries_status_age (status,
    destination, created_at) per (status, destination) pair, merged (a Merge Append).
    Each pair is its own branch with its own values, so the planner estimates each from
    the table's statistics; over an array of pairs (a LATERAL join) it could not see
    them. The keyset position is `created_at <= t` (an index range the statistics
    estimate well) and the tie on t broken by id; the first page has none."""
    before, until = upper_bound(before, until)
    where = [sql.SQL("d.status = %s AND d.destination = %s")]
    args: list[Any] = []
    if before is not None:
        where.append(sql.SQL("d.created_at <= %s AND (d.created_at < %s OR d.id < %s)"))
        args.extend((before[0], before[0], before[1]))
    if since is not None:
        where.append(sql.SQL("d.created_at >= %s"))
        args.append(since)
    if until is not None:
        where.append(sql.SQL("d.created_at < %s"))
        args.append(until)
    if source:
        where.append(sql.SQL("c.source = %s"))
        args.append(source)
    branch = sql.SQL(
        "(SELECT {columns} FROM deliveries d JOIN conversions c ON c.id = d.conversion_id"
        " LEFT JOIN submissions s ON s.delivery_id = d.id"
        " WHERE {where} ORDER BY d.created_at DESC, d.id DESC LIMIT %s)"
    ).format(columns=_DELIVERY_COLUMNS, where=sql.SQL(" AND ").join(where))
    pairs = [(s, d) for s in statuses for d in destinations]
    query = sql.SQL(
        "SELECT * FROM ({branches}) x ORDER BY x.created_at DESC, x.id DESC LIMIT %s"
    ).format(branches=sql.SQL(" UNION ALL ").join([branch] * len(pairs)))
    values = [v for s, d in pairs for v in (s, d, *args, limit)]
    return query, [*values, limit]


def _stored_conversion(row: Sequence[Any]) -> StoredConversion:
    return StoredConversion(
        int(row[0]), int(row[1]), float(row[2]), Conversion.from_json(bytes(row[3])), row[4]
    )


_STATE_COLUMNS = (
    "source, mark, last_run_at, last_success_at, last_error, last_error_at, runs, failures,"
    " lease_owner, lease_until"
)


# Version 5 (ERASURE_VERSION), run once under the migration lock, in its transaction:
# delivery counts kept exact by statement-level triggers with transition tables (a batch
# of 256 new deliveries, or `relay retry --failed` requeueing 100k, is one aggregated
# upsert; a row-level trigger would update the same counter row once per row, and each
# such update in one transaction walks the versions the earlier ones left: quadratic),
# sharded by backend; the oldest pending age from an index; erasure marks and the
# indexes retention walks. CREATE TRIGGER locks `deliveries` against writes until
# COMMIT, so the counts built at the end are exact even with other processes running.
_ERASURE_STEP = """
ALTER TABLE events ADD COLUMN IF NOT EXISTS erased_at double precision;
ALTER TABLE conversions ADD COLUMN IF NOT EXISTS erased_at double precision;
ALTER TABLE conversions ADD COLUMN IF NOT EXISTS erased_by text;

CREATE TABLE IF NOT EXISTS delivery_counts (
    destination text    NOT NULL,
    status      text    NOT NULL,
    shard       integer NOT NULL,  -- pg_backend_pid() of the writer; 0: folded by compact()
    n           bigint  NOT NULL,
    PRIMARY KEY (destination, status, shard)
);

CREATE OR REPLACE FUNCTION relay_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO delivery_counts (destination, status, shard, n)
    SELECT destination, status, pg_backend_pid(), count(*) FROM relay_new
     GROUP BY destination, status ORDER BY destination, status
    ON CONFLICT (destination, status, shard) DO UPDATE SET n = delivery_counts.n + EXCLUDED.n;
    RETURN NULL;
END;
$$;
CREATE OR REPLACE FUNCTION relay_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO delivery_counts (destination, status, shard, n)
    SELECT destination, status, pg_backend_pid(), -count(*) FROM relay_old
     GROUP BY destination, status ORDER BY destination, status
    ON CONFLICT (destination, status, shard) DO UPDATE SET n = delivery_counts.n + EXCLUDED.n;
    RETURN NULL;
END;
$$;
CREATE OR REPLACE FUNCTION relay_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- claims, lease extensions and send marks change no status: done (~10 us, not ~30)
    IF NOT EXISTS (SELECT 1 FROM relay_old o JOIN relay_new w USING (id)
                    WHERE o.status IS DISTINCT FROM w.status
                       OR o.destination IS DISTINCT FROM w.destination) THEN
        RETURN NULL;
    END IF;
    INSERT INTO delivery_counts (destination, status, shard, n)
    SELECT v.destination, v.status, pg_backend_pid(), sum(v.n)
      FROM relay_old o JOIN relay_new w USING (id),
           LATERAL (VALUES (o.destination, o.status, -1), (w.destination, w.status, 1))
               AS v (destination, status, n)
     WHERE o.status IS DISTINCT FROM w.status OR o.destination IS DISTINCT FROM w.destination
     GROUP BY v.destination, v.status HAVING sum(v.n) <> 0
     ORDER BY v.destination, v.status
    ON CONFLICT (destination, status, shard) DO UPDATE SET n = delivery_counts.n + EXCLUDED.n;
    RETURN NULL;
END;
$$;
CREATE OR REPLACE FUNCTION relay_count_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM delivery_counts;
    RETURN NULL;
END;
$$;
DROP TRIGGER IF EXISTS deliveries_count_insert ON deliveries;
CREATE TRIGGER deliveries_count_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS relay_new FOR EACH STATEMENT EXECUTE FUNCTION relay_count_inserted();
DROP TRIGGER IF EXISTS deliveries_count_update ON deliveries;
CREATE TRIGGER deliveries_count_update AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS relay_old NEW TABLE AS relay_new
    FOR EACH STATEMENT EXECUTE FUNCTION relay_count_updated();
DROP TRIGGER IF EXISTS deliveries_count_delete ON deliveries;
CREATE TRIGGER deliveries_count_delete AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS relay_old FOR EACH STATEMENT EXECUTE FUNCTION relay_count_deleted();
DROP TRIGGER IF EXISTS deliveries_count_truncate ON deliveries;
CREATE TRIGGER deliveries_count_truncate AFTER TRUNCATE ON deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION relay_count_truncated();

-- replaces deliveries_status (status, destination): the same lookups, plus the oldest
-- pending delivery of a destination in O(log n), with no extra index to write
CREATE INDEX IF NOT EXISTS deliveries_status_age ON deliveries (status, destination, created_at);
DROP INDEX IF EXISTS deliveries_status;
-- retention walks the conversions not erased yet by conversion time; forget and retention
-- find an event's other conversions. Both shrink as rows are erased.
CREATE INDEX IF NOT EXISTS conversions_retention ON conversions (occurred_at, id)
    WHERE erased_at IS NULL;
CREATE INDEX IF NOT EXISTS conversions_event ON conversions (event_row) WHERE erased_at IS NULL;
-- how far retention's walk over the events has come (events without conversions)
CREATE TABLE IF NOT EXISTS retention_state (key text PRIMARY KEY, value double precision NOT NULL);

DELETE FROM delivery_counts;
INSERT INTO delivery_counts (destination, status, shard, n)
SELECT destination, status, 0, count(*) FROM deliveries GROUP BY destination, status;
"""

_COMPACT_SQL = """
WITH moved AS (
    DELETE FROM delivery_counts d
     USING (SELECT destination, status, shard FROM delivery_counts WHERE shard <> 0
               FOR UPDATE SKIP LOCKED) AS s
     WHERE d.destination = s.destination AND d.status = s.status AND d.shard = s.shard
    RETURNING d.destination, d.status, d.n
)
INSERT INTO delivery_counts (destination, status, shard, n)
SELECT destination, status, 0, sum(n) FROM moved GROUP BY destination, status
 ORDER BY destination, status
ON CONFLICT (destination, status, shard) DO UPDATE SET n = delivery_counts.n + EXCLUDED.n
"""


class PostgresStore(Store):
    def __init__(self, url: str, *, pool_max: int = POOL_MAX) -> None:
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://") :]
        self.url = url
        params = conninfo_to_dict(url)
        self._secret = str(params.get("password") or "")
        defaults = {k: v for k, v in CONNECT_OPTIONS.items() if k not in params}
        self._conninfo = make_conninfo(url, **defaults)
        self._pool_max = pool_max
        self._pool: AsyncConnectionPool | None = None
        self._listeners: set[asyncio.Task[None]] = set()
        self._closed = False
        self._pending: list[_Call] = []
        self._kick: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ plumbing

    def _error(self, what: str, exc: BaseException) -> StoreError:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self._secret:
            text = text.replace(self._secret, "********")
        return StoreError(f"PostgreSQL {what}: {text}"[:300])

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = AsyncConnectionPool(
            self._conninfo,
            min_size=POOL_MIN,
            max_size=self._pool_max,
            kwargs={"autocommit": True},
            check=AsyncConnectionPool.check_connection,
            timeout=CHECKOUT_TIMEOUT,
            # give up on a slot after ~15 s of backed-off attempts: the next caller grows the
            # pool again from a 1 s delay, so a long outage does not mean a long recovery
            reconnect_timeout=10.0,
            open=False,
            name="relay",
        )
        try:
            # A direct connection first: fails fast, with the server's own reason.
            async with await psycopg.AsyncConnection.connect(self._conninfo) as conn:
                await self._migrate(conn)
            await pool.open(wait=True, timeout=10.0)
        except Exception as exc:
            await pool.close()
            if isinstance(exc, StoreError):
                raise
            raise self._error(f"unavailable at {mask_url(self.url)}", exc) from None
        self._pool = pool
        self._closed = False
        self._kick = asyncio.Event()
        self._runner = asyncio.create_task(self._run(), name="relay-pg-record")

    async def _migrate(self, conn: psycopg.AsyncConnection[Any]) -> None:
        schema = resources.files("relay.store").joinpath("postgres.sql").read_text()
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            cur = await conn.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
                " AND table_name = 'conversions' AND column_name = 'email_hash'"
            )
            had_email_hash = await cur.fetchone() is not None
            await conn.execute(schema.encode())  # no parameters: one multi-statement script
            if not had_email_hash:  # schema 8, once, in the transaction that added the column
                await _hash_existing_emails(conn)
            cur = await conn.execute("SELECT max(version) FROM schema_version")
            row = await cur.fetchone()
            current = row[0] if row else None
            if current is not None and current > SCHEMA_VERSION:  # rolls the script back
                raise StoreError(
                    f"database schema {current} is newer than this relay ({SCHEMA_VERSION})"
                )
            if current is None or current < ERASURE_VERSION:
                await conn.execute(_ERASURE_STEP.encode())
            if current is not None and current < SCHEMA_SUBMISSIONS:
                await _fill_link_refs(conn)
            if current != SCHEMA_VERSION:  # created, or upgraded by the idempotent script
                await conn.execute("DELETE FROM schema_version")
                await conn.execute("INSERT INTO schema_version VALUES (%s)", (SCHEMA_VERSION,))

    async def close(self) -> None:
        self._closed = True
        if self._runner is not None:  # answers what is queued, then stops
            assert self._kick is not None
            self._kick.set()
            with contextlib.suppress(Exception):
                # Shielded: a cancelled closer does not cut a batch off mid-commit.
                await asyncio.shield(self._runner)
            self._runner = None
        for task in list(self._listeners):
            task.cancel()
        for task in list(self._listeners):
            with contextlib.suppress(BaseException):
                await task
        self._listeners.clear()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @contextlib.asynccontextmanager
    async def _conn(self, what: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection (autocommit); any driver failure becomes StoreError."""
        if self._pool is None:
            raise StoreError("store is not open")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except StoreError:
            raise
        except (psycopg.Error, OSError) as exc:
            raise self._error(what, exc) from None

    # ------------------------------------------------------------ interface

    async def ping(self) -> None:
        async with self._conn("unavailable") as conn:
            cur = await conn.execute(
                "SELECT pg_is_in_recovery(), (SELECT version FROM schema_version LIMIT 1)"
            )
            row = await cur.fetchone()
        if row is None or row[0]:
            raise StoreError("PostgreSQL is read-only (a standby): cannot take writes")

    async def record(
        self,
        event: EventRecord,
        conversions: Sequence[Conversion],
        destinations_for: Callable[[Conversion], Sequence[str]],
    ) -> Recorded:
        """Queued for the group-commit runner: answered once the batch's commit is done."""
        if self._pool is None or self._closed or self._runner is None or self._runner.done():
            raise StoreError("store is not open")
        assert self._kick is not None
        if len(self._pending) >= MAX_QUEUED:
            raise StoreError("PostgreSQL is not keeping up: too many webhooks waiting")
        fut: asyncio.Future[Recorded] = asyncio.get_running_loop().create_future()
        self._pending.append(_Call(event, conversions, destinations_for, fut))
        self._kick.set()
        try:
            # Shielded: the batch may still commit it; the processor's retry is then a duplicate.
            return await asyncio.wait_for(asyncio.shield(fut), RECORD_DEADLINE)
        except TimeoutError:
            raise StoreError(
                f"PostgreSQL did not record the webhook within {RECORD_DEADLINE:.0f} s"
            ) from None

    # ------------------------------------------------------------ group commit

    async def _run(self) -> None:
        """Take every call waiting, up to MAX_BATCH, and record them in one transaction;
        up to BATCH_CONCURRENCY batches at once (each on its own pooled connection)."""
        assert self._kick is not None
        running: set[asyncio.Task[None]] = set()
        try:
            await self._batches(running)
        finally:  # stopped or cancelled: no queued caller is left waiting
            pending, self._pending = self._pending, []
            for call in pending:
                if not call.fut.done():
                    call.fut.set_exception(StoreError("store is closing"))
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    async def _batches(self, running: set[asyncio.Task[None]]) -> None:
        assert self._kick is not None
        while True:
            if not self._pending or len(running) >= BATCH_CONCURRENCY:
                if not self._pending and self._closed:
                    break
                self._kick.clear()
                await self._kick.wait()
                continue
            batch = self._pending[:MAX_BATCH]
            del self._pending[:MAX_BATCH]
            task = asyncio.create_task(self._run_batch(batch), name="relay-pg-batch")
            running.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(lambda _: self._kick.set() if self._kick else None)
            await asyncio.sleep(0)  # let the batch start before taking the next one

    async def _run_batch(self, batch: list[_Call]) -> None:
        """Record a batch in one transaction, one commit, then answer every caller.

        Fast path: set-based statements in two pipelined round trips. If it fails for any
        reason other than a lost connection, the batch is redone call by call, each in its
        own savepoint, so that one bad call fails alone. If the transaction itself is lost
        (connection gone, commit failed), every caller of the batch gets StoreError:
        nothing of theirs is known to be durable."""
        batch = [call for call in batch if not call.fut.done()]  # callers that gave up
        if not batch:
            return
        results: list[Recorded | BaseException]
        try:
            async with self._conn("record failed") as conn:
                try:
                    results = list(await self._record_batch(conn, batch))
                except Exception as exc:
                    if conn.closed or conn.broken:
                        raise
                    log.warning(
                        "store: a batch of %d records failed (%s); redoing it call by call",
                        len(batch),
                        self._error("record failed", exc),
                    )
                    results = await self._record_guarded(conn, batch)
        except Exception as exc:
            err = exc if isinstance(exc, StoreError) else self._error("record failed", exc)
            log.error("store: a batch of %d records failed: %s", len(batch), err)
            results = [StoreError(str(err)) for _ in batch]
        except BaseException:  # cancelled (shutdown): never leave a caller hanging
            for call in batch:
                if not call.fut.done():
                    call.fut.set_exception(StoreError("store is closing"))
            raise
        for call, result in zip(batch, results, strict=True):
            if call.fut.done():
                continue
            if isinstance(result, BaseException):
                call.fut.set_exception(result)
            else:
                call.fut.set_result(result)

    async def _record_batch(
        self, conn: psycopg.AsyncConnection[Any], batch: list[_Call]
    ) -> list[Recorded]:
        """The fast path. Round trip 1: BEGIN, the refund locks, the events (deduped by
        ON CONFLICT), what the new-customer and refund logic must know from the ledger.
        Then, in Python, each call in order exactly as `_record_one` would do it, seeing
        the calls before it in the batch. Round trip 2: conversions (ON CONFLICT), their
        deliveries and pg_notify in one statement, and COMMIT.

        Locks are taken in one global order so that batches of several processes never
        deadlock: the advisory locks of every cumulative refund first (sorted by key),
        then event rows (sorted), then conversion rows (sorted)."""
        objects: set[tuple[str, str]] = set()  # (source, prefix) of each cumulative refund
        all_keys: set[tuple[str, str, str]] = set()  # every conversion's dedupe key
        customers: set[tuple[str, str]] = set()
        memory = self.attribution_memory
        lookups: set[tuple[str, str]] = set()  # (source, customer key) of remembered ids wanted
        for call in batch:
            for conversion in call.conversions:
                all_keys.add((conversion.source, conversion.kind, conversion.order_key))
                if memory_kind(conversion, memory):
                    mkey = customer_key(conversion)
                    if mkey:
                        lookups.add((conversion.source, mkey))
                prefix = refunds.earlier_prefix(conversion)
                if prefix is not None:
                    objects.add((conversion.source, prefix))
                elif conversion.new_customer is None and conversion.kind in REVENUE_KINDS:
                    ckey = customer_key(conversion)
                    if ckey:
                        customers.add((conversion.source, ckey))
        events: dict[tuple[str, str], int] = {}  # (source, event id) -> first call with it
        for i, call in enumerate(batch):
            events.setdefault((call.event.source, call.event.event_id), i)
        event_order = sorted(events)

        async with conn.pipeline(), conn.transaction():
            # A row or object another transaction holds for long must not stall the whole
            # batch: past this the batch is redone call by call and only that call fails.
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            if objects:
                await conn.execute(_LOCK_SQL, ([lock_key(src, prefix) for src, prefix in objects],))
            ev_cur = await conn.execute(
                _EVENTS_SQL,
                (
                    [k[0] for k in event_order],
                    [k[1] for k in event_order],
                    [batch[events[k]].event.event_type for k in event_order],
                    [batch[events[k]].event.received_at for k in event_order],
                    [batch[events[k]].event.body for k in event_order],
                    [batch[events[k]].event.status for k in event_order],
                    [batch[events[k]].event.reason for k in event_order],
                ),
            )
            cust_cur = ex_cur = earlier_cur = mem_cur = None
            if lookups:
                mem_cur = await conn.execute(
                    _MEMORY_SQL, ([k[0] for k in lookups], [k[1] for k in lookups])
                )
            if customers:
                cust_cur = await conn.execute(
                    _CUSTOMERS_SQL, ([c[0] for c in customers], [c[1] for c in customers])
                )
            if all_keys:
                ex_cur = await conn.execute(
                    _EXISTING_SQL,
                    ([k[0] for k in all_keys], [k[1] for k in all_keys], [k[2] for k in all_keys]),
                )
            if objects:
                earlier_cur = await conn.execute(
                    _EARLIER_SQL,
                    ([o[0] for o in objects], [o[1] for o in objects]),
                )
            memories: dict[tuple[str, str], dict[str, str]] = {}
            if mem_cur is not None:
                for src, mkey, attribution in await mem_cur.fetchall():
                    memories[(src, mkey)] = orjson.loads(bytes(attribution))
            remember: dict[tuple[str, str], tuple[dict[str, str], float]] = {}
            used: dict[tuple[str, str], float] = {}
            inserted_events = {(src, eid): row for row, src, eid in await ev_cur.fetchall()}
            known_customers = set(await cust_cur.fetchall()) if cust_cur else set()
            existing = set(await ex_cur.fetchall()) if ex_cur else set()
            earlier: dict[tuple[str, str], list[Decimal]] = {}
            if earlier_cur is not None:
                for src, prefix, data in await earlier_cur.fetchall():
                    total = Conversion.from_json(bytes(data)).total or 0
                    earlier.setdefault((src, prefix), []).append(total)

            # Each call in batch order, as `_record_one` would, the calls before it included.
            outcomes: list[Recorded] = []
            plans: list[list[tuple[Conversion, tuple[str, str, str] | None]]] = []
            planned: dict[
                tuple[str, str, str], tuple[int, str | None, Conversion, float, Sequence[str]]
            ] = {}
            for i, call in enumerate(batch):
                event = call.event
                key = (event.source, event.event_id)
                event_row = inserted_events.get(key) if events[key] == i else None
                if event_row is None:
                    outcomes.append(Recorded(duplicate=True))
                    plans.append([])
                    continue
                outcomes.append(Recorded(duplicate=False))
                plan: list[tuple[Conversion, tuple[str, str, str] | None]] = []
                plans.append(plan)
                for conversion in call.conversions:
                    prefix = refunds.earlier_prefix(conversion)
                    if prefix is not None:
                        ckey3 = (conversion.source, conversion.kind, conversion.order_key)
                        delta = None
                        if ckey3 not in existing and ckey3 not in planned:
                            delta = refunds.refund_delta(
                                conversion, earlier.get((conversion.source, prefix), [])
                            )
                        if delta is None:
                            plan.append((conversion, None))
                            continue
                        conversion = delta
                    ckey = customer_key(conversion)
                    if (
                        conversion.new_customer is None
                        and conversion.kind in REVENUE_KINDS
                        and ckey
                    ):
                        prior = (conversion.source, ckey) in known_customers
                        conversion = conversion.replace(new_customer=not prior)
                    if ckey and memory_kind(conversion, memory):
                        conversion = remembered(
                            conversion, memory, memories.get((conversion.source, ckey))
                        )
                    key3 = (conversion.source, conversion.kind, conversion.order_key)
                    if key3 in planned or key3 in existing:  # the ledger or an earlier call has it
                        plan.append((conversion, None))
                        continue
                    if ckey and memory != "off":  # as `_remember` does, batch order kept
                        mkey2 = (conversion.source, ckey)
                        seen = conversion.occurred_at.timestamp()
                        if "attribution_memory" in conversion.refs:
                            used[mkey2] = max(used.get(mkey2, seen), seen)
                        elif conversion.attribution and (memory == "last" or mkey2 not in memories):
                            memories[mkey2] = conversion.attribution
                            remember[mkey2] = (conversion.attribution, event.received_at, seen)
                    if conversion.kind in REVENUE_KINDS and ckey:
                        known_customers.add((conversion.source, ckey))
                    if conversion.kind == REFUND and objects:  # later refunds of the object see it
                        for src, prefix in objects:
                            if src == conversion.source and conversion.order_key.startswith(prefix):
                                earlier.setdefault((src, prefix), []).append(
                                    conversion.total or Decimal(0)
                                )
                    planned[key3] = (
                        event_row,
                        ckey,
                        conversion,
                        event.received_at,
                        call.destinations_for(conversion),
                    )
                    plan.append((conversion, key3))

            conv_cur = None
            if planned:
                order = sorted(planned)
                rows = [planned[k] for k in order]
                deliveries = [(k, d, p[3]) for k, p in zip(order, rows, strict=True) for d in p[4]]
                conv_cur = await conn.execute(
                    _CONVERSIONS_SQL,
                    {
                        "source": [k[0] for k in order],
                        "kind": [k[1] for k in order],
                        "order_key": [k[2] for k in order],
                        "event_row": [r[0] for r in rows],
                        "customer_key": [r[1] for r in rows],
                        "occurred_at": [r[2].occurred_at.timestamp() for r in rows],
                        "created_at": [r[3] for r in rows],
                        "data": [r[2].to_json() for r in rows],
                        "link_ref": [refunds.link_ref(r[2]) for r in rows],
                        "email_hash": [email_hash(r[2].customer.email) for r in rows],
                        "d_source": [d[0][0] for d in deliveries],
                        "d_kind": [d[0][1] for d in deliveries],
                        "d_order_key": [d[0][2] for d in deliveries],
                        "d_destination": [d[1] for d in deliveries],
                        "d_at": [d[2] for d in deliveries],
                        "status": PENDING,
                        "channel": CHANNEL,
                    },
                )
            if remember:  # sorted: every batch takes these row locks in one order
                keys = sorted(remember)
                await conn.execute(
                    _REMEMBER_SQL["last" if memory == "last" else "first"],
                    (
                        [k[0] for k in keys],
                        [k[1] for k in keys],
                        [orjson.dumps(remember[k][0]) for k in keys],
                        [remember[k][1] for k in keys],
                        [remember[k][2] for k in keys],
                    ),
                )
            if used:
                keys = sorted(used)
                await conn.execute(
                    _MEMORY_USED_SQL,
                    ([k[0] for k in keys], [k[1] for k in keys], [used[k] for k in keys]),
                )
        # The pipeline's sync is here: the statement above and COMMIT in one round trip.
        # Committed: durable from here on.
        inserted = set()
        if conv_cur is not None:
            inserted = {(src, kind, key) for _, src, kind, key, _ in await conv_cur.fetchall()}

        for result, plan in zip(outcomes, plans, strict=True):
            for conversion, key3 in plan:
                if key3 is None or key3 not in inserted:
                    result.known.append(conversion)
                else:
                    result.conversions.append(conversion)
                    result.deliveries += len(planned[key3][4])
        return outcomes

    async def _record_guarded(
        self, conn: psycopg.AsyncConnection[Any], batch: list[_Call]
    ) -> list[Recorded | BaseException]:
        """The slow path: each call in its own transaction and commit, so one bad call
        fails alone and no lock is held across calls (a batch of another process, taking
        its locks in sorted order, cannot deadlock with us). It is rare: only a batch
        whose fast path failed comes here."""
        results: list[Recorded | BaseException] = []
        for call in batch:
            try:
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                    results.append(
                        await self._record_one(
                            conn, call.event, call.conversions, call.destinations_for
                        )
                    )
            except Exception as exc:
                if conn.closed or conn.broken:
                    raise
                results.append(
                    exc if isinstance(exc, StoreError) else self._error("record failed", exc)
                )
        return results

    async def _record_one(
        self,
        conn: psycopg.AsyncConnection[Any],
        event: EventRecord,
        conversions: Sequence[Conversion],
        destinations_for: Callable[[Conversion], Sequence[str]],
    ) -> Recorded:
        """One call on its own, inside the caller's transaction (or savepoint)."""
        cur = await conn.execute(
            "INSERT INTO events (source, event_id, event_type, received_at, body, status, reason)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (source, event_id) DO NOTHING"
            " RETURNING id",
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
        row = await cur.fetchone()
        if row is None:
            return Recorded(duplicate=True)
        return await self._record_conversions(
            conn, row[0], event.received_at, conversions, destinations_for
        )

    async def _record_conversions(
        self,
        conn: psycopg.AsyncConnection[Any],
        event_row: int,
        now: float,
        conversions: Sequence[Conversion],
        destinations_for: Callable[[Conversion], Sequence[str]],
    ) -> Recorded:
        """The conversions of one event (row `event_row`), deduped, and their deliveries,
        inside the caller's transaction."""
        result = Recorded(duplicate=False)
        rows: list[tuple[int, str]] = []
        for conversion in conversions:
            prefix = refunds.earlier_prefix(conversion)
            if prefix is not None:  # a cumulative refund: record only what is new
                delta = await self._refund_delta(conn, conversion, prefix)
                if delta is None:
                    result.known.append(conversion)
                    continue
                conversion = delta
            ckey = customer_key(conversion)
            if conversion.new_customer is None and conversion.kind in REVENUE_KINDS and ckey:
                cur = await conn.execute(
                    "SELECT 1 FROM conversions WHERE source = %s AND customer_key = %s"
                    " AND kind IN ('purchase', 'subscription_renewed') LIMIT 1",
                    (conversion.source, ckey),
                )
                prior = await cur.fetchone()
                conversion = conversion.replace(new_customer=prior is None)
            memory = self.attribution_memory
            if ckey and memory_kind(conversion, memory):  # one indexed lookup
                cur = await conn.execute(
                    "SELECT attribution FROM attribution_memory"
                    " WHERE source = %s AND customer_key = %s",
                    (conversion.source, ckey),
                )
                known = await cur.fetchone()
                if known is not None:
                    conversion = remembered(conversion, memory, orjson.loads(bytes(known[0])))
            cur = await conn.execute(
                "INSERT INTO conversions (source, kind, order_key, event_row, customer_key,"
                " occurred_at, created_at, data, link_ref, email_hash)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (source, kind, order_key) DO NOTHING RETURNING id",
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
            inserted = await cur.fetchone()
            if inserted is None:
                result.known.append(conversion)
                continue
            if ckey and memory != "off":
                seen = conversion.occurred_at.timestamp()
                if "attribution_memory" in conversion.refs:
                    await conn.execute(_MEMORY_USED_SQL, ([conversion.source], [ckey], [seen]))
                elif conversion.attribution:
                    await conn.execute(
                        _REMEMBER_SQL["last" if memory == "last" else "first"],
                        (
                            [conversion.source],
                            [ckey],
                            [orjson.dumps(conversion.attribution)],
                            [now],
                            [seen],
                        ),
                    )
            result.conversions.append(conversion)
            rows.extend((inserted[0], d) for d in destinations_for(conversion))
        if rows:
            await conn.execute(
                "INSERT INTO deliveries (conversion_id, destination, status, next_attempt_at,"
                " created_at, updated_at)"
                " SELECT c, d, %s, %s, %s, %s FROM unnest(%s::bigint[], %s::text[]) AS t (c, d)",
                (PENDING, now, now, now, [r[0] for r in rows], [r[1] for r in rows]),
            )
            await conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
            result.deliveries = len(rows)
        return result

    async def _refund_delta(
        self, conn: psycopg.AsyncConnection[Any], conversion: Conversion, prefix: str
    ) -> Conversion | None:
        """The refund of this event alone, from the cumulative amount and the refunds of the
        same object already recorded; None when nothing new was refunded. The advisory lock
        keeps two processes from computing a delta for the same object at once."""
        await conn.execute(
            "SELECT pg_advisory_xact_lock(%s)",
            (lock_key(conversion.source, prefix),),
        )
        cur = await conn.execute(
            "SELECT 1 FROM conversions WHERE source = %s AND kind = %s AND order_key = %s",
            (conversion.source, conversion.kind, conversion.order_key),
        )
        if await cur.fetchone() is not None:
            return None
        cur = await conn.execute(
            "SELECT data FROM conversions WHERE source = %s AND kind = 'refund'"
            " AND starts_with(order_key, %s)",
            (conversion.source, prefix),
        )
        earlier = [Conversion.from_json(row[0]).total or 0 for row in await cur.fetchall()]
        return refunds.refund_delta(conversion, earlier)

    async def claim(
        self, destinations: Sequence[str], limit: int, lease_seconds: float, now: float
    ) -> list[Claim]:
        if not destinations or limit <= 0:
            return []
        token = uuid.uuid4().hex
        async with self._conn("claim failed") as conn:
            cur = await conn.execute(
                """
                UPDATE deliveries d
                   SET lease_until = %(until)s, lease_token = %(token)s,
                       attempts = d.attempts + 1, updated_at = %(now)s,
                       recovered = d.lease_token IS NOT NULL,
                       in_doubt = d.lease_token IS NOT NULL
                                  AND d.sent_attempt IS NOT DISTINCT FROM d.attempts
                  FROM (SELECT id FROM deliveries
                         WHERE status = 'pending' AND destination = ANY(%(dests)s)
                           AND next_attempt_at <= %(now)s
                           AND (lease_until IS NULL OR lease_until < %(now)s)
                         ORDER BY next_attempt_at
                         LIMIT %(limit)s
                           FOR UPDATE SKIP LOCKED) due,
                       conversions c
                 WHERE d.id = due.id AND c.id = d.conversion_id
                RETURNING d.id, d.conversion_id, d.destination, d.attempts, d.recovered,
                          d.in_doubt, c.data, c.created_at, c.erased_by
                """,
                {
                    "until": now + lease_seconds,
                    "token": token,
                    "now": now,
                    "dests": list(destinations),
                    "limit": limit,
                },
            )
            rows = await cur.fetchall()
        return [
            Claim(
                delivery_id=delivery_id,
                destination=destination,
                attempt=attempts,
                conversion_id=conversion_id,
                conversion=Conversion.from_json(bytes(data)),
                lease_token=token,
                created_at=created,
                recovered=bool(recovered),
                in_doubt=bool(in_doubt),
                erased=erased,
            )
            for (
                delivery_id,
                conversion_id,
                destination,
                attempts,
                recovered,
                in_doubt,
                data,
                created,
                erased,
            ) in rows
        ]

    async def settle(self, claim: Claim, settlement: Settlement, now: float) -> bool:
        s, a = settlement, settlement.attempt
        params = {
            "status": s.status,
            "next": s.next_attempt_at,
            "spent": 0 if s.count_attempt else 1,
            "code": s.status_code,
            "error": s.error,
            "now": now,
            "id": claim.delivery_id,
            "token": claim.lease_token,
            "has_attempt": a is not None,
            "attempt": claim.attempt,
            "started": a.started_at if a else 0.0,
            "ms": a.duration_ms if a else 0.0,
            "outcome": a.outcome if a else "",
            "a_code": a.status_code if a else None,
            "detail": a.detail[:1000] if a else None,
        }
        follow = s.follow_up if s.status == DELIVERED else None
        async with self._conn("settle failed") as conn, _maybe_transaction(conn, follow):
            cur = await conn.execute(
                """
                WITH settled AS (
                    UPDATE deliveries
                       SET status = %(status)s,
                           next_attempt_at = COALESCE(%(next)s::double precision, next_attempt_at),
                           attempts = attempts - %(spent)s::integer,
                           lease_until = NULL, lease_token = NULL, recovered = false,
                           in_doubt = false,
                           last_status_code = COALESCE(%(code)s::integer, last_status_code),
                           last_error = CASE WHEN %(status)s = 'delivered' THEN NULL
                                             ELSE COALESCE(%(error)s::text, last_error) END,
                           updated_at = %(now)s,
                           delivered_at = CASE WHEN %(status)s = 'delivered' THEN %(now)s
                                               ELSE delivered_at END
                     WHERE id = %(id)s AND lease_token = %(token)s
                    RETURNING id
                ), logged AS (
                    INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, outcome,
                                          status_code, detail)
                    SELECT id, %(attempt)s::integer, %(started)s::double precision,
                           %(ms)s::double precision, %(outcome)s::text, %(a_code)s::integer,
                           %(detail)s::text
                      FROM settled WHERE %(has_attempt)s::boolean
                )
                SELECT count(*) FROM settled
                """,
                params,
            )
            row = await cur.fetchone()
            ok = bool(row and row[0])
            if ok and follow is not None:
                await _follow(conn, claim.delivery_id, claim.destination, follow, now)
        return ok

    async def mark_sent(self, claims: Sequence[Claim]) -> None:
        if not claims:
            return
        async with self._conn("marking a send failed") as conn:
            await conn.execute(
                "UPDATE deliveries d SET sent_attempt = d.attempts"
                " FROM unnest(%s::bigint[], %s::text[]) AS t (id, token)"
                " WHERE d.id = t.id AND d.lease_token = t.token",
                ([c.delivery_id for c in claims], [c.lease_token for c in claims]),
            )

    async def extend(self, claims: Sequence[Claim], until: float) -> None:
        if not claims:
            return
        async with self._conn("lease extension failed") as conn:
            await conn.execute(
                "UPDATE deliveries d SET lease_until = %s"
                " FROM unnest(%s::bigint[], %s::text[]) AS t (id, token)"
                " WHERE d.id = t.id AND d.lease_token = t.token AND d.status = 'pending'",
                (until, [c.delivery_id for c in claims], [c.lease_token for c in claims]),
            )

    async def next_due(self, destinations: Sequence[str]) -> float | None:
        if not destinations:
            return None
        async with self._conn("query failed") as conn:
            cur = await conn.execute(
                "SELECT min(greatest(next_attempt_at, coalesce(lease_until, 0)))"
                " FROM deliveries WHERE status = 'pending' AND destination = ANY(%s)",
                (list(destinations),),
            )
            row = await cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def deliveries(
        self,
        status: str | None = None,
        destination: str | None = None,
        limit: int = 50,
        delivery_id: int | None = None,
    ) -> list[DeliveryRow]:
        where: list[sql.Composable] = []
        args: list[Any] = []
        if delivery_id is not None:
            where.append(sql.SQL("d.id = %s"))
            args.append(delivery_id)
        if status:
            where.append(sql.SQL("d.status = %s"))
            args.append(status)
        if destination:
            where.append(sql.SQL("d.destination = %s"))
            args.append(destination)
        query = sql.SQL(
            "SELECT d.id, d.destination, d.status, d.attempts,"
            " CASE WHEN d.status = 'pending' THEN d.next_attempt_at END,"
            " d.last_status_code, d.last_error, c.source, c.kind, c.order_key,"
            " d.created_at, d.updated_at, c.erased_by,"
            " CASE WHEN d.status <> 'pending' THEN s.state END,"
            " CASE WHEN d.status <> 'pending' THEN s.detail END, d.conversion_id"
            " FROM deliveries d JOIN conversions c ON c.id = d.conversion_id"
            " LEFT JOIN submissions s ON s.delivery_id = d.id {where}"
            " ORDER BY d.id DESC LIMIT %s"
        ).format(where=sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""))
        async with self._conn("query failed") as conn:
            cur = await conn.execute(query, (*args, limit))
            rows = await cur.fetchall()
        return [DeliveryRow(*row) for row in rows]

    async def attempts(self, delivery_id: int) -> list[Attempt]:
        async with self._conn("query failed") as conn:
            cur = await conn.execute(
                "SELECT started_at, duration_ms, outcome, status_code, detail FROM attempts"
                " WHERE delivery_id = %s ORDER BY id",
                (delivery_id,),
            )
            rows = await cur.fetchall()
        return [
            Attempt(started, ms, outcome, code, detail or "")
            for started, ms, outcome, code, detail in rows
        ]

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
        where: list[sql.Composable] = []
        args: list[Any] = []
        if before is not None:  # keyset: the rows listed after (received_at, id), newest first
            where.append(sql.SQL("(received_at, id) < (%s, %s)"))
            args.extend((before[0], before[1]))
        if statuses:
            where.append(sql.SQL("status = ANY(%s)"))
            args.append(list(statuses))
        if source:
            where.append(sql.SQL("source = %s"))
            args.append(source)
        if since is not None:
            where.append(sql.SQL("received_at >= %s"))
            args.append(since)
        if ids:
            where.append(sql.SQL("id = ANY(%s)"))
            args.append([int(i) for i in ids])
        order = sql.SQL("ASC" if oldest_first else "DESC")
        query = sql.SQL(
            "SELECT id, source, event_id, event_type, status, reason, received_at, replayed_at"
            "{body} FROM events {where} ORDER BY received_at {order}, id {order} {limit}"
        ).format(
            body=sql.SQL(", body" if with_body else ""),
            where=sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""),
            order=order,
            limit=sql.SQL("LIMIT %s") if limit is not None else sql.SQL(""),
        )
        if limit is not None:
            args.append(limit)
        async with self._conn("query failed") as conn:
            cur = await conn.execute(query, args)
            rows = await cur.fetchall()
        found = [StoredEvent(*row[:8]) for row in rows]
        if with_body:
            for event, row in zip(found, rows, strict=True):
                event.body = bytes(row[8])
        return found

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
        result: Recorded | None = None
        async with self._conn("replay failed") as conn:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                cur = await conn.execute(
                    "UPDATE events SET status = %s, reason = %s, replayed_at = %s WHERE id = %s"
                    " RETURNING source, event_id",
                    (status, reason, now, event_row),
                )
                row = await cur.fetchone()
                if row is None:
                    raise StoreError(f"event {event_row} is not in the ledger")
                if event_id != row[1]:
                    await conn.execute(
                        "UPDATE events SET event_id = %s WHERE id = %s AND NOT EXISTS"
                        " (SELECT 1 FROM events WHERE source = %s AND event_id = %s)",
                        (event_id, event_row, row[0], event_id),
                    )
                result = await self._record_conversions(
                    conn, event_row, now, conversions, destinations_for
                )
                if dry_run:  # done, reported, undone (the notify goes with it)
                    raise psycopg.Rollback()
        assert result is not None
        return result

    async def conversions_by_key(
        self, keys: Sequence[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], Conversion]:
        if not keys:
            return {}
        async with self._conn("query failed") as conn:
            cur = await conn.execute(
                "SELECT c.source, c.kind, c.order_key, c.data"
                " FROM unnest(%s::text[], %s::text[], %s::text[]) AS t (source, kind, order_key)"
                " JOIN conversions c USING (source, kind, order_key)",
                ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]),
            )
            rows = await cur.fetchall()
        return {
            (src, kind, key): Conversion.from_json(bytes(data)) for src, kind, key, data in rows
        }

    async def without_delivery(
        self,
        destination: str,
        since: float,
        until: float | None = None,
        after: int = 0,
        limit: int = 500,
    ) -> list[tuple[int, Conversion]]:
        async with self._conn("query failed") as conn:
            cur = await conn.execute(
                "SELECT c.id, c.data FROM conversions c"
                " WHERE c.id > %s AND c.created_at >= %s"
                " AND (%s::double precision IS NULL OR c.created_at < %s)"
                " AND c.erased_at IS NULL"
                " AND NOT EXISTS (SELECT 1 FROM deliveries d"
                "                 WHERE d.conversion_id = c.id AND d.destination = %s)"
                " ORDER BY c.id LIMIT %s",
                (after, since, until, until, destination, limit),
            )
            rows = await cur.fetchall()
        return [(row_id, Conversion.from_json(bytes(data))) for row_id, data in rows]

    async def add_deliveries(
        self, destination: str, conversion_ids: Sequence[int], now: float
    ) -> int:
        if not conversion_ids:
            return 0
        async with self._conn("planning deliveries failed") as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO deliveries (conversion_id, destination, status, next_attempt_at,"
                " created_at, updated_at)"
                " SELECT c.id, %s, %s, %s, %s, %s FROM conversions c"
                " WHERE c.id = ANY(%s::bigint[])"
                " ON CONFLICT (conversion_id, destination) DO NOTHING",
                (destination, PENDING, now, now, now, [int(i) for i in conversion_ids]),
            )
            count = cur.rowcount
            if count:
                await conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
        return count

    async def resend(self, ids: Sequence[int], now: float) -> list[int]:
        if not ids:
            return []
        async with self._conn("resend failed") as conn, conn.transaction():
            cur = await conn.execute(
                """
                WITH old AS (
                    SELECT id, attempts FROM deliveries
                     WHERE id = ANY(%(ids)s::bigint[]) AND status = %(delivered)s
                       FOR UPDATE
                ), requeued AS (
                    UPDATE deliveries d
                       SET status = 'pending', attempts = 0, next_attempt_at = %(now)s,
                           sent_attempt = NULL, lease_until = NULL, lease_token = NULL,
                           recovered = false, in_doubt = false, updated_at = %(now)s
                      FROM old WHERE d.id = old.id
                    RETURNING d.id
                ), logged AS (
                    INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms,
                                          outcome, status_code, detail)
                    SELECT id, attempts, %(now)s, 0, %(outcome)s, NULL, %(detail)s FROM old
                )
                SELECT id FROM requeued ORDER BY id
                """,
                {
                    "ids": [int(i) for i in ids],
                    "delivered": DELIVERED,
                    "now": now,
                    "outcome": RESEND,
                    "detail": RESEND_DETAIL,
                },
            )
            resent = [row[0] for row in await cur.fetchall()]
            if resent:
                await conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
        return resent

    async def requeue(
        self,
        ids: Sequence[int] = (),
        destination: str | None = None,
        now: float = 0.0,
        statuses: Sequence[str] = (FAILED,),
    ) -> int:
        where = [sql.SQL("status = ANY(%s)")]
        args: list[Any] = [list(statuses)]
        if ids:
            where.append(sql.SQL("id = ANY(%s)"))
            args.append([int(i) for i in ids])
        if destination:
            where.append(sql.SQL("destination = %s"))
            args.append(destination)
        # a conversion whose personal data is gone cannot be sent again (`relay retry` says so)
        where.append(
            sql.SQL(
                "NOT EXISTS (SELECT 1 FROM conversions c WHERE c.id = deliveries.conversion_id"
                " AND c.erased_at IS NOT NULL)"
            )
        )
        query = sql.SQL(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = %s,"
            " sent_attempt = NULL, lease_until = NULL, lease_token = NULL, updated_at = %s"
            " WHERE {where}"
        ).format(where=sql.SQL(" AND ").join(where))
        async with self._conn("requeue failed") as conn, conn.transaction():
            cur = await conn.execute(query, (now, now, *args))
            count = cur.rowcount
            if count:
                await conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
        return count

    async def stats(self, now: float) -> dict[str, Any]:
        """The trigger-kept counts (summed over shards) and one index probe per destination
        with pending deliveries: no scan of `deliveries`."""
        async with self._conn("query failed") as conn:
            cur = await conn.execute(
                "SELECT destination, status, sum(n) FROM delivery_counts"
                " GROUP BY destination, status HAVING sum(n) <> 0"
            )
            by_status = {(dest, status): int(n) for dest, status, n in await cur.fetchall()}
            pending = sorted({d for d, status in by_status if status == PENDING})
            oldest = None
            if pending:
                cur = await conn.execute(
                    "SELECT min(first) FROM unnest(%s::text[]) AS t (destination),"
                    " LATERAL (SELECT min(created_at) AS first FROM deliveries d"
                    "          WHERE d.status = 'pending' AND d.destination = t.destination) AS f",
                    (pending,),
                )
                row = await cur.fetchone()
                oldest = row[0] if row else None
        return {
            "by_status": by_status,
            "oldest_pending_age": 0.0 if oldest is None else max(0.0, now - oldest),
        }

    # ------------------------------------------------------------ console reads

    async def add_tallies(
        self,
        hour: int,
        counts: Mapping[tuple[str, str, str], int],
        errors: Mapping[str, DestinationError],
        prune_before: int,
    ) -> None:
        keys = sorted(k for k, n in counts.items() if n)  # one lock order for every process
        names = sorted(errors)
        async with self._conn("saving tallies failed") as conn, conn.transaction():
            if keys:
                await conn.execute(
                    "INSERT INTO tallies (hour, kind, name, outcome, n)"
                    " SELECT %s, * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[])"
                    " ON CONFLICT (hour, kind, name, outcome)"
                    " DO UPDATE SET n = tallies.n + excluded.n",
                    (
                        hour,
                        [k[0] for k in keys],
                        [k[1] for k in keys],
                        [k[2] for k in keys],
                        [counts[k] for k in keys],
                    ),
                )
            if names:
                await conn.execute(
                    "INSERT INTO destination_errors (destination, at, delivery_id, status_code,"
                    " error) SELECT * FROM unnest(%s::text[], %s::float8[], %s::bigint[],"
                    " %s::integer[], %s::text[])"
                    " ON CONFLICT (destination) DO UPDATE SET at = excluded.at,"
                    " delivery_id = excluded.delivery_id, status_code = excluded.status_code,"
                    " error = excluded.error WHERE excluded.at >= destination_errors.at",
                    (
                        names,
                        [errors[n].at for n in names],
                        [errors[n].delivery_id for n in names],
                        [errors[n].status_code for n in names],
                        [errors[n].error for n in names],
                    ),
                )
            await conn.execute("DELETE FROM tallies WHERE hour < %s", (prune_before,))

    async def tallies(self, since_hour: int) -> dict[tuple[str, str, str], int]:
        async with self._conn("query failed") as conn:
            cur = await conn.execute(
                "SELECT kind, name, outcome, sum(n) FROM tallies WHERE hour >= %s"
                " GROUP BY kind, name, outcome",
                (since_hour,),
            )
            rows = await cur.fetchall()
        return {(kind, name, outcome): int(n) for kind, name, outcome, n in rows}

    async def destination_errors(self) -> dict[str, DestinationError]:
        async with self._conn("query failed") as conn:
            cur = await conn.execute(
                "SELECT destination, at, delivery_id, status_code, error FROM destination_errors"
            )
            rows = await cur.fetchall()
        return {
            name: DestinationError(at, error, code, delivery_id)
            for name, at, delivery_id, code, error in rows
        }

    async def oldest_pending(self, destinations: Sequence[str]) -> dict[str, float]:
        if not destinations:
            return {}
        async with self._conn("query failed") as conn:
            # One step down deliveries_status_age (status, destination, created_at) each.
            cur = await conn.execute(
                "SELECT t.name, (SELECT min(created_at) FROM deliveries"
                "   WHERE status = 'pending' AND destination = t.name)"
                " FROM unnest(%s::text[]) AS t (name)",
                (list(destinations),),
            )
            rows = await cur.fetchall()
        return {name: float(created) for name, created in rows if created is not None}

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
        query, values = delivery_page_sql(
            statuses, destinations, source, since, until, before, limit
        )
        async with self._conn("query failed") as conn:
            # Never a prepared statement: a cached generic plan would not see the values.
            cur = await conn.execute(query, values, prepare=False)
            rows = await cur.fetchall()
        return [DeliveryRow(*row) for row in rows]

    async def conversion(self, conversion_id: int) -> StoredConversion | None:
        async with self._conn("query failed") as conn:
            cur = await conn.execute(
                "SELECT id, event_row, created_at, data, erased_by FROM conversions WHERE id = %s",
                (conversion_id,),
            )
            row = await cur.fetchone()
        return None if row is None else _stored_conversion(row)

    async def conversion_deliveries(self, conversion_id: int) -> list[DeliveryRow]:
        async with self._conn("query failed") as conn:
            cur = await conn.execute(
                sql.SQL(
                    "SELECT {columns} FROM deliveries d JOIN conversions c"
                    " ON c.id = d.conversion_id LEFT JOIN submissions s ON s.delivery_id = d.id"
                    " WHERE d.conversion_id = %s ORDER BY d.destination"
                ).format(columns=_DELIVERY_COLUMNS),
                (conversion_id,),
            )
            rows = await cur.fetchall()
        return [DeliveryRow(*row) for row in rows]

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
        if order_key is not None:
            # The unique (source, kind, order_key) index, one probe per source and kind.
            where = sql.SQL("source = ANY(%s) AND kind = ANY(%s) AND order_key = %s")
            args: list[Any] = [list(sources), list(KINDS), order_key]
        else:
            where, args = sql.SQL("email_hash = %s"), [email_hash]
        if before is not None:
            where = where + sql.SQL(" AND id < %s")
            args.append(before)
        query = sql.SQL(
            "SELECT id, event_row, created_at, data, erased_by FROM conversions WHERE {where}"
            " ORDER BY id DESC LIMIT %s"
        ).format(where=where)
        async with self._conn("query failed") as conn:
            cur = await conn.execute(query, (*args, limit))
            rows = await cur.fetchall()
        return [_stored_conversion(row) for row in rows]

    async def find_events(self, sources: Sequence[str], event_id: str) -> list[StoredEvent]:
        if not sources:
            return []
        async with self._conn("query failed") as conn:
            cur = await conn.execute(
                "SELECT id, source, event_id, event_type, status, reason, received_at,"
                " replayed_at FROM events WHERE source = ANY(%s) AND event_id = %s",
                (list(sources), event_id),
            )
            rows = await cur.fetchall()
        return [StoredEvent(*row) for row in rows]

    async def compact(self) -> bool:
        """Fold the per-connection counter rows into shard 0 (the shards of connections
        long closed would otherwise pile up). Rows a writer holds are skipped (SKIP
        LOCKED): no writer ever waits for this, nor this for a writer."""
        async with self._conn("compact failed") as conn, conn.transaction():
            cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (COMPACT_LOCK,))
            row = await cur.fetchone()
            if row and row[0]:
                await conn.execute(_COMPACT_SQL)
        return True

    # ------------------------------------------------------------ retention and forget

    async def retain(
        self, cutoff: float, now: float, cursor: Any = None, limit: int = 500
    ) -> Retained:
        """One batch, as the SQLite backend does it, under a try-advisory lock: with several
        processes one works and the others are told `busy`."""
        async with self._conn("retention failed") as conn, conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (RETENTION_LOCK,))
            row = await cur.fetchone()
            if not (row and row[0]):
                return Retained(done=True, busy=True, cursor=cursor)
            if not cursor or cursor[0] == "conversions":
                return await self._retain_conversions(conn, cutoff, now, cursor, limit)
            if cursor[0] == "memory":
                return await _retain_memory(conn, cutoff, limit)
            result = await self._retain_events(conn, cutoff, now, limit)
            if result.done:  # then the remembered attribution ids (_retain_memory)
                result.done, result.cursor = False, ("memory",)
            return result

    async def _retain_conversions(
        self, conn: psycopg.AsyncConnection[Any], cutoff: float, now: float, cursor: Any, limit: int
    ) -> Retained:
        result = Retained(done=False)
        after_at, after_id = (cursor[1], cursor[2]) if cursor else (float("-inf"), 0)
        cur = await conn.execute(
            "SELECT c.id, c.occurred_at, c.event_row, c.data,"
            " EXISTS (SELECT 1 FROM deliveries d WHERE d.conversion_id = c.id"
            "         AND d.status = 'pending')"
            " FROM conversions c WHERE c.erased_at IS NULL AND c.occurred_at < %s"
            " AND (c.occurred_at, c.id) > (%s, %s)"
            " ORDER BY c.occurred_at, c.id LIMIT %s FOR UPDATE OF c SKIP LOCKED",
            (cutoff, after_at, after_id, limit),
        )
        rows = await cur.fetchall()
        erase = [(cid, event_row, raw) for cid, _, event_row, raw, pending in rows if not pending]
        if erase:
            await conn.execute(
                "UPDATE conversions c SET data = t.data, erased_at = %s, erased_by = %s"
                " FROM unnest(%s::bigint[], %s::bytea[]) AS t (id, data) WHERE c.id = t.id",
                (
                    now,
                    RETENTION,
                    [e[0] for e in erase],
                    [erase_personal(Conversion.from_json(bytes(e[2]))).to_json() for e in erase],
                ),
            )
            result.conversions = len(erase)
            cur = await conn.execute(
                "UPDATE events e SET body = ''::bytea, erased_at = %s"
                " WHERE e.id = ANY(%s) AND e.erased_at IS NULL AND NOT EXISTS"
                " (SELECT 1 FROM conversions c WHERE c.event_row = e.id AND c.erased_at IS NULL)",
                (now, sorted({e[1] for e in erase})),
            )
            result.events = cur.rowcount
        if len(rows) == limit:
            result.cursor = ("conversions", rows[-1][1], rows[-1][0])
        else:
            result.cursor = ("events",)
        return result

    async def _retain_events(
        self, conn: psycopg.AsyncConnection[Any], cutoff: float, now: float, limit: int
    ) -> Retained:
        result = Retained(done=False, cursor=("events",))
        cur = await conn.execute("SELECT value FROM retention_state WHERE key = 'events'")
        row = await cur.fetchone()
        position = int(row[0]) if row else 0
        cur = await conn.execute(
            "SELECT e.id, e.received_at, e.erased_at IS NULL,"
            " EXISTS (SELECT 1 FROM conversions c WHERE c.event_row = e.id AND c.erased_at IS NULL)"
            " FROM events e WHERE e.id > %s ORDER BY e.id LIMIT %s",
            (position, limit),
        )
        rows = await cur.fetchall()
        erase = []
        for eid, received_at, unerased, has_data in rows:
            if received_at >= cutoff:  # ids follow arrival: the rest is younger
                result.done = True
                break
            position = eid
            if unerased and not has_data:  # with data: its conversions' erasure takes it
                erase.append(eid)
        else:
            result.done = len(rows) < limit
        if erase:
            cur = await conn.execute(
                "UPDATE events SET body = ''::bytea, erased_at = %s"
                " WHERE id = ANY(%s) AND erased_at IS NULL",
                (now, erase),
            )
            result.events = cur.rowcount
        await conn.execute(
            "INSERT INTO retention_state (key, value) VALUES ('events', %s)"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (position,),
        )
        return result

    async def _forget_memory(self, keys: list[str]) -> int:
        if not keys:
            return 0
        async with self._conn("forget failed") as conn:
            cur = await conn.execute(
                "DELETE FROM attribution_memory WHERE customer_key = ANY(%s)", (keys,)
            )
            return cur.rowcount

    async def _forget_by_keys(self, keys: list[str]) -> tuple[set[int], set[str]]:
        async with self._conn("forget failed") as conn:
            # the distinct sources by jumps through the (source, customer_key) index
            cur = await conn.execute(
                "WITH RECURSIVE s (v) AS ("
                " SELECT min(source) FROM conversions"
                " UNION ALL SELECT (SELECT min(source) FROM conversions WHERE source > s.v)"
                " FROM s WHERE s.v IS NOT NULL)"
                " SELECT c.id, c.customer_key FROM s JOIN conversions c"
                " ON c.source = s.v AND c.customer_key = ANY(%s)",
                (keys,),
            )
            rows = await cur.fetchall()
        ids = {r[0] for r in rows}
        customers = {r[1][3:] for r in rows if r[1].startswith("id:")}
        return ids, customers

    async def _forget_scan_conversions(
        self, email: str, cursor: Any, limit: int
    ) -> tuple[set[int], set[str], Any]:
        after_at, after_id = cursor or (float("-inf"), 0)
        async with self._conn("forget failed") as conn:
            cur = await conn.execute(
                "SELECT id, occurred_at, data FROM conversions WHERE erased_at IS NULL"
                " AND (occurred_at, id) > (%s, %s) ORDER BY occurred_at, id LIMIT %s",
                (after_at, after_id, limit),
            )
            rows = await cur.fetchall()
        ids: set[int] = set()
        customers: set[str] = set()
        needle = email.encode()
        for cid, _, data in rows:
            raw = bytes(data)
            if needle in raw.lower() and mentions(raw, email):
                ids.add(cid)
                found = Conversion.from_json(raw).customer.id
                if found:
                    customers.add(found)
        return ids, customers, ((rows[-1][1], rows[-1][0]) if len(rows) == limit else None)

    async def _forget_scan_events(
        self, email: str | None, customers: list[str], after: int, chunk: int
    ) -> tuple[set[int], int | None]:
        # encode(…, 'escape') never fails on bytes that are not UTF-8 and keeps ASCII as is
        tests: list[sql.Composable] = []
        args: list[Any] = [after, after + chunk]
        if email:
            tests.append(sql.SQL("strpos(lower(encode(body, 'escape')), %s) > 0"))
            args.append(email)
        for cid in customers:
            tests.append(sql.SQL("position(%s::bytea IN body) > 0"))
            args.append(f'"{cid}"'.encode())
        query = sql.SQL(
            "SELECT id, body FROM events WHERE id > %s AND id <= %s AND erased_at IS NULL"
            " AND ({tests})"
        ).format(tests=sql.SQL(" OR ").join(tests))
        async with self._conn("forget failed") as conn:
            cur = await conn.execute(query, args)
            rows = await cur.fetchall()
            cur = await conn.execute("SELECT max(id) FROM events")
            last = (await cur.fetchone() or (0,))[0] or 0
        found = {eid for eid, body in rows if mentions(bytes(body), email, customers)}
        return found, (after + chunk if after + chunk < last else None)

    async def _forget_chunk(
        self, conversions: list[int], events: list[int], now: float
    ) -> tuple[Forgotten, set[int], set[int]]:
        changed = Forgotten()
        own_events: set[int] = set()
        async with self._conn("forget failed") as conn, conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            if conversions:
                cur = await conn.execute(
                    "SELECT id, event_row, data, erased_at, erased_by, customer_key"
                    " FROM conversions WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                    (conversions,),
                )
                ids, datas = [], []
                for cid, event_row, data, erased_at, erased_by, key in await cur.fetchall():
                    own_events.add(event_row)
                    if erased_at is not None and erased_by == FORGET and key is None:
                        continue
                    raw = bytes(data)
                    ids.append(cid)
                    datas.append(
                        raw
                        if erased_at is not None
                        else erase_personal(Conversion.from_json(raw)).to_json()
                    )
                if ids:
                    await conn.execute(
                        "UPDATE conversions c SET data = t.data,"
                        " erased_at = coalesce(c.erased_at, %s), erased_by = %s,"
                        " customer_key = NULL, email_hash = NULL"
                        " FROM unnest(%s::bigint[], %s::bytea[]) AS t (id, data) WHERE c.id = t.id",
                        (now, FORGET, ids, datas),
                    )
                    changed.conversions = len(ids)
                cur = await conn.execute(
                    "UPDATE deliveries SET status = 'failed', last_error = %s, lease_until = NULL,"
                    " lease_token = NULL, updated_at = %s"
                    " WHERE status = 'pending' AND conversion_id = ANY(%s)",
                    (ERASED_BY_FORGET, now, conversions),
                )
                changed.deliveries = cur.rowcount
            targets = sorted(own_events | set(events))
            if targets:
                cur = await conn.execute(
                    "UPDATE events SET body = ''::bytea, erased_at = coalesce(erased_at, %s)"
                    " WHERE id = ANY(%s) AND (erased_at IS NULL OR length(body) > 0)",
                    (now, targets),
                )
                changed.events = cur.rowcount
            related: set[int] = set()
            if own_events:
                cur = await conn.execute(
                    "SELECT id FROM conversions WHERE erased_at IS NULL AND event_row = ANY(%s)",
                    (sorted(own_events),),
                )
                related = {r[0] for r in await cur.fetchall()}
        return changed, related, set(targets)

    async def rate_block(self, key: str, per_minute: int, until: float) -> None:
        # per_minute sends dated 60 s before `until` keep the window full until exactly then
        async with self._conn("rate limit failed") as conn:
            await conn.execute(
                "INSERT INTO rate_limits (key, sent) SELECT %s, %s FROM generate_series(1, %s)",
                (key, until - 60.0, per_minute),
            )

    async def rate_acquire(self, key: str, per_minute: int, now: float) -> float:
        async with self._conn("rate limit failed") as conn:
            cur = await conn.execute(
                "SELECT relay_rate_acquire(%s, %s, %s)", (key, per_minute, now)
            )
            row = await cur.fetchone()
        return float(row[0]) if row else 0.0

    # ------------------------------------------------------------ submissions (SCHEMA_SUBMISSIONS)

    async def claim_submissions(
        self, destinations: Sequence[str], limit: int, lease_seconds: float, now: float
    ) -> list[SubmissionClaim]:
        if not destinations or limit <= 0:
            return []
        token = uuid.uuid4().hex
        async with self._conn("claim failed") as conn:
            cur = await conn.execute(
                """
                UPDATE submissions s SET lease_until = %(until)s, lease_token = %(token)s
                  FROM (SELECT id FROM submissions
                         WHERE state = 'following' AND destination = ANY(%(dests)s)
                           AND next_check_at <= %(now)s
                           AND (lease_until IS NULL OR lease_until < %(now)s)
                         ORDER BY next_check_at LIMIT %(limit)s
                           FOR UPDATE SKIP LOCKED) due,
                       deliveries d, conversions c
                 WHERE s.id = due.id AND d.id = s.delivery_id AND c.id = d.conversion_id
                RETURNING s.id, s.delivery_id, s.destination, s.uri, s.kind, s.checks,
                          s.started_at, c.order_key, d.attempts
                """,
                {
                    "until": now + lease_seconds,
                    "token": token,
                    "now": now,
                    "dests": list(destinations),
                    "limit": limit,
                },
            )
            rows = await cur.fetchall()
        return [
            SubmissionClaim(sid, did, dest, uri, kind, checks, started, token, key, attempts)
            for sid, did, dest, uri, kind, checks, started, key, attempts in rows
        ]

    async def settle_submission(
        self, claim: SubmissionClaim, result: SubmissionResult, now: float
    ) -> bool:
        r = result
        async with self._conn("settle failed") as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE submissions SET state = %s, checks = checks + %s, next_check_at = %s,"
                " lease_until = NULL, lease_token = NULL, error_type = %s, error_reason = %s,"
                " detail = %s, updated_at = %s"
                " WHERE id = %s AND lease_token = %s AND state = 'following'",
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
                await conn.execute(
                    "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, outcome,"
                    " status_code, detail) VALUES (%s, %s, %s, %s, %s, %s, %s)",
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
                await _count(conn, claim.destination, FOLLOWING, "", "", -1)
                await _count(
                    conn,
                    claim.destination,
                    r.state,
                    r.error_type or "",
                    reason_label(r.error_reason),
                    1,
                )
            if r.state == REJECTED_THERE and r.delivery_error:
                await conn.execute(
                    "UPDATE deliveries SET status = 'failed', last_error = %s, updated_at = %s"
                    " WHERE id = %s AND status = 'delivered'",
                    (r.delivery_error[:1000], now, claim.delivery_id),
                )
        return True

    async def hold_submissions(self, destination: str, until: float) -> int:
        async with self._conn("hold failed") as conn:
            cur = await conn.execute(
                "UPDATE submissions SET next_check_at = %s WHERE destination = %s"
                " AND state = 'following' AND next_check_at < %s",
                (until, destination, until),
            )
            return cur.rowcount

    async def next_submission_due(self, destinations: Sequence[str]) -> float | None:
        if not destinations:
            return None
        async with self._conn("query failed") as conn:
            cur = await conn.execute(
                "SELECT min(greatest(next_check_at, coalesce(lease_until, 0)))"
                " FROM submissions WHERE state = 'following' AND destination = ANY(%s)",
                (list(destinations),),
            )
            row = await cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def submission_stats(self) -> dict[str, Any]:
        async with self._conn("query failed") as conn:
            cur = await conn.execute(
                "SELECT destination, outcome, error_type, reason, n FROM submission_counts"
            )
            rows = await cur.fetchall()
        following: dict[str, int] = {}
        outcomes: dict[tuple[str, str, str, str], int] = {}
        for dest, outcome, error_type, reason, n in rows:
            if outcome == FOLLOWING:
                following[dest] = following.get(dest, 0) + int(n)
            else:
                outcomes[(dest, outcome, error_type, reason)] = int(n)
        return {"following": following, "outcomes": outcomes}

    async def refund_target(self, conversion_id: int, destination: str) -> RefundTarget:
        async with self._conn("query failed") as conn:
            cur = await conn.execute(
                "SELECT source, link_ref FROM conversions WHERE id = %s", (conversion_id,)
            )
            row = await cur.fetchone()
            if row is None or row[1] is None:
                return RefundTarget(link=None)
            source, link = row
            target = RefundTarget(link=link)
            cur = await conn.execute(
                "SELECT c.data, c.created_at, d.status, d.last_error, d.next_attempt_at,"
                " s.state, s.next_check_at FROM conversions c"
                " LEFT JOIN deliveries d ON d.conversion_id = c.id AND d.destination = %s"
                " LEFT JOIN submissions s ON s.delivery_id = d.id"
                " WHERE c.source = %s AND c.link_ref = %s"
                " AND c.kind IN ('purchase', 'subscription_renewed') ORDER BY c.id LIMIT 1",
                (destination, source, link),
            )
            found = await cur.fetchone()
            if found is not None:
                target.purchase = Conversion.from_json(bytes(found[0]))
                (
                    target.purchase_created_at,
                    target.delivery_status,
                    target.delivery_error,
                    target.next_attempt_at,
                    target.confirmation,
                    target.next_check_at,
                ) = found[1:]
            cur = await conn.execute(
                "SELECT c.id, c.data, d.status, s.kind, s.state FROM conversions c"
                " LEFT JOIN deliveries d ON d.conversion_id = c.id AND d.destination = %s"
                " LEFT JOIN submissions s ON s.delivery_id = d.id"
                " WHERE c.source = %s AND c.link_ref = %s AND c.kind = %s ORDER BY c.id",
                (destination, source, link, REFUND),
            )
            for cid, data, status, kind, state in await cur.fetchall():
                refund = Conversion.from_json(bytes(data))
                target.refunds.append(
                    RefundSibling(cid, refund.total, refund.currency, status, kind, state)
                )
        return target

    # ------------------------------------------------------------ reconcile

    async def reconcile_lease(
        self, source: str, owner: str, now: float, until: float
    ) -> ReconcileState | None:
        async with self._conn("reconcile lease failed") as conn:
            cur = await conn.execute(
                "INSERT INTO reconcile_state AS r (source, last_run_at, lease_owner, lease_until)"
                " VALUES (%(source)s, %(now)s, %(owner)s, %(until)s)"
                " ON CONFLICT (source) DO UPDATE SET last_run_at = excluded.last_run_at,"
                " lease_owner = excluded.lease_owner, lease_until = excluded.lease_until"
                " WHERE r.lease_owner IS NULL OR r.lease_owner = %(owner)s"
                " OR r.lease_until IS NULL OR r.lease_until < %(now)s"
                " RETURNING source, mark, last_run_at, last_success_at, last_error, last_error_at,"
                " runs, failures, lease_owner, lease_until",
                {"source": source, "now": now, "owner": owner, "until": until},
            )
            row = await cur.fetchone()
        return None if row is None else ReconcileState(*row)

    async def reconcile_progress(
        self, source: str, owner: str, mark: float | None, until: float
    ) -> bool:
        async with self._conn("reconcile progress failed") as conn:
            cur = await conn.execute(
                "UPDATE reconcile_state SET mark = greatest(mark, %s::double precision),"
                " lease_until = %s WHERE source = %s AND lease_owner = %s",
                (mark, until, source, owner),
            )
            return cur.rowcount > 0

    async def reconcile_done(
        self, source: str, owner: str, now: float, mark: float | None, error: str | None
    ) -> None:
        async with self._conn("reconcile bookkeeping failed") as conn:
            if error is None:
                await conn.execute(
                    "UPDATE reconcile_state SET mark = greatest(mark, %s::double precision),"
                    " last_success_at = %s, runs = runs + 1, lease_owner = NULL,"
                    " lease_until = NULL WHERE source = %s AND lease_owner = %s",
                    (mark, now, source, owner),
                )
            else:
                await conn.execute(
                    "UPDATE reconcile_state SET last_error = %s, last_error_at = %s,"
                    " failures = failures + 1, lease_owner = NULL, lease_until = NULL"
                    " WHERE source = %s AND lease_owner = %s",
                    (error[:1000], now, source, owner),
                )

    async def reconcile_states(self) -> list[ReconcileState]:
        async with self._conn("query failed") as conn:
            cur = await conn.execute(
                f"SELECT {_STATE_COLUMNS} FROM reconcile_state ORDER BY source"  # noqa: S608
            )
            rows = await cur.fetchall()
        return [ReconcileState(*row) for row in rows]

    async def existing(self, source: str, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        if not keys:
            return set()
        async with self._conn("query failed") as conn:
            cur = await conn.execute(
                "SELECT c.kind, c.order_key"
                " FROM unnest(%s::text[], %s::text[]) AS t (kind, order_key)"
                " JOIN conversions c ON c.source = %s AND c.kind = t.kind"
                " AND c.order_key = t.order_key",
                ([k for k, _ in keys], [o for _, o in keys], source),
            )
            return {(kind, order_key) for kind, order_key in await cur.fetchall()}

    async def disable_destination(
        self, destination: str, reason: str, fingerprint: str | None, now: float
    ) -> bool:
        async with self._conn("disable failed") as conn:
            cur = await conn.execute(
                "INSERT INTO destination_states (destination, disabled_at, reason, fingerprint)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (destination) DO NOTHING",
                (destination, now, reason, fingerprint),
            )
            return cur.rowcount == 1

    async def enable_destination(self, destination: str) -> DisabledDestination | None:
        async with self._conn("enable failed") as conn, conn.transaction():
            cur = await conn.execute(
                "DELETE FROM destination_states WHERE destination = %s"
                " RETURNING destination, disabled_at, reason, fingerprint",
                (destination,),
            )
            row = await cur.fetchone()
            if row is not None:  # its waiting deliveries are due: wake every worker
                await conn.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
        return None if row is None else DisabledDestination(*row)

    async def disabled_destinations(self) -> dict[str, DisabledDestination]:
        async with self._conn("query failed") as conn:
            cur = await conn.execute(
                "SELECT destination, disabled_at, reason, fingerprint FROM destination_states"
            )
            rows = await cur.fetchall()
        return {row[0]: DisabledDestination(*row) for row in rows}

    # ------------------------------------------------------------ notifications

    async def watch(self, wake: Callable[[], None]) -> None:
        if self._pool is None:
            raise StoreError("store is not open")
        started = asyncio.Event()
        task = asyncio.create_task(self._listen(wake, started), name="relay-pg-listen")
        self._listeners.add(task)
        task.add_done_callback(self._listeners.discard)
        # Return once LISTEN is in place (or soon anyway: polling covers the gap).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(started.wait(), timeout=5.0)

    async def _listen(self, wake: Callable[[], None], started: asyncio.Event) -> None:
        delay = LISTEN_BACKOFF[0]
        first = True
        while not self._closed:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                    if not first:
                        log.info("store: listening for new work again")
                    first = False
                    delay = LISTEN_BACKOFF[0]
                    started.set()
                    wake()  # anything notified while we were away
                    while True:
                        async for _ in conn.notifies(timeout=LISTEN_HEALTH_SECONDS):
                            wake()
                        await conn.execute("SELECT 1")  # idle: is the connection alive?
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closed:
                    return
                log.warning(
                    "store: LISTEN connection lost (%s); reconnecting in %.1f s",
                    self._error("listener", exc),
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, LISTEN_BACKOFF[1])


# ---------------------------------------------------------------- submissions (SCHEMA_SUBMISSIONS)


@contextlib.asynccontextmanager
async def _maybe_transaction(
    conn: psycopg.AsyncConnection[Any], needed: object
) -> AsyncIterator[None]:
    """A transaction only when the settlement writes more than its one statement."""
    if needed is None:
        yield
        return
    async with conn.transaction():
        yield


async def _count(
    conn: psycopg.AsyncConnection[Any],
    destination: str,
    outcome: str,
    error_type: str,
    reason: str,
    n: int,
) -> None:
    await conn.execute(
        "INSERT INTO submission_counts (destination, outcome, error_type, reason, n)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (destination, outcome, error_type, reason)"
        " DO UPDATE SET n = submission_counts.n + excluded.n",
        (destination, outcome, error_type, reason, n),
    )


async def _follow(
    conn: psycopg.AsyncConnection[Any], delivery_id: int, destination: str, f: FollowUp, now: float
) -> None:
    """Start following a delivery's submission (replacing an earlier one), or forget the
    earlier one when this answer gave nothing to follow; inside the settle's transaction."""
    cur = await conn.execute(
        "SELECT state FROM submissions WHERE delivery_id = %s FOR UPDATE", (delivery_id,)
    )
    old = await cur.fetchone()
    was_following = old is not None and old[0] == FOLLOWING
    if f.uri is None:
        if old is not None:
            await conn.execute("DELETE FROM submissions WHERE delivery_id = %s", (delivery_id,))
            if was_following:
                await _count(conn, destination, FOLLOWING, "", "", -1)
        return
    await conn.execute(
        "INSERT INTO submissions (delivery_id, destination, uri, kind, state, checks, started_at,"
        " next_check_at, detail, updated_at) VALUES (%s, %s, %s, %s, %s, 0, %s, %s, %s, %s)"
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
        await _count(conn, destination, FOLLOWING, "", "", 1)


async def _retain_memory(conn: psycopg.AsyncConnection[Any], cutoff: float, limit: int) -> Retained:
    """Retention's last phase: remembered ids neither written nor used since the cutoff."""
    cur = await conn.execute(
        "DELETE FROM attribution_memory WHERE ctid IN"
        " (SELECT ctid FROM attribution_memory WHERE seen_at < %s LIMIT %s)",
        (cutoff, limit),
    )
    return Retained(memories=cur.rowcount, done=cur.rowcount < limit, cursor=("memory",))
