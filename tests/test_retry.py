from relay.retry import RetryPolicy


def test_backoff_grows_is_capped_and_stops():
    policy = RetryPolicy(base=5, maximum=60, retry_after_max=120)
    delays = [policy.next_delay(n, 10) for n in range(1, 10)]
    assert all(d is not None for d in delays)
    assert 5 <= delays[0] <= 10
    assert delays[3] > delays[0]
    assert max(delays) <= 60
    assert policy.next_delay(10, 10) is None


def test_retry_after_wins_when_longer_and_is_clamped():
    policy = RetryPolicy(base=1, maximum=10, retry_after_max=120)
    assert policy.next_delay(1, 5, retry_after=90) == 90
    assert policy.next_delay(1, 5, retry_after=86400) == 120
    assert policy.next_delay(1, 5, retry_after=0) <= 2
