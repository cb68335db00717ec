import pytest

from relay.errors import ConfigError
from relay.settings import load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    import os

    for key in list(os.environ):
        if key.startswith("RELAY_") or key in ("DATABASE_URL", "PORT"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_defaults_start_with_nothing_configured():
    s = load_settings()
    assert s.store_url == "sqlite:///relay.db"
    assert s.listen_port == 8000
    assert s.enabled_sources() == [] and s.enabled_destinations() == []
    assert s.simmer.rate_limit_per_minute == 50


def test_env_nesting_csv_secrets_and_fallbacks(monkeypatch):
    monkeypatch.setenv("RELAY_STRIPE__WEBHOOK_SECRETS", "whsec_a, whsec_b")
    monkeypatch.setenv("DATABASE_URL", "postgres://u:pw@db:5432/relay")
    monkeypatch.setenv("PORT", "5055")
    s = load_settings()
    assert [x.get_secret_value() for x in s.stripe.webhook_secrets] == ["whsec_a", "whsec_b"]
    assert s.store_url == "postgresql://u:pw@db:5432/relay"
    assert s.listen_port == 5055
    described = s.describe()
    assert described["database"] == "postgresql://u:********@db:5432/relay"
    assert described["sources"]["stripe"]["webhook_secrets"] == ["********", "********"]
    monkeypatch.setenv("RELAY_DATABASE_URL", "sqlite:///other.db")
    assert load_settings().store_url == "sqlite:///other.db"


def test_toml_file_with_env_winning(monkeypatch, tmp_path):
    (tmp_path / "relay.toml").write_text(
        '[simmer]\nsecret_key = "simmer_sk_file"\nproject_id = "proj_file"\nrate_limit_per_minute = 20\n'
        '[worker]\nconcurrency = 4\n'
    )
    monkeypatch.setenv("RELAY_SIMMER__PROJECT_ID", "proj_env")
    s = load_settings()
    assert s.simmer.enabled
    assert s.simmer.project_id == "proj_env"
    assert s.simmer.rate_limit_per_minute == 20
    assert s.worker.concurrency == 4


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RELAY_SIMMER__SECRET_KEY": "k"}, "RELAY_SIMMER__PROJECT_ID"),
        ({"RELAY_IMPACT__CAMPAIGN_ID": "abc"}, "RELAY_IMPACT__CAMPAIGN_ID"),
        ({"RELAY_IMPACT__KINDS": "purchase,bogus"}, "RELAY_IMPACT__KINDS"),
        ({"RELAY_DATABASE_URL": "mysql://x"}, "RELAY_DATABASE_URL"),
        ({"PORT": "http"}, "PORT"),
        ({"RELAY_CONFIG_FILE": "/nonexistent.toml"}, "RELAY_CONFIG_FILE"),
    ],
)
def test_invalid_configuration_names_the_variable(monkeypatch, env, named):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=named):
        load_settings()


def test_pagent_needs_its_project_currency(monkeypatch):
    monkeypatch.setenv("RELAY_PAGENT__API_KEY", "pk")
    with pytest.raises(ConfigError, match="RELAY_PAGENT__CURRENCY is required"):
        load_settings()
    monkeypatch.setenv("RELAY_PAGENT__CURRENCY", "EUR")
    assert load_settings().enabled_destinations() == ["pagent"]


def test_printed_urls_hide_passwords_and_query_values(monkeypatch):
    from relay.settings import mask_url

    assert mask_url("postgresql://relay:pw@db:5432/relay?password=pw2") == (
        "postgresql://relay:********@db:5432/relay?password=********")
    assert mask_url("sqlite:////var/lib/relay.db?busy_timeout=100") == "sqlite:////var/lib/relay.db?busy_timeout=100"
    monkeypatch.setenv("RELAY_WEBHOOK__URL", "https://hooks.example.org/in?token=tok123")
    monkeypatch.setenv("RELAY_WEBHOOK__SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    described = str(load_settings().describe())
    assert "tok123" not in described and "hooks.example.org" in described
