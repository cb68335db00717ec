"""A relay app with the console on, over a real SQLite ledger, Stripe in and the Simmer
stand-in out (a real HTTP server on 127.0.0.1), driven through Starlette's TestClient;
the delivery worker runs in the app as in `relay serve`."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from relay.app import create_app
from relay.settings import Settings
from tests.emulators.simmer import SimmerEmulator
from tests.helpers import SIMMER_KEY, SIMMER_PROJECT, STRIPE_SECRET, body_of, stripe_headers

TOKEN = "console-admin-token-0123456789"
SCREENSHOTS: list[Path] = []  # directories written in this run, printed at its end
CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


def console_settings(db: Path, simmer_url: str | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{db}",
        "admin_token": TOKEN,
        "stripe": {"webhook_secrets": STRIPE_SECRET},
        "worker": {"retry_base_seconds": 0.2, "retry_max_seconds": 1, "poll_seconds": 0.3,
                   "lease_seconds": 5},
    }
    if simmer_url:
        values["simmer"] = {"secret_key": SIMMER_KEY, "project_id": SIMMER_PROJECT,
                            "url": f"{simmer_url}/api/conversion", "max_attempts": 2}
    values.update(overrides)
    return Settings(**values)


@dataclass
class Console:
    client: TestClient
    db: Path

    def sign_in(self, token: str = TOKEN) -> httpx.Response:
        return self.client.post("/console/sign-in", data={"token": token, "next": "/console/"},
                                follow_redirects=False)

    def csrf(self, path: str = "/console/") -> str:
        page = self.client.get(path)
        assert page.status_code == 200, page.text
        found = CSRF.search(page.text)
        assert found, "no CSRF token on the page"
        return found.group(1)

    def flush_tallies(self) -> None:
        """What the app's tally task does every few seconds, now."""
        self.client.portal.call(self.client.app.state.tally.flush)  # type: ignore[union-attr]

    def post_stripe(self, event: dict[str, Any]) -> dict[str, Any]:
        body = body_of(event)
        answer = self.client.post("/webhooks/stripe", content=body, headers=stripe_headers(body))
        assert answer.status_code == 200, answer.text
        return answer.json()


@pytest.fixture
def simmer() -> Iterator[SimmerEmulator]:
    with SimmerEmulator(SIMMER_KEY, SIMMER_PROJECT) as emu:
        emu.rate_limit_per_minute = None
        yield emu  # type: ignore[misc]


@pytest.fixture
def make_console(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Console]]:
    monkeypatch.chdir(tmp_path)  # no stray relay.toml
    clients: list[TestClient] = []

    def make(simmer_url: str | None = None, run_worker: bool = True, **overrides: Any) -> Console:
        base_url = overrides.pop("base_url", "http://testserver")
        db = overrides.pop("db", None) or tmp_path / f"relay-{len(clients)}.db"
        app = create_app(console_settings(db, simmer_url, **overrides), run_worker=run_worker)
        client = TestClient(app, base_url=base_url)
        client.__enter__()
        clients.append(client)
        return Console(client, db)

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def console(make_console: Callable[..., Console], simmer: SimmerEmulator) -> Console:
    made = make_console(simmer.url)
    assert made.sign_in().status_code == 303
    return made


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the browser tests save their screenshots: RELAY_TEST_SCREENSHOTS, or a
    directory under pytest's temporary directory; printed at the end of the run."""
    chosen = os.environ.get("RELAY_TEST_SCREENSHOTS")
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("console-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    SCREENSHOTS.append(path)
    return path


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for path in SCREENSHOTS:
        shots = sorted(p.name for p in path.glob("*.png"))
        if shots:
            terminalreporter.write_line(f"console screenshots ({len(shots)}): {path}")
