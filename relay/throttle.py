"""Throttle for repeated wrong credentials from one client address (Chargebee's Basic auth).

After `failures` wrong attempts in a row from one address, that address is locked out:
its requests are answered 429 with Retry-After, without checking their credentials, for
`lockout` seconds, doubling with each further wrong attempt up to `max_lockout` (60 s by
default: a Chargebee that was misconfigured and then corrected is back within a minute,
and a brute force gets about one guess a minute). A right answer clears the address.

Memory is bounded: at most `max_entries` addresses are tracked (the least recently failed
is dropped first) and an address with no failure for `forget_after` seconds is dropped.
IPv6 clients are tracked by their /64, since one host usually holds a whole /64.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from ipaddress import IPv6Network


class Throttle:
    def __init__(
        self,
        *,
        failures: int = 5,
        lockout: float = 1.0,
        max_lockout: float = 60.0,
        forget_after: float = 600.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.lockout = lockout
        self.max_lockout = max_lockout
        self.forget_after = forget_after
        self.max_entries = max_entries
        self._clock = clock
        # address -> [wrong attempts in a row, locked until, last failure]
        self._entries: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def locked(self, address: str | None) -> int:
        """Whole seconds this address must still wait (0: not locked out)."""
        if not self._entries:
            return 0
        entry = self._entries.get(key(address))
        if entry is None:
            return 0
        now = self._clock()
        if now - entry[2] > self.forget_after:
            del self._entries[key(address)]
            return 0
        return max(0, math.ceil(entry[1] - now))

    def failed(self, address: str | None) -> int:
        """Count a wrong attempt; the lock-out it starts in whole seconds (0: none yet)."""
        k, now = key(address), self._clock()
        entry = self._entries.get(k)
        if entry is None or now - entry[2] > self.forget_after:
            entry = [0.0, 0.0, now]
            while len(self._entries) >= self.max_entries:
                self._entries.popitem(last=False)
        entry[0] += 1
        entry[2] = now
        self._entries[k] = entry
        self._entries.move_to_end(k)
        over = int(entry[0]) - self.failures
        if over < 0:
            return 0
        wait = min(self.max_lockout, self.lockout * 2 ** min(over, 32))
        entry[1] = now + wait
        return math.ceil(wait)

    def succeeded(self, address: str | None) -> None:
        if self._entries:
            self._entries.pop(key(address), None)


def key(address: str | None) -> str:
    """The throttle key of a client address: the address, or its /64 for IPv6."""
    if not address:
        return "-"
    if ":" in address:
        try:
            return str(IPv6Network(f"{address}/64", strict=False))
        except ValueError:
            return address
    return address
