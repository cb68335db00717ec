"""The retry policy, as a pure function: attempt number in, delay or "stop" out.

Exponential backoff with jitter (tenacity's `wait_exponential_jitter` does the
maths); a destination's Retry-After wins when it asks for longer, clamped so a
bogus header cannot park a delivery for days.
"""

from __future__ import annotations

from dataclasses import dataclass

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
