"""The deploy manifests parse and say what the docs promise (no Docker engine here)."""

from __future__ import annotations

import json
import tomllib

import pytest

from tests.helpers import REPO

yaml = pytest.importorskip("yaml")
DEPLOY = REPO / "deploy"


def test_procfile() -> None:
    lines = dict(
        line.split(":", 1) for line in (REPO / "Procfile").read_text().splitlines() if line.strip()
    )
    assert {k: v.strip() for k, v in lines.items()} == {
        "web": "relay serve", "worker": "relay worker", "release": "relay migrate"
    }


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.startswith("# relay") and "FROM python:3.11-slim" in text
    assert "\nUSER relay\n" in text
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert text.rstrip().endswith('CMD ["relay", "serve"]')


def test_compose() -> None:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = doc["services"]
    assert services["web"]["command"] == ["relay", "serve", "--no-worker"]
    assert services["worker"]["command"] == ["relay", "worker"]
    assert services["worker"]["deploy"]["replicas"] == 2
    assert "healthcheck" in services["db"]
    for name in ("web", "worker", "migrate"):
        assert services[name]["environment"]["DATABASE_URL"].startswith("postgresql://")


def test_fly() -> None:
    doc = tomllib.loads((DEPLOY / "fly.toml").read_text())
    assert set(doc["processes"]) == {"web", "worker"}
    assert doc["processes"]["worker"] == "relay worker"
    assert doc["http_service"]["processes"] == ["web"]
    assert doc["http_service"]["checks"][0]["path"] == "/healthz"
    assert doc["deploy"]["release_command"] == "relay migrate"


def test_render() -> None:
    doc = yaml.safe_load((DEPLOY / "render.yaml").read_text())
    kinds = {s["name"]: s for s in doc["services"]}
    assert kinds["relay-web"]["type"] == "web" and kinds["relay-web"]["healthCheckPath"] == "/healthz"
    assert kinds["relay-worker"]["type"] == "worker"
    assert kinds["relay-worker"]["startCommand"] == "relay worker"
    for service in doc["services"]:
        [db] = [e for e in service["envVars"] if e.get("key") == "DATABASE_URL"]
        assert db["fromDatabase"]["name"] == doc["databases"][0]["name"]


def test_heroku_app_json() -> None:
    doc = json.loads((REPO / "app.json").read_text())
    assert doc["addons"][0]["plan"].startswith("heroku-postgresql")
    assert set(doc["formation"]) == {"web", "worker"}
    assert all(not v.get("value") for v in doc["env"].values())  # no secret in the repo


def test_kubernetes() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "relay.yaml").read_text()))
    by_name = {d["metadata"]["name"]: d for d in docs}
    web = by_name["relay-web"]["spec"]["template"]["spec"]["containers"][0]
    assert web["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert web["envFrom"][0]["secretRef"]["name"] == "relay"
    worker = by_name["relay-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["args"] == ["relay", "worker"]
    assert by_name["relay"]["kind"] == "Service"
