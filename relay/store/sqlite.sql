-- relay ledger, SQLite flavour (schema version 8; columns and steps added after version 1
-- are also applied to existing files by SQLiteStore._migrate: sqlite.py _upgrade_*)
-- The tables of version 7 (impact.com submissions, attribution memory) are created by
-- SQLiteStore._upgrade_submissions.
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);

CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY,
    source      TEXT    NOT NULL,
    event_id    TEXT    NOT NULL,
    event_type  TEXT    NOT NULL,
    received_at REAL    NOT NULL,
    body        BLOB    NOT NULL,
    status      TEXT    NOT NULL DEFAULT 'accepted',
    reason      TEXT,
    replayed_at REAL,
    UNIQUE (source, event_id)
);

CREATE TABLE IF NOT EXISTS conversions (
    id          INTEGER PRIMARY KEY,
    source      TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    order_key   TEXT    NOT NULL,
    event_row   INTEGER NOT NULL REFERENCES events (id),
    customer_key TEXT,
    occurred_at REAL    NOT NULL,
    created_at  REAL    NOT NULL,
    data        BLOB    NOT NULL,
    email_hash  TEXT,
    UNIQUE (source, kind, order_key)
);
CREATE INDEX IF NOT EXISTS conversions_customer ON conversions (source, customer_key);

CREATE TABLE IF NOT EXISTS deliveries (
    id               INTEGER PRIMARY KEY,
    conversion_id    INTEGER NOT NULL REFERENCES conversions (id),
    destination      TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL    NOT NULL,
    lease_until      REAL,
    lease_token      TEXT,
    recovered        INTEGER NOT NULL DEFAULT 0,
    in_doubt         INTEGER NOT NULL DEFAULT 0,
    sent_attempt     INTEGER,
    last_status_code INTEGER,
    last_error       TEXT,
    created_at       REAL    NOT NULL,
    updated_at       REAL    NOT NULL,
    delivered_at     REAL,
    UNIQUE (conversion_id, destination)
);
CREATE INDEX IF NOT EXISTS deliveries_due
    ON deliveries (destination, next_attempt_at) WHERE status = 'pending';
-- (deliveries by status: deliveries_status_age, created by the version 5 step)

CREATE TABLE IF NOT EXISTS attempts (
    id           INTEGER PRIMARY KEY,
    delivery_id  INTEGER NOT NULL REFERENCES deliveries (id),
    attempt      INTEGER NOT NULL,
    started_at   REAL    NOT NULL,
    duration_ms  REAL    NOT NULL,
    outcome      TEXT    NOT NULL,
    status_code  INTEGER,
    detail       TEXT
);
CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts (delivery_id);

CREATE TABLE IF NOT EXISTS rate_limits (
    key  TEXT NOT NULL,
    sent REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_limits_key ON rate_limits (key, sent);

-- version 4 (backfill): each source's reconcile high-water mark, last outcome and lease
CREATE TABLE IF NOT EXISTS reconcile_state (
    source          TEXT    PRIMARY KEY,
    mark            REAL,
    last_run_at     REAL,
    last_success_at REAL,
    last_error      TEXT,
    last_error_at   REAL,
    runs            INTEGER NOT NULL DEFAULT 0,
    failures        INTEGER NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_until     REAL
);

-- version 6: destinations disabled by their endpoint (Standard Webhooks 410 Gone). A row
-- means disabled since `disabled_at`; enabling deletes it. `fingerprint` is a hash of the
-- URL that answered 410. Created here for new and upgraded ledgers alike.
CREATE TABLE IF NOT EXISTS destination_states (
    destination TEXT PRIMARY KEY,
    disabled_at REAL NOT NULL,
    reason      TEXT NOT NULL,
    fingerprint TEXT
);

-- version 8 (the console): webhooks by source and outcome and delivery results by
-- destination and outcome, counted per hour (kind = 'webhook' | 'delivery'), and each
-- destination's last failed attempt; written every few seconds by relay.tally.
CREATE TABLE IF NOT EXISTS tallies (
    hour    INTEGER NOT NULL,
    kind    TEXT    NOT NULL,
    name    TEXT    NOT NULL,
    outcome TEXT    NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (hour, kind, name, outcome)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS destination_errors (
    destination TEXT PRIMARY KEY,
    at          REAL NOT NULL,
    delivery_id INTEGER,
    status_code INTEGER,
    error       TEXT NOT NULL
);
