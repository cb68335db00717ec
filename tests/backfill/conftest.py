"""Fixtures for backfill and reconcile: the four processor API stand-ins, the destination
stand-ins, and a `relay` environment wired to them (real processes, a real SQLite file)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import core_env
from tests.emulators.chargebee_api import ChargebeeAPIEmulator
from tests.emulators.impact import ImpactEmulator
from tests.emulators.lemonsqueezy_api import LemonSqueezyAPIEmulator
from tests.emulators.paddle_api import PaddleAPIEmulator
from tests.emulators.simmer import SimmerEmulator
from tests.emulators.stripe_api import StripeAPIEmulator
from tests.sources.conftest import CB_PASSWORD, CB_USER, LS_SECRET, PADDLE_SECRET

STRIPE_KEY = "sk_test_backfill_0123456789"
PADDLE_KEY = "pdl_sdbx_apikey_backfill_0123456789"
LS_KEY = "ls-api-key-backfill-0123456789"
CB_KEY = "test_cbkey_backfill_0123456789"
CB_SITE = "acme-test"


@pytest.fixture
def stripe_api() -> Iterator[StripeAPIEmulator]:
    with StripeAPIEmulator(STRIPE_KEY) as emu:
        yield emu  # type: ignore[misc]


@pytest.fixture
def paddle_api() -> Iterator[PaddleAPIEmulator]:
    with PaddleAPIEmulator(PADDLE_KEY) as emu:
        yield emu  # type: ignore[misc]


@pytest.fixture
def ls_api() -> Iterator[LemonSqueezyAPIEmulator]:
    with LemonSqueezyAPIEmulator(LS_KEY) as emu:
        yield emu  # type: ignore[misc]


@pytest.fixture
def cb_api() -> Iterator[ChargebeeAPIEmulator]:
    with ChargebeeAPIEmulator(CB_KEY) as emu:
        yield emu  # type: ignore[misc]


def env_for(db: Path, simmer: SimmerEmulator, impact: ImpactEmulator, **apis: object) -> dict[str, str]:
    """Every source (webhook secrets and API credentials), Simmer and impact.com out."""
    env = core_env(db, simmer.url, impact.url)
    env.update({
        "RELAY_LEMONSQUEEZY__SIGNING_SECRET": LS_SECRET,
        "RELAY_PADDLE__WEBHOOK_SECRETS": PADDLE_SECRET,
        "RELAY_CHARGEBEE__USERNAME": CB_USER,
        "RELAY_CHARGEBEE__PASSWORD": CB_PASSWORD,
        "RELAY_DELIVER_TEST_EVENTS": "true",  # sandbox-style fixtures (LS test_mode) reach destinations
    })
    if (stripe := apis.get("stripe")) is not None:
        env.update(RELAY_STRIPE__API_KEY=STRIPE_KEY, RELAY_STRIPE__API_BASE=stripe.url)  # type: ignore[attr-defined]
    if (paddle := apis.get("paddle")) is not None:
        env.update(RELAY_PADDLE__API_KEY=PADDLE_KEY, RELAY_PADDLE__API_BASE=paddle.url)  # type: ignore[attr-defined]
    if (ls := apis.get("lemonsqueezy")) is not None:
        env.update(RELAY_LEMONSQUEEZY__API_KEY=LS_KEY, RELAY_LEMONSQUEEZY__API_BASE=ls.url)  # type: ignore[attr-defined]
    if (cb := apis.get("chargebee")) is not None:
        env.update(RELAY_CHARGEBEE__API_KEY=CB_KEY, RELAY_CHARGEBEE__SITE=CB_SITE,
                   RELAY_CHARGEBEE__API_BASE=cb.url)  # type: ignore[attr-defined]
    return env
