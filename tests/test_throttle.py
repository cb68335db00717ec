"""The per-address throttle of wrong credentials: lock-outs short, bounded, forgetting."""

from __future__ import annotations

from relay.throttle import Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lockout_starts_after_the_threshold_doubles_and_never_exceeds_60_s():
    clock = Clock()
    t = Throttle(failures=3, clock=clock)
    assert [t.failed("203.0.113.1") for _ in range(2)] == [0, 0]
    assert t.locked("203.0.113.1") == 0
    waits = []
    for _ in range(12):
        waits.append(t.failed("203.0.113.1"))
        assert t.locked("203.0.113.1") == waits[-1]
        clock.now += waits[-1]  # the client waits out each lock-out, then tries again
        assert t.locked("203.0.113.1") == 0
    assert waits[:7] == [1, 2, 4, 8, 16, 32, 60]
    assert max(waits) == 60


def test_addresses_are_apart_and_a_success_clears_one():
    t = Throttle(failures=1, clock=Clock())
    assert t.failed("203.0.113.1") == 1
    assert t.locked("203.0.113.2") == 0
    t.succeeded("203.0.113.1")
    assert t.locked("203.0.113.1") == 0


def test_an_ipv6_client_is_one_slash_64():
    t = Throttle(failures=1, clock=Clock())
    t.failed("2001:db8:1:2::1")
    assert t.locked("2001:db8:1:2:ffff::9") == 1  # same /64
    assert t.locked("2001:db8:1:3::1") == 0


def test_memory_is_bounded_and_old_failures_are_forgotten():
    clock = Clock()
    t = Throttle(failures=2, max_entries=100, forget_after=600, clock=clock)
    for i in range(10_000):
        t.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(t) == 100
    t.failed("198.51.100.1")
    clock.now += 601
    assert t.failed("198.51.100.1") == 0  # counting started over
