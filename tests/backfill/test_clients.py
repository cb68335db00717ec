"""The shared processor API client: Retry-After parsing, and where pagination links lead."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from relay.processors import RETRY_AFTER_MAX_SECONDS, retry_after_seconds
from relay.processors.paddle import PaddleAPI
from tests.backfill.conftest import PADDLE_KEY


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("", None), ("  ", None),
    ("7", 7.0), (" 120 ", 120.0), ("0", 0.0),
    ("1.5", None), ("-5", None),  # RFC 9110 delay-seconds are digits: unreadable, own backoff
    ("999999", RETRY_AFTER_MAX_SECONDS),  # clamped
    ("nan", None), ("inf", None), ("1e400", None),
    ("soon", None), ("Wed, 99 Foo 2026 99:99:99 GMT", None), ("x" * 500, None),
    ("\u00e9\u00e9", None),
])
def test_retry_after_values(value, expected):
    assert retry_after_seconds(value, now=1_000_000.0) == expected


def test_retry_after_http_dates():
    now = time.time()
    in_30 = format_datetime(datetime.fromtimestamp(now + 30, UTC), usegmt=True)
    assert retry_after_seconds(in_30, now=now) == pytest.approx(30, abs=1)
    past = format_datetime(datetime.fromtimestamp(now - 30, UTC), usegmt=True)
    assert retry_after_seconds(past, now=now) == 0.0
    far = format_datetime(datetime.fromtimestamp(now + 86400, UTC), usegmt=True)
    assert retry_after_seconds(far, now=now) == RETRY_AFTER_MAX_SECONDS


def test_pagination_links_are_followed_on_the_configured_base(paddle_api):
    """A `next` link naming another host is followed on the base the user configured: the
    API key never goes anywhere else."""
    from tests.backfill.test_processors import paddle_transaction

    now = time.time()
    for n in range(5):
        paddle_api.add_event("transaction.completed", paddle_transaction(n, now - 60 + n), now - 60 + n)
    paddle_api.page_cap = 2
    paddle_api.link_base = "http://localhost:1"  # nothing listens there

    async def read() -> list[str]:
        async with PaddleAPI(PADDLE_KEY, paddle_api.url) as api:
            return [f.ref async for f in api.history(now - 3600, now)]

    refs = asyncio.run(read())
    assert len(refs) == 5 and len(paddle_api.queries_of("/events")) == 3
