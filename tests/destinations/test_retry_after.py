"""A destination's 429 with a garbage, negative, huge or far-future Retry-After is a retry
like any other (never an internal error), and the wait it asks for is capped."""

from __future__ import annotations

import time

import pytest

from relay.destinations.simmer import Simmer
from relay.settings import SimmerSettings
from tests.destinations.conftest import FAST, deliver, sample
from tests.emulators.simmer import SimmerEmulator
from tests.helpers import SIMMER_KEY, SIMMER_PROJECT


@pytest.fixture(scope="module")
def simmer():
    with SimmerEmulator(SIMMER_KEY, SIMMER_PROJECT) as emu:
        yield emu


@pytest.mark.parametrize("value", ["²", "-5", "soon", "1.5", "9" * 400, "Fri, 31 Dec 9999 23:59:59 GMT",
                                   "Mon, 01 Jan 0001 00:00:00 GMT", "Sun, 06 Nov 1994 08:49:37 +9999"])
def test_hostile_retry_after_is_a_capped_retry(simmer, tmp_path, value):
    simmer.fail_next(1, 429, {"Retry-After": value}, {"error": "rate limit exceeded"})
    dest = Simmer(SimmerSettings(secret_key=SIMMER_KEY, project_id=SIMMER_PROJECT,
                                 url=f"{simmer.url}/api/conversion", rate_limit_per_minute=0))
    started = time.time()
    [row] = deliver(tmp_path / "relay.db", {"simmer": dest}, [sample()])
    assert row.status == "pending", row
    assert row.last_status_code == 429, row
    assert "internal error" not in (row.last_error or ""), row.last_error
    assert row.attempts == 1
    assert row.next_attempt_at is not None
    assert started < row.next_attempt_at <= time.time() + FAST.retry_after_max_seconds + 1
