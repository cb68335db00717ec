-- relay ledger, PostgreSQL flavour (schema version 8).
-- Run by PostgresStore.open() inside one transaction holding an advisory lock, so
-- several processes starting at once neither race nor fail. Every statement is
-- idempotent. Times are epoch seconds (double precision), as the Store interface speaks.
CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL);

CREATE TABLE IF NOT EXISTS events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source      text             NOT NULL,
    event_id    text             NOT NULL,
    event_type  text             NOT NULL,
    received_at double precision NOT NULL,
    body        bytea            NOT NULL,
    UNIQUE (source, event_id)
);

-- version 3: every verified webhook is kept with a status (accepted | ignored |
-- quarantined), a reason and when it was last replayed; rows from before were accepted
ALTER TABLE events ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'accepted';
ALTER TABLE events ADD COLUMN IF NOT EXISTS reason text;
ALTER TABLE events ADD COLUMN IF NOT EXISTS replayed_at double precision;
CREATE INDEX IF NOT EXISTS events_status ON events (status, received_at);
CREATE INDEX IF NOT EXISTS events_received ON events (received_at);

CREATE TABLE IF NOT EXISTS conversions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source       text             NOT NULL,
    kind         text             NOT NULL,
    order_key    text             NOT NULL,
    event_row    bigint           NOT NULL REFERENCES events (id),
    customer_key text,
    occurred_at  double precision NOT NULL,
    created_at   double precision NOT NULL,
    data         bytea            NOT NULL,
    UNIQUE (source, kind, order_key)
);
CREATE INDEX IF NOT EXISTS conversions_customer ON conversions (source, customer_key);
-- version 8 (the console): the SHA-256 of the buyer's normalized email, so a search by
-- email is a lookup (PostgresStore._migrate computes it for rows recorded before)
ALTER TABLE conversions ADD COLUMN IF NOT EXISTS email_hash text;
CREATE INDEX IF NOT EXISTS conversions_email ON conversions (email_hash, id)
    WHERE email_hash IS NOT NULL;

CREATE TABLE IF NOT EXISTS deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversion_id    bigint           NOT NULL REFERENCES conversions (id),
    destination      text             NOT NULL,
    status           text             NOT NULL,
    attempts         integer          NOT NULL DEFAULT 0,
    next_attempt_at  double precision NOT NULL,
    lease_until      double precision,
    lease_token      text,
    recovered        boolean          NOT NULL DEFAULT false,
    last_status_code integer,
    last_error       text,
    created_at       double precision NOT NULL,
    updated_at       double precision NOT NULL,
    delivered_at     double precision,
    UNIQUE (conversion_id, destination)
);
-- version 2: the sent marker (mark_sent) and the doubt it leaves after a crash
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS in_doubt boolean NOT NULL DEFAULT false;
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS sent_attempt integer;

CREATE INDEX IF NOT EXISTS deliveries_due
    ON deliveries (destination, next_attempt_at) WHERE status = 'pending';
-- (deliveries by status: deliveries_status_age, created by the version 5 step in postgres.py)

CREATE TABLE IF NOT EXISTS attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id bigint           NOT NULL REFERENCES deliveries (id),
    attempt     integer          NOT NULL,
    started_at  double precision NOT NULL,
    duration_ms double precision NOT NULL,
    outcome     text             NOT NULL,
    status_code integer,
    detail      text
);
CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts (delivery_id);

CREATE TABLE IF NOT EXISTS rate_limits (
    key  text             NOT NULL,
    sent double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_limits_key ON rate_limits (key, sent);

-- version 4 (backfill): each source's reconcile high-water mark, last outcome and lease
CREATE TABLE IF NOT EXISTS reconcile_state (
    source          text             PRIMARY KEY,
    mark            double precision,
    last_run_at     double precision,
    last_success_at double precision,
    last_error      text,
    last_error_at   double precision,
    runs            integer          NOT NULL DEFAULT 0,
    failures        integer          NOT NULL DEFAULT 0,
    lease_owner     text,
    lease_until     double precision
);

-- version 8 (the console): webhooks by source and outcome and delivery results by
-- destination and outcome, counted per hour (kind = 'webhook' | 'delivery'), and each
-- destination's last failed attempt; written every few seconds by relay.tally.
CREATE TABLE IF NOT EXISTS tallies (
    hour    bigint NOT NULL,
    kind    text   NOT NULL,
    name    text   NOT NULL,
    outcome text   NOT NULL,
    n       bigint NOT NULL,
    PRIMARY KEY (hour, kind, name, outcome)
);

CREATE TABLE IF NOT EXISTS destination_errors (
    destination text PRIMARY KEY,
    at          double precision NOT NULL,
    delivery_id bigint,
    status_code integer,
    error       text NOT NULL
);

-- Sliding 60-second log shared by every process: 0 when a send slot is taken,
-- else the seconds until one frees up. A per-key advisory lock (held until the end of
-- the calling statement's transaction) makes count-then-insert atomic across workers.
CREATE OR REPLACE FUNCTION relay_rate_acquire(
    p_key text, p_per_minute integer, p_now double precision
) RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    n      bigint;
    oldest double precision;
BEGIN
    PERFORM pg_advisory_xact_lock(726501, hashtext(p_key));
    DELETE FROM rate_limits WHERE key = p_key AND sent <= p_now - 60.0;
    SELECT count(*), min(sent) INTO n, oldest FROM rate_limits WHERE key = p_key;
    IF n < p_per_minute THEN
        INSERT INTO rate_limits (key, sent) VALUES (p_key, p_now);
        RETURN 0.0;
    END IF;
    IF n > p_per_minute THEN  -- the limit was lowered: wait for the surplus to age out
        SELECT sent INTO oldest FROM rate_limits WHERE key = p_key
         ORDER BY sent OFFSET n - p_per_minute LIMIT 1;
    END IF;
    RETURN greatest(0.001, oldest + 60.0 - p_now);
END;
$$;

-- version 6: destinations disabled by their endpoint (Standard Webhooks 410 Gone). A row
-- means disabled since `disabled_at`; enabling deletes it. `fingerprint` is a hash of the
-- URL that answered 410. Created here for new and upgraded ledgers alike.
CREATE TABLE IF NOT EXISTS destination_states (
    destination text             PRIMARY KEY,
    disabled_at double precision NOT NULL,
    reason      text             NOT NULL,
    fingerprint text
);

-- ---------------------------------------------------------------- version 7 (SCHEMA_SUBMISSIONS)
-- impact.com outcomes and reversals, attribution memory (PostgresStore._migrate fills
-- link_ref for the rows already there when it upgrades from an older version).
-- The value a refund shares with the purchase it refunds (relay/refunds.py link_ref).
ALTER TABLE conversions ADD COLUMN IF NOT EXISTS link_ref text;
CREATE INDEX IF NOT EXISTS conversions_link ON conversions (source, link_ref)
    WHERE link_ref IS NOT NULL;

-- One followed submission per delivery (a queued answer: impact's QueuedUri).
CREATE TABLE IF NOT EXISTS submissions (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id   bigint           NOT NULL UNIQUE REFERENCES deliveries (id),
    destination   text             NOT NULL,
    uri           text             NOT NULL,
    kind          text             NOT NULL,
    state         text             NOT NULL,
    checks        integer          NOT NULL DEFAULT 0,
    started_at    double precision NOT NULL,
    next_check_at double precision,
    lease_until   double precision,
    lease_token   text,
    error_type    text,
    error_reason  text,
    detail        text,
    updated_at    double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS submissions_due ON submissions (destination, next_check_at)
    WHERE state = 'following';

-- Outcome counters, kept in the transactions that change a submission's state.
CREATE TABLE IF NOT EXISTS submission_counts (
    destination text   NOT NULL,
    outcome     text   NOT NULL,
    error_type  text   NOT NULL,
    reason      text   NOT NULL,
    n           bigint NOT NULL,
    PRIMARY KEY (destination, outcome, error_type, reason)
);

-- A customer's remembered attribution ids (RELAY_ATTRIBUTION__MEMORY).
CREATE TABLE IF NOT EXISTS attribution_memory (
    source        text             NOT NULL,
    customer_key  text             NOT NULL,
    attribution   bytea            NOT NULL,
    conversion_id bigint,
    created_at    double precision NOT NULL,
    updated_at    double precision NOT NULL,
    seen_at       double precision NOT NULL,  -- the latest conversion time that wrote or used it
    PRIMARY KEY (source, customer_key)
);
CREATE INDEX IF NOT EXISTS attribution_memory_seen ON attribution_memory (seen_at);
