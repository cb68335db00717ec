"""Retry-After as destinations and APIs send it, well-formed or not (RFC 9110 §10.2.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.retry import RETRY_AFTER_CAP_SECONDS, parse_retry_after

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("Thu, 01 Jan 2026 00:01:30 GMT", 90.0),  # an HTTP-date
        ("Thursday, 01-Jan-26 00:01:30 GMT", 90.0),  # the obsolete RFC 850 form
        ("Wed, 31 Dec 2025 23:00:00 GMT", 0.0),  # in the past: now
        ("Fri, 31 Dec 9999 23:59:59 GMT", RETRY_AFTER_CAP_SECONDS),  # far future: capped
        ("9" * 30, RETRY_AFTER_CAP_SECONDS),  # huge: capped
        ("9" * 5000, RETRY_AFTER_CAP_SECONDS),  # past int()'s digit limit
        (None, None),
        ("", None),
        ("-5", None),
        ("1.5", None),
        ("²", None),  # str.isdigit() says yes; int() says no
        ("soon", None),
        ("Mon, 99 Foo 2026 25:61:61 GMT", None),
    ],
)
def test_parse_retry_after(value, seconds):
    assert parse_retry_after(value, now=NOW) == seconds


def test_a_lower_cap_applies():
    assert parse_retry_after("7200", cap=60) == 60


@given(st.text(max_size=60) | st.from_regex(r"\A[A-Za-z]{3}, \d{1,2} [A-Za-z]{3} -?\d{1,6} \d\d:\d\d:\d\d [A-Z+\-\d]{0,5}\Z"))
def test_any_header_value_gives_none_or_a_bounded_delay(value):
    seconds = parse_retry_after(value, now=NOW)
    assert seconds is None or 0.0 <= seconds <= RETRY_AFTER_CAP_SECONDS
