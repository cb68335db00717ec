"""Limits on what unauthenticated clients can make relay hold while it reads their bodies.

A webhook's body must be read before its signature can be checked, so anyone can make
relay buffer up to `RELAY_MAX_BODY_BYTES` per connection. `BodyBudget` bounds the total:
every request reserves its declared Content-Length (a chunked body, the largest allowed
size) before reading anything and gives it back when it has been read; a request that
does not fit is answered 503 with Retry-After, unread. Bodies over 64 KiB (no processor
sends webhooks that large in practice) may hold at most half of the budget, so a few
large bodies trickling in cannot crowd out the small, real webhooks. One request is
always admitted when nothing else is being read, so a budget smaller than one body
cannot lock every webhook out.

The cost on the webhook path is a few integer operations; there are no locks, since the
event loop runs one request step at a time.
"""

from __future__ import annotations

LARGE = 64 * 1024


class BodyBudget:
    """The bytes of bodies being read at once, bounded by `limit` (`limit // 2` for those
    over `large` bytes each)."""

    __slots__ = ("limit", "large", "in_flight", "in_flight_large")

    def __init__(self, limit: int, large: int = LARGE) -> None:
        self.limit = limit
        self.large = large
        self.in_flight = 0
        self.in_flight_large = 0

    def take(self, size: int) -> bool:
        """Reserve `size` bytes; False (nothing reserved) when they do not fit."""
        big = size > self.large
        if self.in_flight and (
            self.in_flight + size > self.limit
            or (big and self.in_flight_large + size > self.limit // 2)
        ):
            return False
        self.in_flight += size
        if big:
            self.in_flight_large += size
        return True

    def give(self, size: int) -> None:
        self.in_flight -= size
        if size > self.large:
            self.in_flight_large -= size
