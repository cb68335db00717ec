"""On PostgreSQL, a page of deliveries reads about a page of rows whatever the ledger's
size: the planner's own account (EXPLAIN ANALYZE) of the rows it read from
`deliveries` for each filter the console offers, on a ledger of 200,000 deliveries
where failed and skipped ones are rare and one destination's rows are all older than
the other's (a destination added later): a plan that filtered a walk down the primary
key would read most of the table for either."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from relay.store import DELIVERED, FAILED, PENDING, SKIPPED, STATUSES
from relay.store.postgres import delivery_page_sql
from tests.pgdb import pg_databases, pg_url  # noqa: F401 - fixtures

pytestmark = pytest.mark.postgres
DESTS = ["simmer", "impact"]
ROWS = 100_000  # conversions; two deliveries each


def rows_read(plan: dict[str, Any]) -> int:
    """Rows the plan took from `deliveries` (returned and filtered out, every loop)."""
    own = 0
    if plan.get("Relation Name") == "deliveries":
        own = (plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)) * plan.get(
            "Actual Loops", 1
        )
    return own + sum(rows_read(child) for child in plan.get("Plans", []))


def test_a_page_reads_a_page_of_rows(pg_url: str) -> None:  # noqa: F811 - a ledger with the schema
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO events (source, event_id, event_type, received_at, body)"
            " SELECT 'stripe', 'evt_' || g, 't', g, '\\x7b7d' FROM generate_series(1, %s) g",
            (ROWS,),
        )
        conn.execute(
            "INSERT INTO conversions (source, kind, order_key, event_row, occurred_at,"
            " created_at, data) SELECT CASE WHEN g %% 10 = 0 THEN 'paddle' ELSE 'stripe' END,"
            " 'purchase', 'o' || g, g, g, g, '\\x7b7d' FROM generate_series(1, %s) g",
            (ROWS,),
        )
        conn.execute(
            "INSERT INTO deliveries (conversion_id, destination, status, next_attempt_at,"
            " created_at, updated_at) SELECT g, d, CASE WHEN g %% 97 = 0 THEN 'failed'"
            " WHEN g %% 1013 = 0 THEN 'skipped' WHEN g %% 499 = 0 THEN 'pending'"
            " ELSE 'delivered' END, g, g, g"
            " FROM unnest(ARRAY['simmer', 'impact']) d, generate_series(1, %s) g"
            " ORDER BY d DESC, g",  # every simmer row first, then every impact row
            (ROWS,),
        )
        conn.execute("ANALYZE")
        cases = [
            ([FAILED], ["simmer"], None, None, None, None),
            ([SKIPPED], ["impact"], None, None, None, None),
            ([FAILED, SKIPPED], DESTS, None, None, None, None),
            ([PENDING], DESTS, None, None, None, (ROWS * 0.75, 10**9)),
            (STATUSES, DESTS, None, None, None, None),
            ([DELIVERED], ["simmer"], "paddle", None, None, None),
            (STATUSES, DESTS, None, ROWS / 2, ROWS / 2 + 3600, None),
            ([FAILED], DESTS, "stripe", ROWS / 2, ROWS / 2 + 3600, None),
        ]
        for statuses, destinations, source, since, until, before in cases:
            query, values = delivery_page_sql(statuses, destinations, source, since, until, before, 51)
            explain = sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + query
            [[report]] = conn.execute(explain, values, prepare=False).fetchall()
            read = rows_read(report[0]["Plan"])
            pairs = len(statuses) * len(destinations)
            case = (statuses, destinations, source, since, before)
            assert read <= 51 * pairs * 12 + 500, (case, read)  # not the 200,000 rows
            found = conn.execute(query, values, prepare=False).fetchall()
            assert found, case
