"""`relay check --probe ga4|meta` as a user runs it: a real `relay` process against the
stand-ins' checking endpoints, secrets never printed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.destinations.adruns import GA4_ID, GA4_SECRET, META_TOKEN, PIXEL
from tests.emulators.ga4 import GA4Emulator
from tests.emulators.meta import MetaEmulator
from tests.helpers import REPO


@pytest.fixture(scope="module")
def ga4_emu() -> Iterator[GA4Emulator]:
    with GA4Emulator(GA4_ID, GA4_SECRET) as emu:
        yield emu  # type: ignore[misc]


@pytest.fixture(scope="module")
def meta_emu() -> Iterator[MetaEmulator]:
    with MetaEmulator(PIXEL, META_TOKEN) as emu:
        yield emu  # type: ignore[misc]


def relay_check(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "DATABASE_URL"))}
    full.update({"RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}", "PYTHONPATH": str(REPO)},
                **env)
    return subprocess.run([sys.executable, "-m", "relay", "check", *args], cwd=tmp_path, env=full,
                          capture_output=True, text=True, timeout=60)


def ga4_env(emu: GA4Emulator) -> dict[str, str]:
    return {"RELAY_GA4__MEASUREMENT_ID": GA4_ID, "RELAY_GA4__API_SECRET": GA4_SECRET,
            "RELAY_GA4__URL": emu.url}


def test_probe_ga4_valid(tmp_path, ga4_emu):
    ga4_emu.debug_requests.clear()
    result = relay_check(tmp_path, ga4_env(ga4_emu), "--probe", "ga4")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no validation messages" in result.stdout
    assert GA4_SECRET not in result.stdout + result.stderr
    assert "api_secret=********" in result.stdout
    [seen] = ga4_emu.debug_requests
    assert seen.path == "/debug/mp/collect" and f"api_secret={GA4_SECRET}" in seen.query
    assert b'"validation_behavior":"ENFORCE_RECOMMENDATIONS"' in seen.body
    assert ga4_emu.hits == []  # nothing reached the collect endpoint


def test_probe_ga4_prints_validation_messages(tmp_path, ga4_emu):
    ga4_emu.fail_next(1, 200, body={"validationMessages": [{
        "fieldPath": "events", "description": "Event at index: [0] has invalid name [_x].",
        "validationCode": "NAME_INVALID"}]})
    result = relay_check(tmp_path, ga4_env(ga4_emu), "--probe", "ga4")
    assert result.returncode == 1
    assert "NAME_INVALID: events: Event at index: [0] has invalid name [_x]." in result.stdout


def test_probe_ga4_unreachable_and_unconfigured(tmp_path):
    env = {"RELAY_GA4__MEASUREMENT_ID": GA4_ID, "RELAY_GA4__API_SECRET": GA4_SECRET,
           "RELAY_GA4__URL": "http://127.0.0.1:9"}  # nothing listens on the discard port
    result = relay_check(tmp_path, env, "--probe", "ga4")
    assert result.returncode == 1 and "cannot reach" in result.stdout
    assert GA4_SECRET not in result.stdout + result.stderr
    result = relay_check(tmp_path, {}, "--probe", "ga4")
    assert result.returncode == 1
    assert "RELAY_GA4__MEASUREMENT_ID and RELAY_GA4__API_SECRET" in result.stderr


def test_probe_meta(tmp_path, meta_emu):
    env = {"RELAY_META__PIXEL_ID": PIXEL, "RELAY_META__ACCESS_TOKEN": META_TOKEN,
           "RELAY_META__URL": meta_emu.url}
    result = relay_check(tmp_path, env, "--probe", "meta")
    assert result.returncode == 1 and "RELAY_META__TEST_EVENT_CODE" in result.stderr
    env["RELAY_META__TEST_EVENT_CODE"] = "TEST777"
    meta_emu.test_event_codes.clear()
    result = relay_check(tmp_path, env, "--probe", "meta")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "accepted the test event" in result.stdout and meta_emu.test_event_codes == ["TEST777"]
    bad = relay_check(tmp_path, {**env, "RELAY_META__ACCESS_TOKEN": "EAAexpired"}, "--probe", "meta")
    assert bad.returncode == 1 and "Meta error 190" in bad.stdout
    assert "EAAexpired" not in bad.stdout + bad.stderr and META_TOKEN not in result.stdout
