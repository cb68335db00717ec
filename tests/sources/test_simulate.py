"""`relay simulate <source> [--event E]` samples: signed like the processor signs, shaped
like what it sends for that event, and parsed into the conversion a real one gives."""

from __future__ import annotations

import pytest

from relay.samples import EVENTS, simulate

ALL_SAMPLES = [(source, event) for source, events in EVENTS.items() for event in events]


@pytest.mark.parametrize(("source", "kind"), [
    ("lemonsqueezy", "purchase"), ("paddle", "purchase"), ("chargebee", "purchase"),
    ("stripe", "purchase"),
])
def test_simulated_samples_are_signed_test_events(make_app, source, kind):
    app = make_app(deliver_test_events=True)
    settings = app.client.app.state.relay.settings
    body, headers = simulate(source, settings, None, anonymous_id="anon-sim", click_id=None)
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
