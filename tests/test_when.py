from datetime import UTC, datetime

import pytest

from relay.when import parse_time

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("48h", NOW - 172_800),
        ("7d", NOW - 604_800),
        ("90m", NOW - 5_400),
        ("2w", NOW - 1_209_600),
        ("2026-11-30", datetime(2026, 11, 30, tzinfo=UTC).timestamp()),
        ("2026-11-30T08:00:00Z", datetime(2026, 11, 30, 8, tzinfo=UTC).timestamp()),
        ("2026-11-30T08:00:00+01:00", datetime(2026, 11, 30, 7, tzinfo=UTC).timestamp()),
    ],
)
def test_times_users_type(text: str, expected: float) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "48", "2026-02-31", "-3d", ""])
def test_nonsense_is_a_clear_error(text: str) -> None:
    with pytest.raises(ValueError, match="not a time"):
        parse_time(text, NOW)


@pytest.mark.parametrize("text", ["99999999d", "9" * 400 + "d", "9999999w"])
def test_a_span_beyond_the_calendar_is_a_clear_error(text: str) -> None:
    """`relay backfill lemonsqueezy --since 99999999d` printed a traceback (year out of
    range) when the time was shown; it is refused with the words to fix it instead."""
    with pytest.raises(ValueError, match="too far back"):
        parse_time(text, NOW)


def test_the_oldest_times_still_print() -> None:
    for text in ("0001-01-02", "700000d"):
        datetime.fromtimestamp(parse_time(text, NOW), UTC)  # no OverflowError or ValueError
