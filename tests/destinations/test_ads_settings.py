"""Settings for the ad platforms: enabled by their two keys, validated with the variable's
name, secrets masked by `relay check`; the new attribution keys renameable like the others."""

from __future__ import annotations

import json

import pytest

from relay.attribution import extract
from relay.destinations import build_destinations
from relay.errors import ConfigError
from relay.settings import AttributionSettings, load_settings
from tests.destinations.adruns import GA4_ID, GA4_SECRET, META_TOKEN, PIXEL


@pytest.fixture
def env(monkeypatch):
    for key, value in {"RELAY_META__PIXEL_ID": PIXEL, "RELAY_META__ACCESS_TOKEN": META_TOKEN,
                       "RELAY_GA4__MEASUREMENT_ID": GA4_ID, "RELAY_GA4__API_SECRET": GA4_SECRET}.items():
        monkeypatch.setenv(key, value)
    return monkeypatch


def test_enabled_and_masked(env):
    settings = load_settings()
    assert {"meta", "ga4"} <= set(build_destinations(settings))
    described = json.dumps(settings.describe())
    assert META_TOKEN not in described and GA4_SECRET not in described
    meta = settings.describe()["destinations"]["meta"]
    assert meta["api_version"] == "v25.0" and meta["url"] == "https://graph.facebook.com"
    assert settings.ga4.url == "https://www.google-analytics.com"
    assert settings.meta.kinds == ["purchase", "subscription_started", "subscription_renewed"]
    assert settings.ga4.kinds == ["purchase", "subscription_renewed", "refund"]


@pytest.mark.parametrize(("key", "value"), [
    ("RELAY_GA4__MEASUREMENT_ID", "UA-1234-1"),
    ("RELAY_META__PIXEL_ID", "pixel-abc"),
    ("RELAY_META__API_VERSION", "25"),
])
def test_bad_values_name_the_variable(env, key, value):
    env.setenv(key, value)
    with pytest.raises(ConfigError, match=key):
        load_settings()


def test_half_configured_is_an_error(monkeypatch):
    monkeypatch.setenv("RELAY_META__PIXEL_ID", PIXEL)
    with pytest.raises(ConfigError, match="RELAY_META__ACCESS_TOKEN is required"):
        load_settings()


def test_new_attribution_keys_are_read_and_renameable():
    metadata = {"fbp": "fb.1.1596403881668.1116446470", "fbc": "fb.1.1554763741205.abc",
                "fbclid": "IwAR", "client_user_agent": "UA/1", "client_ip_address": "203.0.113.7",
                "event_source_url": "https://shop.example/", "ga_client_id": "1.2",
                "ga_session_id": "3", "gclid": "Cj0", "my_ga": "9.9"}
    found = extract(metadata, AttributionSettings())
    for key in ("fbp", "fbc", "fbclid", "client_user_agent", "client_ip_address", "event_source_url",
                "ga_client_id", "ga_session_id", "gclid"):
        assert found[key] == metadata[key]
    renamed = extract(metadata, AttributionSettings(keys={"ga_client_id": "my_ga"}))
    assert renamed["ga_client_id"] == "9.9"


def test_launcher_points_relay_at_the_ad_stand_ins():
    """`python -m tests.emulators --env-only` (the by-hand launcher) prints working settings."""
    import subprocess
    import sys

    from tests.helpers import REPO

    out = subprocess.run([sys.executable, "-m", "tests.emulators", "--env-only", "--base-port", "9701"],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=True).stdout
    exports = dict(line.removeprefix("export ").replace("'", "").split("=", 1)
                   for line in out.splitlines() if line.startswith("export "))
    assert exports["RELAY_META__URL"] == "http://127.0.0.1:9707"
    assert exports["RELAY_GA4__URL"] == "http://127.0.0.1:9708"
    assert exports["RELAY_GA4__MEASUREMENT_ID"].startswith("G-")
