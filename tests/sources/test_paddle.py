from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from relay.errors import SignatureError
from relay.settings import PaddleSettings
from relay.sources.paddle import PaddleSource
from tests.emulators.simmer import SimmerEmulator
from tests.helpers import FIXTURES, SIMMER_KEY, SIMMER_PROJECT, fixture, wait_until
from tests.sources.conftest import PADDLE_API_KEY, PADDLE_SECRET
from tests.sources.util import dumps, paddle_headers

ENTITY = "paddle/{}.data-entity.paddle-python-sdk.json"


def envelope(event_type: str, data: dict, event_id: str | None = None, **extra) -> dict:
    return {
        "event_id": event_id or f"evt_{event_type.replace('.', '_')}_{data.get('id')}",
        "event_type": event_type,
        "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "notification_id": "ntf_01hv8wptq8987qeep44cyrewp9",
        "data": data,
        **extra,
    }


def entity(name: str) -> dict:
    return fixture(ENTITY.format(name))


def post(app, doc: dict, **kw):
    body = dumps(doc)
    return app.post("paddle", body, paddle_headers(body, **kw))


# ------------------------------------------------------------------ signatures


def _vector_body(case: dict) -> bytes:
    if "raw_body_file" in case:
        raw = (FIXTURES / "vectors" / case["raw_body_file"].split(" ")[0]).read_bytes()
        return raw[:-1] if raw.endswith(b"\n") else raw  # the newline is not signed
    return case["raw_body"].encode()


def test_official_vectors():
    cases = fixture("vectors/signature_vectors.json")["paddle_billing"]["cases"]
    assert len(cases) >= 7
    for case in cases:
        secrets = case.get("secrets_rotation") or [case["secret"]]
        source = PaddleSource(PaddleSettings(webhook_secrets=",".join(secrets)))
        ts = int(case["header"].split(";")[0].split("=")[1])
        headers = {"paddle-signature": case["header"]}
        if case["valid"]:
            source.verify(_vector_body(case), headers, now=ts + 1)
        else:
            with pytest.raises(SignatureError):
                source.verify(_vector_body(case), headers, now=ts + 1)


def test_tolerance_past_and_future():
    source = PaddleSource(PaddleSettings(webhook_secrets=PADDLE_SECRET))
    body = b'{"data": 1}'
    now = 1_700_000_000
    for ts, ok in ((now - 299, True), (now - 301, False), (now + 299, True), (now + 301, False)):
        headers = {"paddle-signature": paddle_headers(body, ts=ts)["Paddle-Signature"]}
        if ok:
            source.verify(body, headers, now)
        else:
            with pytest.raises(SignatureError, match="tolerance|future"):
                source.verify(body, headers, now)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing Paddle-Signature header"),
        ("h1=abc", "Paddle-Signature has no ts"),
        ("ts=1700000000", "Paddle-Signature has no h1 signature"),
        ("ts=yesterday;h1=abc", "Paddle-Signature ts is not a Unix timestamp"),
        ("ts={now};h1=" + "0" * 64, "Paddle-Signature does not match any configured webhook secret"),
    ],
)
def test_bad_signature_is_400_and_nothing_stored(app, header, message):
    body = dumps(envelope("transaction.completed", entity("transaction.completed")))
    headers = {} if header is None else {"Paddle-Signature": header.format(now=int(time.time()))}
    r = app.post("paddle", body, headers)
    assert r.status_code == 400 and r.json() == {"error": message}
    assert app.count("events") == 0


def test_stale_signature_rejected_over_http(app):
    body = dumps(envelope("transaction.completed", entity("transaction.completed")))
    r = app.post("paddle", body, paddle_headers(body, ts=int(time.time()) - 3600))
    assert r.status_code == 400 and "older than the 300 s tolerance" in r.json()["error"]
    assert PADDLE_SECRET not in r.text and app.count("events") == 0


# ------------------------------------------------------------------ conversions


def test_paid_then_completed_is_one_purchase(app):
    paid = post(app, envelope("transaction.paid", entity("transaction.paid")))
    assert paid.json()["status"] == "ignored"
    done = post(app, envelope("transaction.completed", entity("transaction.completed")))
    assert done.json()["conversions"] == [{
        "kind": "purchase", "order_key": "txn_01hv8wptq8987qeep44cyrewp9",
        "total": "652.15", "currency": "USD",
    }]
    [conv] = app.conversions()
    assert (conv.subtotal, conv.tax, conv.customer.id) == (
        Decimal("599.00"), Decimal("53.15"), "ctm_01hv6y1jedq4p1n0yqn5ba3ky4")
    assert conv.customer.email is None  # Paddle sends none; the worker looks it up
    assert conv.items[0].quantity == 10 and conv.items[0].name == "AeroEdit Pro"
    # A redelivery of completed with a new event id still counts once.
    again = post(app, envelope("transaction.completed", entity("transaction.completed"), "evt_other"))
    assert again.json()["conversions"] == [] and len(again.json()["already_recorded"]) == 1


def test_every_kind(app):
    renewal = entity("transaction.completed")
    renewal.update(id="txn_renewal_1", origin="subscription_recurring",
                   custom_data={"irclickid": "click-pd"})
    approved = entity("adjustment.created")
    approved["status"] = "approved"
    docs = [
        envelope("transaction.completed", entity("transaction.completed")),
        envelope("subscription.created", entity("subscription.created")),
        envelope("transaction.completed", renewal),
        envelope("subscription.canceled", entity("subscription.canceled")),
        envelope("adjustment.created", entity("adjustment.created")),  # pending: not yet
        envelope("adjustment.updated", approved),
    ]
    statuses = [post(app, d).json()["status"] for d in docs]
    assert statuses == ["accepted"] * 4 + ["ignored", "accepted"]
    got = [(c.kind, c.order_key, c.total) for c in app.conversions()]
    assert got == [
        ("purchase", "txn_01hv8wptq8987qeep44cyrewp9", Decimal("652.15")),
        ("subscription_started", "sub_01hv8x29kz0t586xy6zn1a62ny", None),
        ("subscription_renewed", "txn_renewal_1", Decimal("652.15")),
        ("subscription_cancelled", "sub_01hv8x29kz0t586xy6zn1a62ny", None),
        ("refund", "adj_01hvgf2s84dr6reszzg29zbvcm", Decimal("1.00")),
    ]
    assert app.conversions()[2].attribution == {"irclickid": "click-pd"}


def test_order_keys_name_the_object_type(app):
    """Paddle ids carry txn_/sub_/adj_ and stay as they are; a plain id gets its type."""
    plain_txn = entity("transaction.completed")
    plain_txn["id"] = "42"
    plain_sub = entity("subscription.created")
    plain_sub["id"] = "42"
    approved = entity("adjustment.created")
    approved.update(id="42", status="approved")
    docs = [envelope("transaction.completed", plain_txn), envelope("subscription.created", plain_sub),
            envelope("adjustment.updated", approved)]
    keys = [c["order_key"] for d in docs for c in post(app, d).json()["conversions"]]
    assert keys == ["transaction-42", "subscription-42", "adjustment-42"]


def test_full_envelope_fixture_subscription_created(app):
    doc = fixture("paddle/subscription.created.full-envelope.pay-rails.json")
    r = post(app, doc)
    assert r.json()["conversions"][0]["kind"] == "subscription_started"


def test_amounts_are_strings_in_lowest_denomination(app):
    jpy = entity("transaction.completed")
    jpy.update(id="txn_jpy", currency_code="JPY")
    jpy["details"]["totals"].update(currency_code="JPY", total="800", subtotal="800", tax="0")
    jpy["details"]["line_items"] = []
    assert post(app, envelope("transaction.completed", jpy)).json()["conversions"][0]["total"] == "800"
    floaty = entity("transaction.completed")
    floaty["id"] = "txn_float"
    floaty["details"]["totals"]["total"] = 652.15
    r = post(app, envelope("transaction.completed", floaty))
    assert r.status_code == 200 and r.json()["status"] == "quarantined"
    assert "string" in r.json()["reason"]


def test_sandbox_marks_test(make_app):
    sandbox = make_app(paddle={"webhook_secrets": PADDLE_SECRET, "sandbox": True})
    r = post(sandbox, envelope("transaction.completed", entity("transaction.completed")))
    assert r.json()["status"] == "ignored" and "test-mode" in r.json()["reason"]


# ------------------------------------------------------------------ email lookup, end to end


def test_email_looked_up_in_worker_reaches_simmer(tmp_path, relay_factory, paddle_api):
    customer = entity("customer.created")
    paddle_api.customers[customer["id"]] = customer
    with SimmerEmulator(SIMMER_KEY, SIMMER_PROJECT) as simmer:
        proc = relay_factory({
            "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'e2e.db'}",
            "RELAY_PADDLE__WEBHOOK_SECRETS": PADDLE_SECRET,
            "RELAY_PADDLE__API_KEY": PADDLE_API_KEY,
            "RELAY_PADDLE__API_BASE": paddle_api.url,
            "RELAY_SIMMER__SECRET_KEY": SIMMER_KEY,
            "RELAY_SIMMER__PROJECT_ID": SIMMER_PROJECT,
            "RELAY_SIMMER__URL": f"{simmer.url}/api/conversion",
            "RELAY_WORKER__POLL_SECONDS": "0.2",
        })
        txn = entity("transaction.completed")
        txn["custom_data"] = {"simmer_anonymous_id": "anon-paddle"}
        body = dumps(envelope("transaction.completed", txn))
        r = proc.post("paddle", body, paddle_headers(body))
        assert r.status_code == 200 and r.json()["deliveries"] == 1, r.text
        wait_until(lambda: simmer.accepted, message="Simmer conversion")
        sent = simmer.accepted[0].parsed
        assert sent["email"] == "jo@example.com"
        assert sent["anonymous_id"] == "anon-paddle"
        assert sent["total_revenue"] == Decimal("652.15") and sent["currency"] == "USD"
        [lookup] = paddle_api.accepted
        assert lookup.path == "/customers/ctm_01hv6y1jedq4p1n0yqn5ba3ky4"
        assert "jo@example.com" not in proc.logs() and PADDLE_API_KEY not in proc.logs()


def test_without_api_key_simmer_skips_for_no_email(tmp_path, relay_factory):
    with SimmerEmulator(SIMMER_KEY, SIMMER_PROJECT) as simmer:
        proc = relay_factory({
            "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'e2e.db'}",
            "RELAY_PADDLE__WEBHOOK_SECRETS": PADDLE_SECRET,
            "RELAY_SIMMER__SECRET_KEY": SIMMER_KEY,
            "RELAY_SIMMER__PROJECT_ID": SIMMER_PROJECT,
            "RELAY_SIMMER__URL": f"{simmer.url}/api/conversion",
            "RELAY_WORKER__POLL_SECONDS": "0.2",
        })
        body = dumps(envelope("transaction.completed", entity("transaction.completed")))
        assert proc.post("paddle", body, paddle_headers(body)).status_code == 200
        rows = wait_until(lambda: proc.deliveries(status="skipped"), message="skipped delivery")
        assert "no buyer email" in json.dumps(rows)
        assert simmer.requests == []


def test_lookup_not_found_degrades_and_is_cached(paddle_api, tmp_path):
    import asyncio

    from relay.enrich import build_enricher
    from relay.settings import Settings

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}",
                        paddle={"webhook_secrets": PADDLE_SECRET, "api_key": PADDLE_API_KEY,
                                "api_base": paddle_api.url})
    source = PaddleSource(settings.paddle)
    [conv] = source.parse(dumps(envelope("transaction.completed",
                                         entity("transaction.completed")))).conversions
    enricher = build_enricher(settings)

    async def run():
        try:
            return [await enricher(conv, "simmer") for _ in range(3)]
        finally:
            await enricher.aclose()

    results = asyncio.run(run())  # the customer is unknown to the API: 404
    assert all(r == conv for r in results)
    assert len(paddle_api.rejected) == 1  # failure cached briefly, not retried per delivery


# ------------------------------------------------------------------ look-up failures (finding 1)


def _enrich_with(app, paddle_url: str, tmp_path, api_key: str = PADDLE_API_KEY):
    """The Paddle purchase recorded from a signed webhook, and an enricher for it."""
    from relay.enrich import build_enricher
    from relay.settings import Settings

    assert post(app, envelope("transaction.completed",
                              entity("transaction.completed"))).status_code == 200
    [conv] = app.conversions()
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}",
                        paddle={"webhook_secrets": PADDLE_SECRET, "api_key": api_key,
                                "api_base": paddle_url})
    return conv, build_enricher(settings)


def _run(enricher, *steps):
    """Await each step(enricher) in one event loop; exceptions are returned, not raised."""
    import asyncio

    async def run():
        out = []
        try:
            for step in steps:
                try:
                    out.append(await step(enricher))
                except Exception as exc:
                    out.append(exc)
            return out
        finally:
            await enricher.aclose()

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("status", "headers", "retry_after"),
    [(503, {}, None), (500, {}, None), (502, {}, None), (429, {"Retry-After": "7"}, 7.0)],
)
def test_transient_lookup_failure_raises_and_is_not_cached(
        app, paddle_api, tmp_path, caplog, status, headers, retry_after):
    from relay.errors import EnrichmentUnavailable, RelayError

    customer = entity("customer.created")
    paddle_api.customers[customer["id"]] = customer
    paddle_api.fail_next(1, status, headers)
    conv, enricher = _enrich_with(app, paddle_api.url, tmp_path)
    failed, retried = _run(enricher, lambda e: e(conv, "simmer"), lambda e: e(conv, "simmer"))
    assert isinstance(failed, EnrichmentUnavailable) and isinstance(failed, RelayError)
    assert str(status) in str(failed) and failed.retry_after == retry_after
    # Not cached: the next attempt asks again and gets the email.
    assert retried.customer.email == "jo@example.com"
    assert len(paddle_api.requests) == 2
    assert PADDLE_API_KEY not in caplog.text and "jo@example.com" not in caplog.text


def test_lookup_timeout_and_connection_failure_raise(app, paddle_api, tmp_path, monkeypatch):
    from relay import enrich
    from relay.errors import EnrichmentUnavailable
    from tests.emulators.base import free_port

    monkeypatch.setattr(enrich, "TIMEOUT_SECONDS", 0.3)
    customer = entity("customer.created")
    paddle_api.customers[customer["id"]] = customer
    paddle_api.delay = 1.0
    conv, enricher = _enrich_with(app, paddle_api.url, tmp_path)

    def recover(e):
        paddle_api.delay = 0
        return e(conv, "simmer")

    timed_out, recovered = _run(enricher, lambda e: e(conv, "simmer"), recover)
    assert isinstance(timed_out, EnrichmentUnavailable) and "timed out" in str(timed_out)
    assert recovered.customer.email == "jo@example.com"

    _, closed = _enrich_with(app, f"http://127.0.0.1:{free_port()}", tmp_path)
    [refused] = _run(closed, lambda e: e(conv, "simmer"))
    assert isinstance(refused, EnrichmentUnavailable) and "ConnectError" in str(refused)


def test_definitive_lookup_answers_degrade_and_are_logged(app, paddle_api, tmp_path, caplog):
    """404 (unknown customer) and 403 (key refused) will not pass: no email, logged, cached."""
    conv, enricher = _enrich_with(app, paddle_api.url, tmp_path)  # the customer is unknown: 404
    with caplog.at_level("WARNING", logger="relay.enrich"):
        results = _run(enricher, *[lambda e: e(conv, "simmer")] * 3)
    assert results == [conv] * 3 and len(paddle_api.rejected) == 1
    assert "404 (entity_not_found): customer not found" in caplog.text

    caplog.clear()
    customer = entity("customer.created")
    paddle_api.customers[customer["id"]] = customer
    _, wrong_key = _enrich_with(app, paddle_api.url, tmp_path, api_key="pdl_apikey_wrong_key_42")
    with caplog.at_level("WARNING", logger="relay.enrich"):
        assert _run(wrong_key, lambda e: e(conv, "simmer")) == [conv]
    assert "403 (invalid_token): the API key was refused" in caplog.text
    assert "pdl_apikey_wrong_key_42" not in caplog.text and "jo@example.com" not in caplog.text
