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
