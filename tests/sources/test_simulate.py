"""`relay simulate <source>` samples verify and parse as test-mode conversions."""

from __future__ import annotations

import pytest

from relay.samples import simulate


@pytest.mark.parametrize(("source", "kind"), [
    ("lemonsqueezy", "purchase"), ("paddle", "purchase"), ("chargebee", "purchase"),
    ("stripe", "purchase"),
])
def test_simulated_samples_are_signed_test_events(make_app, source, kind):
    app = make_app(deliver_test_events=True)
    settings = app.client.app.state.relay.settings
    body, headers = simulate(source, settings, None, email="buyer@example.com",
                             anonymous_id="anon-sim", click_id=None)
    r = app.post(source, body, headers)
    assert r.status_code == 200, r.text
    assert r.json()["conversions"][0]["kind"] == kind
    [conv] = app.conversions()
    assert conv.livemode is False and conv.attribution == {"simmer_anonymous_id": "anon-sim"}
    ignoring = make_app()
    assert ignoring.post(source, body, headers).json()["status"] == "ignored"
