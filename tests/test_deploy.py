"""The deploy manifests parse and say what the docs promise (no Docker engine here),
the dependency locks pin everything CI and the image install, and relay runs on the
read-only root file system the Kubernetes manifest gives it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

import relay
from tests.conftest import core_env
from tests.emulators.base import free_port
from tests.helpers import REPO, body_of, checkout_event, stop_process, stripe_headers, wait_until
from tests.pgdb import pg_databases, pg_url  # noqa: F401 - fixtures

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
    assert text.startswith("# relay")
    # The base image is pinned by its exact version and digest, not a moving tag.
    [base] = re.findall(r"^FROM (\S+)$", text, re.MULTILINE)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base), base
    # Dependencies come from the hashed lock, before relay itself (without its deps).
    lock = text.index("pip install --require-hashes -r requirements/relay.txt")
    assert text.index("COPY requirements/relay.txt") < lock < text.index("COPY relay ./relay")
    assert "pip install --no-deps --no-build-isolation ." in text
    assert "\nUSER relay\n" in text
    # SQLite on the volume by default, and nothing that would shadow the DATABASE_URL
    # that compose, k8s and Fly set (RELAY_DATABASE_URL takes precedence over it).
    assert "RELAY_DATABASE_URL" not in re.sub(r"#.*", "", text)
    assert text.rindex("WORKDIR /data") > text.index("USER relay") and 'VOLUME ["/data"]' in text
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


def test_compose_refuses_to_start_without_a_postgres_password() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    uses = re.findall(r"\$\{POSTGRES_PASSWORD([^}]*)\}", text)
    assert len(uses) == 2  # the database's password and the relay processes' DATABASE_URL
    assert all(use.startswith(":?") and len(use) > 2 for use in uses), uses  # error, no default
    doc = yaml.safe_load(text)
    assert "${POSTGRES_PASSWORD:?" in doc["services"]["db"]["environment"]["POSTGRES_PASSWORD"]
    assert "relay}" not in text.replace("${POSTGRES_PASSWORD:?", "")
    example = (REPO / ".env.example").read_text()
    assert re.search(r"^POSTGRES_PASSWORD=$", example, re.MULTILINE)  # to fill in, no value


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
        assert service["buildCommand"].startswith("pip install --require-hashes -r requirements/relay.txt")


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


def test_kubernetes_pods_are_pinned_and_locked_down() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "relay.yaml").read_text()))
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in pod["containers"]:
            image = container["image"]
            assert image.rsplit(":", 1)[1] == relay.__version__, image  # a pinned tag
            sec = container["securityContext"]
            assert sec["allowPrivilegeEscalation"] is False
            assert sec["readOnlyRootFilesystem"] is True
            assert sec["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts["/tmp"] in empty_dirs  # the only writable place


# ---------------------------------------------------------------- dependency locks

LOCKS = REPO / "requirements"


def pins(path: Path) -> dict[str, str]:
    """name → version of a pip-compile --generate-hashes file; each must carry a hash."""
    text = path.read_text()
    found: dict[str, str] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = block.split(" ", 1)[0].strip()
        if "==" not in head:
            continue
        name, version = head.split("==")
        assert "--hash=sha256:" in block, f"{path.name}: {head} has no hash"
        found[re.sub(r"[-_.]+", "-", name).lower()] = version
    return found


def declared(requirements: list[str]) -> set[str]:
    return {re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0]).lower() for r in requirements}


def test_locks_pin_and_hash_everything_pyproject_declares() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    runtime, ci = pins(LOCKS / "relay.txt"), pins(LOCKS / "ci.txt")
    build = declared(project["build-system"]["requires"])
    assert declared(project["project"]["dependencies"]) | build <= set(runtime)
    extras = project["project"]["optional-dependencies"]
    assert declared(extras["test"]) | declared(extras["check"]) | set(runtime) <= set(ci)
    # CI tests exactly the versions the image ships.
    assert {name: ci[name] for name in runtime} == runtime
    # And the locks were made from what pyproject.toml declares now.
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "lockstamp"), "--check",
                           "requirements/relay.txt", "requirements/ci.txt"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_stale_lock_is_refused_with_what_to_run(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "lockstamp", tmp_path / "scripts" / "lockstamp")
    shutil.copytree(LOCKS, tmp_path / "requirements")
    pyproject = (REPO / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(
        pyproject.replace('dependencies = [\n', 'dependencies = [\n    "jinja2>=3.1",\n', 1))
    done = subprocess.run([sys.executable, str(tmp_path / "scripts" / "lockstamp"), "--check",
                           "requirements/ci.txt"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "requirements/ci.txt: older than the dependencies pyproject.toml declares" in done.stderr
    assert "run scripts/lock" in done.stderr


def test_ci_checks_then_tests_from_the_lock() -> None:
    run = (REPO / ".ci" / "run").read_text()
    assert run.index("scripts/check") < run.index("exec scripts/test")
    venv = (REPO / "scripts" / "venv").read_text()
    assert "lockstamp --check requirements/ci.txt" in venv
    assert "pip install --quiet --require-hashes -r requirements/ci.txt" in venv
    for script in ("test", "check"):
        assert "\nscripts/venv\n" in (REPO / "scripts" / script).read_text()
    check = (REPO / "scripts" / "check").read_text()
    assert "ruff check ." in check and "mypy relay" in check


# ---------------------------------------------------------------- read-only root file system


@pytest.mark.postgres
def test_relay_runs_on_a_read_only_root_with_only_tmp_writable(
    tmp_path, simmer, impact, pg_url  # noqa: F811
) -> None:
    """What readOnlyRootFilesystem + the /tmp emptyDir of deploy/k8s give relay, made here
    with a private mount namespace: / remounted read-only, a fresh tmpfs on /tmp."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to make a read-only mount namespace")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "DATABASE_URL"))}
    env.update(core_env(tmp_path / "unused.db", simmer.url, impact.url))
    env.pop("RELAY_DATABASE_URL")
    # As the k8s Secret gives it, and as the image sets the rest.
    env.update(DATABASE_URL=pg_url, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(REPO))
    port = free_port()
    script = ("mount -o remount,bind,ro / && mount -t tmpfs -o size=64m tmpfs /tmp "
              '&& ! touch /relay-write-probe 2>/dev/null && exec "$@"')
    log = tmp_path / "relay.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
             sys.executable, "-m", "relay", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        def healthy() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 30, message="relay on a read-only root")
        body = body_of(checkout_event(metadata={"irclickid": "ro-click"}))
        answer = httpx.post(f"http://127.0.0.1:{port}/webhooks/stripe", content=body,
                            headers=stripe_headers(body), timeout=30)
        assert answer.status_code == 200 and answer.json()["status"] == "accepted", answer.text
        wait_until(lambda: simmer.accepted and impact.accepted, 30, message="delivered")
    finally:
        stop_process(proc)
    text = log.read_text(errors="replace")
    assert "Read-only file system" not in text and "Traceback" not in text, text
    assert not (Path("/") / "relay-write-probe").exists()
