"""One table-driven harness: every destination through every documented answer and fault.

Each case records a fresh conversion in a real SQLite ledger, runs the real
Worker in-process against the destination's stand-in over a real socket (or the
RST fault server), and checks the delivery's state after the first attempt:
delivered / pending with the next attempt after Retry-After / failed with the
destination's own error text / failed as ambiguous (pagent, no idempotency key).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from relay.destinations import Destination
from relay.destinations.converge import Converge
from relay.destinations.impact import Impact
from relay.destinations.pagent import Pagent
from relay.destinations.simmer import Simmer
from relay.destinations.topmail import Topmail
from relay.destinations.webhook import Webhook
from relay.settings import (
    ConvergeSettings,
    ImpactSettings,
    PagentSettings,
    SimmerSettings,
    TopmailSettings,
    WebhookSettings,
)
from tests.destinations.conftest import (
    CONVERGE_PATH,
    CONVERGE_TOKEN,
    PAGENT_KEY,
    TOPMAIL_KEY,
    WEBHOOK_SECRET,
    deliver,
    sample,
)
from tests.emulators.base import Emulator
from tests.emulators.faults import ResetServer
from tests.emulators.impact import ImpactEmulator
from tests.emulators.simmer import SimmerEmulator
from tests.helpers import IMPACT_SID, IMPACT_TOKEN, SIMMER_KEY, SIMMER_PROJECT

TIMEOUT = 0.4  # client timeout in the timeout case; the stand-in answers after 1.2 s
RETRY_AFTER = 300  # longer than any backoff the worker picks (≤ 60 s + jitter)


def make(name: str, base: str, **kw: Any) -> Destination:
    """The destination pointed at `base`, with per-case settings overrides."""
    defaults: dict[str, tuple[type[Destination], type[Any], dict[str, Any]]] = {
        "simmer": (Simmer, SimmerSettings, {"secret_key": SIMMER_KEY, "project_id": SIMMER_PROJECT,
                                            "url": f"{base}/api/conversion"}),
        "impact": (Impact, ImpactSettings, {"account_sid": IMPACT_SID, "auth_token": IMPACT_TOKEN,
                                            "campaign_id": 1000, "event_type_id": 9876, "url": base}),
        "pagent": (Pagent, PagentSettings, {"api_key": PAGENT_KEY, "url": base}),
        "topmail": (Topmail, TopmailSettings, {"api_key": TOPMAIL_KEY, "url": base}),
        "converge": (Converge, ConvergeSettings, {"postback_url": base + CONVERGE_PATH,
                                                  "webhook_token": CONVERGE_TOKEN}),
        "webhook": (Webhook, WebhookSettings, {"url": f"{base}/hooks/relay", "secret": WEBHOOK_SECRET}),
    }
    cls, settings_cls, values = defaults[name]
    return cls(settings_cls(**{"max_attempts": 5, **values, **kw}))


@dataclass(frozen=True)
class Case:
    destination: str
    label: str
    fault: tuple[Any, ...] = ()  # ("status", code, headers, body) | ("reset",) | ("timeout",) | ()
    settings: dict[str, Any] = field(default_factory=dict)
    expect: str = "delivered"  # delivered | pending | retry_after | failed | ambiguous | gone
    text: str = ""  # must appear in last_error


def status(code: int, body: Any, headers: dict[str, str] | None = None) -> tuple[Any, ...]:
    return ("status", code, headers or {}, body)


RA = {"Retry-After": str(RETRY_AFTER)}

CASES = [
    # Simmer (legacy API): 400/401/404 permanent, 429 + 502 retried.
    Case("simmer", "success"),
    Case("simmer", "400", status(400, {"error": "email is invalid"}), expect="failed", text="email is invalid"),
    Case("simmer", "401", settings={"secret_key": "simmer_sk_wrong"}, expect="failed", text="Invalid secret key"),
    Case("simmer", "404", settings={"project_id": "proj_other"}, expect="failed", text="Unknown project_id"),
    Case("simmer", "429", status(429, {"error": "rate limit exceeded"}, RA), expect="retry_after"),
    Case("simmer", "502", status(502, {"error": "downstream write failed"}), expect="pending", text="502"),
    # impact.com: 400 permanent (and 401 for bad Basic auth); 5XX and 429 retried.
    Case("impact", "success"),
    Case("impact", "400", status(400, {"Status": "ERROR", "errors": [
        {"field": "OrderId", "level": "ERROR", "message": "OrderId is required"}]}),
        expect="failed", text="OrderId is required"),
    Case("impact", "401", settings={"auth_token": "wrong"}, expect="failed", text="Unauthorized"),
    Case("impact", "429", status(429, {"Status": "ERROR"}, RA), expect="retry_after"),
    Case("impact", "500", status(500, {"Status": "ERROR"}), expect="pending", text="500"),
    # pagent: 400/401 permanent; 429/500 retried; a timeout or reset after sending is ambiguous.
    Case("pagent", "success"),
    Case("pagent", "400", status(400, {"error": "revenue must be an integer"}), expect="failed",
         text="revenue must be an integer"),
    Case("pagent", "401", settings={"api_key": "expired-key"}, expect="failed",
         text="missing, invalid or expired API key"),
    Case("pagent", "429", status(429, {"error": "rate limited"}, RA), expect="retry_after"),
    Case("pagent", "500", status(500, {"error": "internal"}), expect="pending", text="500"),
    # topmail: 400/401/403/404 permanent, 409 = already there, 429/500 retried.
    Case("topmail", "success"),
    Case("topmail", "400", status(400, {"error": {"code": "validation_error", "message": "invalid email",
                                                  "path": "email"}}), expect="failed", text="validation_error"),
    Case("topmail", "401", settings={"api_key": "tm_test_wrong"}, expect="failed", text="unauthorized"),
    Case("topmail", "403", status(403, {"error": {"code": "limit_reached", "message": "plan limit", "path": None}}),
         expect="failed", text="limit_reached"),
    Case("topmail", "404", status(404, {"error": {"code": "contact_not_found",
                                                  "message": "No contact found with the given email or contact_id",
                                                  "path": "email"}}),
         expect="failed", text="contact_not_found"),
    Case("topmail", "409", status(409, {"error": {"code": "duplicate", "message": "exists", "path": "order_id"}}),
         expect="delivered"),
    Case("topmail", "429", status(429, {"error": {"code": "rate_limited", "message": "slow down", "path": None}},
                                  RA), expect="retry_after"),
    Case("topmail", "500", status(500, {"error": {"code": "server_error", "message": "oops", "path": None}}),
         expect="pending", text="server_error"),
    # Converge: statuses undocumented; 4xx permanent, 429/5xx retried.
    Case("converge", "success"),
    Case("converge", "400", status(400, {"error": "aliases must contain 1 to 10 entries"}), expect="failed",
         text="aliases must contain"),
    Case("converge", "401", settings={"webhook_token": "wrong"}, expect="failed", text="invalid webhook token"),
    Case("converge", "404", status(404, {"error": "unknown postback endpoint"}), expect="failed",
         text="unknown postback endpoint"),
    Case("converge", "429", status(429, {"error": "rate limited"}, RA), expect="retry_after"),
    Case("converge", "503", status(503, {"error": "unavailable"}), expect="pending", text="503"),
    # Standard Webhooks: 410 disables the destination; every other non-2xx is retried.
    Case("webhook", "success"),
    Case("webhook", "410", status(410, {"error": "endpoint removed"}), expect="gone", text="endpoint gone"),
    Case("webhook", "400", status(400, {"error": "bad"}), expect="pending", text="400"),
    Case("webhook", "401", settings={"secret": "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"},
         expect="pending", text="signature"),
    Case("webhook", "429", status(429, {"error": "slow"}, RA), expect="retry_after"),
    Case("webhook", "502", status(502, {"error": "bad gateway"}), expect="pending", text="502"),
]
for _name in ("simmer", "impact", "pagent", "topmail", "converge", "webhook"):
    _ambiguous = "ambiguous" if _name == "pagent" else "pending"
    CASES.append(Case(_name, "reset", ("reset",), expect=_ambiguous))
    CASES.append(Case(_name, "timeout", ("timeout",), settings={"timeout_seconds": TIMEOUT}, expect=_ambiguous,
                      text="timeout"))

EMULATORS: dict[str, Callable[[], Emulator]] = {
    "simmer": lambda: SimmerEmulator(SIMMER_KEY, SIMMER_PROJECT),
    "impact": lambda: ImpactEmulator(IMPACT_SID, IMPACT_TOKEN),
    "pagent": lambda: __import__("tests.emulators.pagent", fromlist=["x"]).PagentEmulator(PAGENT_KEY),
    "topmail": lambda: __import__("tests.emulators.topmail", fromlist=["x"]).TopmailEmulator(TOPMAIL_KEY),
    "converge": lambda: __import__("tests.emulators.converge", fromlist=["x"]).ConvergeEmulator(
        CONVERGE_PATH, CONVERGE_TOKEN),
    "webhook": lambda: __import__("tests.emulators.webhook", fromlist=["x"]).WebhookReceiver(WEBHOOK_SECRET),
}


@pytest.fixture(scope="module")
def emulators() -> Iterator[dict[str, Emulator]]:
    started = {name: factory().start() for name, factory in EMULATORS.items()}
    yield started
    for emu in started.values():
        emu.stop()


@pytest.fixture(scope="module")
def reset_server() -> Iterator[ResetServer]:
    with ResetServer() as server:
        yield server


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.destination}-{c.label}")
def test_destination_outcomes(case: Case, emulators: dict[str, Emulator], reset_server: ResetServer,
                              tmp_path: Path) -> None:
    emu = emulators[case.destination]
    emu.reset()
    base = emu.url
    kind = case.fault[0] if case.fault else None
    if kind == "status":
        _, code, headers, body = case.fault
        emu.fail_next(1, code, headers, body)
    elif kind == "reset":
        base = reset_server.url
    elif kind == "timeout":
        emu.delay = 1.2
    dest = make(case.destination, base, **case.settings)
    started = time.time()
    try:
        [row] = deliver(tmp_path / "relay.db", {case.destination: dest}, [sample()])
    finally:
        accepted, rejected, faulted = len(emu.accepted), list(emu.rejected), list(emu.faulted)
        emu.reset()
    error = row.last_error or ""
    assert "buyer@example.com" not in error
    if kind == "status":  # the faulted request itself was valid: the fault was its only answer
        assert [code for _, code in faulted] == [case.fault[1]] and rejected == [], rejected
    if case.expect == "delivered":
        assert row.status == "delivered", row
        if not case.fault:
            assert accepted == 1, rejected
    elif case.expect == "pending":
        assert row.status == "pending", row
        assert row.next_attempt_at is not None and row.next_attempt_at > started
    elif case.expect == "retry_after":
        assert row.status == "pending", row
        assert row.last_status_code == 429
        assert row.next_attempt_at is not None and row.next_attempt_at >= started + RETRY_AFTER - 1
    elif case.expect == "failed":
        assert row.status == "failed", row
        assert not error.startswith("ambiguous")
    elif case.expect == "gone":  # the destination is disabled; this delivery waits, due
        assert row.status == "pending" and row.last_status_code == 410, row
        assert row.next_attempt_at is not None and row.next_attempt_at <= time.time()
    elif case.expect == "ambiguous":
        assert row.status == "failed", row
        assert error.startswith("ambiguous"), error
    assert case.text in error, error
