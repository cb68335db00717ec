from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# The session-wide destination stand-ins (reset for every test), for tests anywhere.
from tests.destinations.conftest import (  # noqa: F401 - fixtures
    converge_emu,
    converge_server,
    pagent_emu,
    pagent_server,
    topmail_emu,
    topmail_server,
    webhook_emu,
    webhook_server,
)
from tests.emulators.impact import ImpactEmulator
from tests.emulators.simmer import SimmerEmulator
from tests.helpers import (
    IMPACT_SID,
    IMPACT_TOKEN,
    SIMMER_KEY,
    SIMMER_PROJECT,
    STRIPE_SECRET,
    RelayProcess,
)


@pytest.fixture(scope="session")
def simmer_server() -> Iterator[SimmerEmulator]:
    with SimmerEmulator(SIMMER_KEY, SIMMER_PROJECT) as emu:
        yield emu  # type: ignore[misc]


@pytest.fixture(scope="session")
def impact_server() -> Iterator[ImpactEmulator]:
    with ImpactEmulator(IMPACT_SID, IMPACT_TOKEN) as emu:
        yield emu  # type: ignore[misc]


@pytest.fixture
def simmer(simmer_server: SimmerEmulator) -> Iterator[SimmerEmulator]:
    """The Simmer stand-in, as fresh as a new one (one server per session, reset per test)."""
    simmer_server.reset()
    yield simmer_server
    simmer_server.reset()


@pytest.fixture
def impact(impact_server: ImpactEmulator) -> Iterator[ImpactEmulator]:
    impact_server.reset()
    yield impact_server
    impact_server.reset()


def core_env(db: Path, simmer_url: str, impact_url: str) -> dict[str, str]:
    """Stripe in; Simmer and impact.com out; retries fast enough for tests."""
    return {
        "RELAY_DATABASE_URL": f"sqlite:///{db}",
        "RELAY_STRIPE__WEBHOOK_SECRETS": f"whsec_other_endpoint,{STRIPE_SECRET}",
        "RELAY_SIMMER__SECRET_KEY": SIMMER_KEY,
        "RELAY_SIMMER__PROJECT_ID": SIMMER_PROJECT,
        "RELAY_SIMMER__URL": f"{simmer_url}/api/conversion",
        "RELAY_IMPACT__ACCOUNT_SID": IMPACT_SID,
        "RELAY_IMPACT__AUTH_TOKEN": IMPACT_TOKEN,
        "RELAY_IMPACT__CAMPAIGN_ID": "1000",
        "RELAY_IMPACT__EVENT_TYPE_ID": "9876",
        "RELAY_IMPACT__URL": impact_url,
        "RELAY_WORKER__RETRY_BASE_SECONDS": "0.2",
        "RELAY_WORKER__RETRY_MAX_SECONDS": "1",
        "RELAY_WORKER__LEASE_SECONDS": "3",
        "RELAY_WORKER__POLL_SECONDS": "0.5",
    }


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator:
    started: list[RelayProcess] = []

    def make(env: dict[str, str], *args: str, port: int | None = None, start: bool = True) -> RelayProcess:
        proc = RelayProcess(env, tmp_path, port, args)
        started.append(proc)
        return proc.start() if start else proc

    yield make
    for proc in started:
        proc.stop()


@pytest.fixture
def relay(tmp_path: Path, simmer: SimmerEmulator, impact: ImpactEmulator, relay_factory) -> RelayProcess:
    return relay_factory(core_env(tmp_path / "relay.db", simmer.url, impact.url))


PROCESS_FIXTURES = frozenset({"relay", "relay_factory"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that start real relay processes `process` (`-m "not process"`: the
    fast in-process loop, and what scripts/mutate runs per mutant)."""
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.process)
