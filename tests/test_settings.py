from pathlib import Path

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


# ---------------------------------------------------------------- validation (issue 11, item 9)


def problems_of(monkeypatch, env: dict[str, str]) -> str:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    return str(caught.value)


@pytest.mark.parametrize(
    ("env", "named", "says"),
    [
        ({"RELAY_SIMMER__URL": "ftp://x"}, "RELAY_SIMMER__URL", "https://"),
        ({"RELAY_IMPACT__URL": "http://api.impact.example"}, "RELAY_IMPACT__URL", "127.0.0.1"),
        ({"RELAY_STRIPE__API_BASE": "https://"}, "RELAY_STRIPE__API_BASE", "https://"),
        ({"RELAY_PAGENT__URL": "https://ingest.example:99999"}, "RELAY_PAGENT__URL", "port"),
        ({"RELAY_CONVERGE__POSTBACK_URL": "not-a-url"}, "RELAY_CONVERGE__POSTBACK_URL", "https://"),
        ({"PORT": "99999"}, "PORT", "65535"),
        ({"PORT": "0"}, "PORT", "65535"),
        ({"RELAY_PORT": "70000"}, "RELAY_PORT", "65535"),
        ({"RELAY_DATABASE_URL": "postgresql://u@db:99999/relay"}, "RELAY_DATABASE_URL", "port"),
        ({"RELAY_SIMMER__SECRET_KEY": "simmer_sk_…"}, "RELAY_SIMMER__SECRET_KEY", "placeholder"),
        ({"RELAY_SIMMER__PROJECT_ID": "proj_..."}, "RELAY_SIMMER__PROJECT_ID", "placeholder"),
        ({"RELAY_IMPACT__AUTH_TOKEN": "<your token>"}, "RELAY_IMPACT__AUTH_TOKEN", "placeholder"),
        ({"RELAY_STRIPE__WEBHOOK_SECRETS": "whsec_real,whsec_…"}, "RELAY_STRIPE__WEBHOOK_SECRETS",
         "placeholder"),
        ({"RELAY_WEBHOOK__URL": "https://<your host>/hook"}, "RELAY_WEBHOOK__URL", "placeholder"),
        ({"RELAY_CHARGEBEE__USERNAME": "relay", "RELAY_CHARGEBEE__PASSWORD": "short-pass-15ch"},
         "RELAY_CHARGEBEE__PASSWORD", "at least 16 characters"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(monkeypatch, env, named, says):
    message = problems_of(monkeypatch, env)
    assert named in message and says in message


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9101/api/conversion",
        "http://127.8.9.10/x",
        "http://localhost:8080",
        "http://[::1]:9000/",
        "https://app.letsimmer.com/api/conversion",
    ],
)
def test_https_or_plain_http_to_loopback_only(monkeypatch, url):
    monkeypatch.setenv("RELAY_SIMMER__URL", url)
    assert load_settings().simmer.url == url


def test_a_chargebee_password_of_16_characters_is_enough(monkeypatch):
    monkeypatch.setenv("RELAY_CHARGEBEE__USERNAME", "relay")
    monkeypatch.setenv("RELAY_CHARGEBEE__PASSWORD", "x" * 16)
    assert load_settings().enabled_sources() == ["chargebee"]


def test_a_secret_url_is_not_echoed(monkeypatch):
    message = problems_of(
        monkeypatch,
        {
            "RELAY_CONVERGE__POSTBACK_URL": "ftp-token-8c1f2a:example",
            "RELAY_CHARGEBEE__USERNAME": "relay",
            "RELAY_CHARGEBEE__PASSWORD": "pw-9d8e7",
            "RELAY_TOPMAIL__API_KEY": "tm_live_f00d…",
        },
    )
    assert "RELAY_CONVERGE__POSTBACK_URL" in message and "RELAY_TOPMAIL__API_KEY" in message
    for secret in ("8c1f2a", "ftp-token", "pw-9d8e7", "f00d"):
        assert secret not in message


@pytest.mark.parametrize(
    ("variable", "suggestion"),
    [
        ("RELAY_SIMER__SECRET_KEY", "did you mean RELAY_SIMMER__SECRET_KEY?"),
        ("RELAY_SIMMER__SECRETKEY", "did you mean RELAY_SIMMER__SECRET_KEY?"),
        ("RELAY_STRIPE_WEBHOOK_SECRETS", "did you mean RELAY_STRIPE__WEBHOOK_SECRETS?"),
        ("relay_deliver_test_event", "did you mean RELAY_DELIVER_TEST_EVENTS?"),
        ("RELAY_SIMMER__BOGUS", "the simmer settings are RELAY_SIMMER__"),
    ],
)
def test_unknown_relay_variables_are_named_as_likely_typos(monkeypatch, variable, suggestion):
    message = problems_of(monkeypatch, {variable: "whsec_x"})
    assert f"{variable}: no such setting" in message and suggestion in message


def test_variables_like_no_setting_are_warnings_not_errors(monkeypatch):
    from relay.settings import settings_warnings

    monkeypatch.setenv("RELAY_UPSTREAM_REGION", "eu")  # another program's, sharing the prefix
    monkeypatch.setenv("RELAY_TEST_POSTGRES_URL", "postgresql://x")  # the test suite's
    monkeypatch.setenv("RELAY_ATTRIBUTION__KEYS__IRCLICKID", "clickref")  # a mapping's key
    assert load_settings().attribution.keys["irclickid"] == "clickref"
    assert settings_warnings() == ["RELAY_UPSTREAM_REGION is not a relay setting; ignored"]


def test_every_problem_is_reported_at_once(monkeypatch):
    message = problems_of(
        monkeypatch,
        {
            "RELAY_IMPACT__CAMPAIGN_ID": "abc",  # invalid, and impact half-configured
            "RELAY_SIMMER__SECRET_KEY": "sk",  # simmer half-configured
            "RELAY_WEBHOOK__URL": "ftp://hooks.example",  # bad scheme, and no secret
            "RELAY_SIMER__PROJECT_ID": "p",  # a typo
            "PORT": "99999",
        },
    )
    for expected in (
        "RELAY_IMPACT__CAMPAIGN_ID: Input should be a valid integer",
        "RELAY_IMPACT__ACCOUNT_SID is required when RELAY_IMPACT__CAMPAIGN_ID is set",
        "RELAY_IMPACT__AUTH_TOKEN is required",
        "RELAY_IMPACT__EVENT_TYPE_ID is required",
        "RELAY_SIMMER__PROJECT_ID is required when RELAY_SIMMER__SECRET_KEY is set",
        "RELAY_WEBHOOK__URL: must be an https:// URL",
        "RELAY_WEBHOOK__SECRET is required",
        "RELAY_SIMER__PROJECT_ID: no such setting",
        "PORT must be a port number from 1 to 65535",
    ):
        assert expected in message
    assert message.startswith("9 problems:")


def test_the_rules_cover_every_section_and_url_setting(monkeypatch):
    """Built from the models: a section or URL setting added later is covered too."""
    from relay.settings import Settings, _Section, env_name, is_url_field, setting_paths

    paths = setting_paths(Settings).items()
    urls = [p for p, kind in paths if kind == "leaf" and is_url_field(p[-1])]
    urls.remove(("database_url",))
    assert ("simmer", "url") in urls and ("converge", "postback_url") in urls
    message = problems_of(monkeypatch, {env_name(*p): "ftp://x.example" for p in urls})
    for path in urls:
        assert f"{env_name(*path)}: must be an https:// URL" in message
        monkeypatch.delenv(env_name(*path))

    for name, field in Settings.model_fields.items():
        section = field.default
        if not isinstance(section, _Section) or len(section.required) < 2:
            continue
        first, *rest = section.required
        message = problems_of(monkeypatch, {env_name(name, first): "x"})
        for missing in rest:
            assert f"{env_name(name, missing)} is required" in message
        monkeypatch.delenv(env_name(name, first))


def test_toml_syntax_error_names_the_file_and_line(tmp_path):
    (tmp_path / "relay.toml").write_text('[simmer]\nsecret_key = "a"\nproject_id = \n')
    with pytest.raises(ConfigError, match=r"relay.toml: TOML syntax error, line 3, column \d+"):
        load_settings()


def test_unknown_toml_sections_and_keys_are_named(tmp_path):
    (tmp_path / "relay.toml").write_text(
        'databse_url = "sqlite:///x.db"\n'
        '[simer]\nsecret_key = "a"\n[impact]\naccount_sd = "IR1"\n[worker]\nconcurency = 4\n'
        '[topmail]\nurl = "http://api.topmail.example"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "relay.toml: [simer]: no such section; did you mean [simmer]?" in message
    assert "relay.toml: [impact] account_sd: no such setting; did you mean account_sid?" in message
    assert "relay.toml: [worker] concurency: no such setting; did you mean concurrency?" in message
    assert "relay.toml: databse_url: no such setting; did you mean database_url?" in message
    # a value from the file is named by its place in the file
    assert "relay.toml [topmail] url: must be https://" in message


def test_relay_check_process_reports_and_refuses(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_") and k != "PORT"}
    env.update(PORT="99999", RELAY_SIMMER__URL="ftp://x", RELAY_SIMER__SECRET_KEY="k",
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    done = subprocess.run(
        [sys.executable, "-m", "relay", "check"], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "PORT must be a port number from 1 to 65535, got 99999" in done.stderr
    assert "RELAY_SIMMER__URL: must be an https:// URL" in done.stderr
    assert "did you mean RELAY_SIMMER__SECRET_KEY?" in done.stderr
