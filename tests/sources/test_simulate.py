"""`relay simulate <source> [--event E]` samples: signed like the processor signs, shaped
like what it sends for that event, and parsed into the conversion a real one gives.

The signatures are checked against each processor's scheme written out here
with hashlib (not relay's verifier, which would only prove that relay agrees
with itself), then the sample is posted to the app.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest

from relay.samples import EVENTS, simulate
from tests.helpers import STRIPE_SECRET, stripe_v1
from tests.sources.conftest import CB_PASSWORD, CB_USER

ALL_SAMPLES = [(source, event) for source, events in EVENTS.items() for event in events]

# What `relay simulate` signs with: the first configured secret (tests/sources/conftest.py).
LS_FIRST = "old-secret-rotated"
PADDLE_FIRST = "pdl_ntfset_other"


def signed_as_the_processor_does(source: str, body: bytes, headers: dict[str, str]) -> None:
    now = int(time.time())
    if source == "stripe":  # t=<unix>,v1=<hex HMAC-SHA256 of "t.body", key = whole whsec_ secret>
        t, v1 = (part.split("=", 1)[1] for part in headers["Stripe-Signature"].split(","))
        assert abs(int(t) - now) <= 60 and v1 == stripe_v1(body, STRIPE_SECRET, int(t))
    elif source == "lemonsqueezy":  # X-Signature: hex HMAC-SHA256 of the raw body
        assert headers["X-Signature"] == hmac.new(LS_FIRST.encode(), body, hashlib.sha256).hexdigest()
    elif source == "paddle":  # Paddle-Signature: ts=<unix>;h1=<hex HMAC-SHA256 of "ts:body">
        ts, h1 = (part.split("=", 1)[1] for part in headers["Paddle-Signature"].split(";"))
        assert abs(int(ts) - now) <= 60
        assert h1 == hmac.new(PADDLE_FIRST.encode(), f"{ts}:".encode() + body, hashlib.sha256).hexdigest()
    elif source == "chargebee":  # HTTP Basic with the webhook's username and password
        assert headers["Authorization"] == "Basic " + base64.b64encode(f"{CB_USER}:{CB_PASSWORD}".encode()).decode()
    else:
        raise AssertionError(source)
    assert headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(("source", "kind"), [
    ("lemonsqueezy", "purchase"), ("paddle", "purchase"), ("chargebee", "purchase"),
    ("stripe", "purchase"),
])
def test_simulated_samples_are_signed_test_events(make_app, source, kind):
    app = make_app(deliver_test_events=True)
    settings = app.client.app.state.relay.settings
    body, headers = simulate(source, settings, None, anonymous_id="anon-sim", click_id=None)
    signed_as_the_processor_does(source, body, headers)
    r = app.post(source, body, headers)
    assert r.status_code == 200, r.text
    assert r.json()["conversions"][0]["kind"] == kind
    [conv] = app.conversions()
    assert conv.livemode is False and conv.attribution == {"simmer_anonymous_id": "anon-sim"}
    ignoring = make_app()
    assert ignoring.post(source, body, headers).json()["status"] == "ignored"


@pytest.mark.parametrize(("source", "event"), ALL_SAMPLES)
def test_each_event_sample_gives_its_own_conversion(make_app, source, event):
    app = make_app(deliver_test_events=True)
    settings = app.client.app.state.relay.settings
    sample = EVENTS[source][event]
    email = "sam@example.org" if sample.email else None
    body, headers = simulate(source, settings, event, email=email, click_id="click-9")
    answer = app.post(source, body, headers).json()
    if sample.gives == "ignored":
        assert answer["status"] == "ignored" and "test" not in answer["reason"], answer
        assert app.conversions() == []
        return
    assert answer["status"] == "accepted", answer
    [conv] = app.conversions()
    assert conv.kind == sample.gives and conv.livemode is False
    if email:
        assert conv.customer.email == email
    else:
        assert conv.customer.email is None
    if source != "paddle" or not event.startswith("adjustment"):  # refunds carry no custom_data
        assert conv.attribution.get("irclickid") == "click-9"
    # Test mode: a relay that does not deliver test events ignores every sample.
    assert make_app().post(source, body, headers).json()["status"] == "ignored"


def test_an_event_without_a_sample_is_an_error_listing_the_known_ones(app):
    settings = app.client.app.state.relay.settings
    with pytest.raises(ValueError, match="no stripe sample for event 'invoice.payed'") as caught:
        simulate("stripe", settings, "invoice.payed")
    assert "invoice.paid" in str(caught.value) and "refund.created" in str(caught.value)


@pytest.mark.parametrize(("source", "event"), [
    ("paddle", None), ("stripe", "customer.subscription.created"), ("stripe", "refund.created"),
])
def test_an_email_the_event_cannot_carry_is_refused(app, source, event):
    settings = app.client.app.state.relay.settings
    with pytest.raises(ValueError, match="carry no .*email|carries no buyer email"):
        simulate(source, settings, event, email="sam@example.org")
