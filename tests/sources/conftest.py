"""Fixtures for source tests: the real app in-process (Starlette TestClient) on a
fresh SQLite ledger, plus local stand-ins of the Paddle and Stripe APIs."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from relay.app import create_app
from relay.conversion import Conversion
from relay.settings import Settings
from tests.emulators.paddle_api import PaddleAPIEmulator
from tests.emulators.stripe_api import StripeAPIEmulator

LS_SECRET = "ls-signing-secret-1"
PADDLE_SECRET = "pdl_ntfset_01hs0t3tw21j988db1pam5xg8m_TestSecretValue0123456789"
CB_USER = "relay-hook"
CB_PASSWORD = "cb-hook-password-1"
PADDLE_API_KEY = "pdl_apikey_test_0123456789"
STRIPE_API_KEY = "sk_test_relay_0123456789"


@dataclass
class App:
    client: TestClient
    db: Path

    def post(self, source: str, body: bytes, headers: dict[str, str]) -> Any:
        return self.client.post(f"/webhooks/{source}", content=body, headers=headers)

    def count(self, table: str) -> int:
        with sqlite3.connect(self.db) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608

    def conversions(self) -> list[Conversion]:
        with sqlite3.connect(self.db) as conn:
            rows = conn.execute("SELECT data FROM conversions ORDER BY id").fetchall()
        return [Conversion.from_json(row[0]) for row in rows]


def source_settings(db: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{db}",
        "lemonsqueezy": {"signing_secret": f"old-secret-rotated,{LS_SECRET}"},
        "paddle": {"webhook_secrets": f"pdl_ntfset_other,{PADDLE_SECRET}"},
        "chargebee": {"username": CB_USER, "password": CB_PASSWORD},
        "stripe": {"webhook_secrets": "whsec_test_secret"},
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def make_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., App]]:
    """An app with every source enabled and no destination (no worker)."""
    monkeypatch.chdir(tmp_path)  # no stray relay.toml
    clients: list[TestClient] = []

    def make(**overrides: Any) -> App:
        db = tmp_path / f"relay-{len(clients)}.db"
        client = TestClient(create_app(source_settings(db, **overrides), run_worker=False))
        client.__enter__()
        clients.append(client)
        return App(client, db)

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def app(make_app: Callable[..., App]) -> App:
    return make_app()


@pytest.fixture
def paddle_api() -> Iterator[PaddleAPIEmulator]:
    with PaddleAPIEmulator(PADDLE_API_KEY) as emu:
        yield emu  # type: ignore[misc]


@pytest.fixture
def stripe_api() -> Iterator[StripeAPIEmulator]:
    with StripeAPIEmulator(STRIPE_API_KEY) as emu:
        yield emu  # type: ignore[misc]
