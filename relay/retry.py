"""The retry policy, as a pure function: attempt number in, delay or "stop" out.

Exponential backoff with jitter (tenacity's `wait_exponential_jitter` does the
maths); a destination's Retry-After wins when it asks for longer, clamped so a
bogus header cannot park a delivery for days. `parse_retry_after` reads the header
itself, defensively, for every destination and API client.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from tenacity import wait_exponential_jitter


@dataclass(frozen=True, slots=True)
class _State:
    attempt_number: int


class RetryPolicy:
    def __init__(
        self,
        *,
        base: float = 5.0,
        maximum: float = 3600.0,
        retry_after_max: float = 3600.0,
    ) -> None:
        self._wait = wait_exponential_jitter(multiplier=base, max=maximum, exp_base=2, jitter=base)
        self.retry_after_max = retry_after_max

    def next_delay(
        self, attempt: int, max_attempts: int, retry_after: float | None = None
    ) -> float | None:
        """Seconds until the next try after failed attempt `attempt` (1-based), or None to stop."""
        if attempt >= max_attempts:
            return None
        delay = float(self._wait(_State(attempt)))  # type: ignore[arg-type]
        if retry_after is not None:
            delay = max(delay, min(max(retry_after, 0.0), self.retry_after_max))
        return delay


RETRY_AFTER_CAP_SECONDS = 86400.0  # no answer may park a delivery or look-up longer than a day
_MAX_DIGITS = 12  # more digits than that is past the cap anyway (and int() of 5,000 digits raises)


def parse_retry_after(
    value: str | None, *, now: float | None = None, cap: float = RETRY_AFTER_CAP_SECONDS
) -> float | None:
    """A Retry-After header value (RFC 9110 §10.2.3) as seconds, within 0..cap.

    delay-seconds (ASCII digits) or an HTTP-date; a date in the past is 0, a huge
    number or a far-future date is `cap`. None when absent or unreadable (negative
    numbers, fractions, garbage): the caller then uses its own backoff. Every place
    that reads a Retry-After from a destination or an API goes through here, so no
    answer can make an attempt an internal error or park it for years.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return cap if len(value) > _MAX_DIGITS else min(float(value), cap)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" in the date: UTC, no zone information
        when = when.replace(tzinfo=UTC)
    base = datetime.now(UTC) if now is None else datetime.fromtimestamp(now, UTC)
    try:
        seconds = (when - base).total_seconds()
    except OverflowError:
        return cap
    return min(max(seconds, 0.0), cap)
