"""Points in time as users type them on the command line: `--since 48h`, `--since 7d`,
`--since 2026-11-30`, `--since 2026-11-30T08:00:00+01:00`.

`parse_time(text, now)` returns epoch seconds; a date or time without an offset is UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now: float) -> float:
    """Epoch seconds for an ISO 8601 date/time or a relative span back from `now`
    (`90m`, `48h`, `7d`, `2w`). Raises ValueError with a message fit to print."""
    match = _RELATIVE.match(text)
    if match:
        return _printable(text, now - float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text[:40]!r} is not a time: use an ISO 8601 date or time"
            " (2026-11-30, 2026-11-30T08:00:00Z) or a span such as 90m, 48h, 7d"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _printable(text, moment.timestamp())


def _printable(text: str, seconds: float) -> float:
    """`seconds`, unless no date can show it (a span of millions of days): commands print
    the times they use, so such a time is refused here rather than crash there."""
    try:
        datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"{text[:40]!r} is too far back: give a time after the year 1") from None
    return seconds
