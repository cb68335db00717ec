"""Two workers and one stored thin event (PostgreSQL: `relay worker` on two machines; here
two ThinEvents on one SQLite file, in process): the object is fetched once, and the event
that one worker accepted is never turned back by the other."""

from __future__ import annotations

import time

import orjson
import pytest

from relay.intake import Intake
from relay.processors.stripe import StripeAPI
from relay.settings import load_settings
from relay.sources import build_sources
from relay.store import ACCEPTED, FETCHING, open_store
from relay.thin import ThinEvents
from tests.backfill.conftest import STRIPE_KEY
from tests.backfill.test_thin import serve_object, thin_event
from tests.helpers import checkout_event

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_thin_event_another_worker_settled_is_left_alone(tmp_path, monkeypatch, stripe_api):
    monkeypatch.setenv("RELAY_STRIPE__WEBHOOK_SECRETS", "whsec_thin_workers")
    monkeypatch.setenv("RELAY_STRIPE__API_KEY", STRIPE_KEY)
    monkeypatch.setenv("RELAY_STRIPE__API_BASE", stripe_api.url)
    settings = load_settings()
    store = open_store(f"sqlite:///{tmp_path / 'relay.db'}")
    await store.open()
    api = StripeAPI(STRIPE_KEY, stripe_api.url)
    try:
        session = checkout_event()["data"]["object"]
        serve_object(stripe_api, session)
        thin = thin_event("checkout.session.completed", session)
        intake = Intake(settings, store, build_sources(settings), {})
        assert (await intake.accept("stripe", orjson.dumps(thin), time.time())).status == FETCHING

        first, second = ThinEvents(settings, store, {}), ThinEvents(settings, store, {})
        [stale] = await store.events([FETCHING], "stripe", with_body=True)  # the second's batch
        assert await first.run_once(api) == 1
        fetches = [r for r in stripe_api.requests if r.path == thin["related_object"]["url"]]
        assert len(fetches) == 1
        stripe_api.objects.clear()  # were it fetched again now: 404, and it would quarantine

        assert await second.resolve(api, stale) == 0  # nothing to do: settled elsewhere
        assert len([r for r in stripe_api.requests if r.path == thin["related_object"]["url"]]) == 1
        [event] = await store.events(ids=[stale.id])
        assert (event.status, event.event_id) == (ACCEPTED, thin["id"])
        assert [c.order_key for _, c in await store.without_delivery("simmer", since=0)] == [session["id"]]
    finally:
        await api.aclose()
        await store.close()
