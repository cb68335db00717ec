"""Each destination's requests pass its stand-in's full rule set, and what cannot pass is skipped.

Requests are built by the destination modules and sent straight to the
stand-ins (no worker), over awkward but valid conversions: zero- and
three-decimal currencies, long order keys, missing optional ids. The amounts
each destination receives are checked in test_amounts.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from relay.conversion import Customer
from relay.destinations import Skip
from relay.destinations.converge import Converge
from relay.destinations.pagent import Pagent
from relay.destinations.topmail import Topmail
from relay.destinations.webhook import Webhook
from relay.settings import ConvergeSettings, PagentSettings, TopmailSettings, WebhookSettings
from tests.destinations.conftest import (
    CONVERGE_PATH,
    CONVERGE_TOKEN,
    PAGENT_KEY,
    TOPMAIL_KEY,
    WEBHOOK_SECRET,
    deliver,
    sample,
)
from tests.helpers import FIXTURES

VARIANTS = {
    "usd": {},
    "jpy": {"currency": "JPY", "total": Decimal("800"), "subtotal": Decimal("800"), "tax": None,
            "shipping": None, "items": ()},
    "bhd": {"currency": "BHD", "total": Decimal("12.345"), "tax": Decimal("0.345"), "shipping": None},
    "long-key": {"order_key": "x" * 300},
    "no-visit": {"attribution": {"pagent_session_id": "s", "pagent_user_id": "u", "pagent_conversion_id": "g",
                                 "topmail_campaign_id": "not-a-uuid"}},
    "zero": {"total": Decimal("0.00"), "tax": Decimal("0"), "subtotal": Decimal("0"), "items": ()},
}
def now() -> datetime:
    """The moment of building, taken when a test runs (not when the module was imported)."""
    return datetime.now(UTC)


KINDS = ("purchase", "subscription_started", "subscription_renewed", "subscription_cancelled")


def send(request: httpx.Request) -> httpx.Response:
    with httpx.Client(timeout=5) as client:
        return client.send(request)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("kind", KINDS)
def test_every_request_passes_the_stand_ins(variant, kind, pagent_emu, topmail_emu, converge_emu,
                                            webhook_emu):
    conv = sample(kind, **VARIANTS[variant])
    dests = [
        (Pagent(PagentSettings(api_key=PAGENT_KEY, url=pagent_emu.url)), pagent_emu),
        (Topmail(TopmailSettings(api_key=TOPMAIL_KEY, url=topmail_emu.url)), topmail_emu),
        (Converge(ConvergeSettings(postback_url=converge_emu.url + CONVERGE_PATH,
                                   webhook_token=CONVERGE_TOKEN)), converge_emu),
        (Webhook(WebhookSettings(url=webhook_emu.url + "/hooks/relay", secret=WEBHOOK_SECRET)), webhook_emu),
    ]
    for dest, _emu in dests:
        built = dest.build(conv, now())
        assert not isinstance(built, Skip), (dest.name, built)
        r = send(built)
        assert r.status_code in (200, 201), (dest.name, r.status_code, r.text)


def test_pagent_body():
    # 2024-08-02T07:55:24.987654Z, written as pagent's Unix milliseconds by hand.
    conv = sample(currency="JPY", total=Decimal("800"),
                  occurred_at=datetime(2024, 8, 2, 7, 55, 24, 987654, tzinfo=UTC))
    body = json.loads(Pagent(PagentSettings(api_key="k")).build(conv, now()).content)
    assert body["session_data"] == {"session_id": "sess-1", "user_id": "user-1",
                                    "conversion_id": "goal-uuid-1", "visit_id": "visit-1"}
    assert body["revenue"] == 800 and body["label"] == "purchase"
    assert body["time"] == 1722585324987
    pacific = datetime(2024, 8, 1, 23, 55, 24, 987654, tzinfo=timezone(timedelta(hours=-8)))  # the same instant
    assert json.loads(Pagent(PagentSettings(api_key="k")).build(
        sample(occurred_at=pacific), now()).content)["time"] == 1722585324987
    whole = sample(occurred_at=datetime(2024, 8, 2, 7, 55, 24, tzinfo=UTC))
    assert json.loads(Pagent(PagentSettings(api_key="k")).build(whole, now()).content)["time"] == 1722585324000
    assert json.loads(Pagent(PagentSettings(api_key="k")).build(sample(), now()).content)["revenue"] == 4900
    bhd = sample(currency="BHD", total=Decimal("1.234"))
    assert json.loads(Pagent(PagentSettings(api_key="k")).build(bhd, now()).content)["revenue"] == 1234


def test_pagent_skips():
    p = Pagent(PagentSettings(api_key="k"))
    assert p.build(sample(attribution={}), now()) == Skip(
        "no pagent session ids (pagent_session_id and pagent_user_id are needed)")
    no_goal = sample(attribution={"pagent_session_id": "s", "pagent_user_id": "u"})
    assert "goal label matched nothing" in p.build(no_goal, now()).reason
    eur = Pagent(PagentSettings(api_key="k", currency="EUR")).build(sample(), now())
    assert isinstance(eur, Skip) and "currency" in eur.reason


def test_topmail_body():
    t = Topmail(TopmailSettings(api_key="tm_test_x", subscription_type="upgrade", attribution_window=30))
    req = t.build(sample(), now())
    body = json.loads(req.content)
    assert body["type"] == "purchase" and body["campaign_id"].count("-") == 4
    assert req.content.count(b'"revenue":49.00') == 1
    assert body["attribution_window"] == 30 and body["attribution_model"] == "last_touch"
    assert "buyer@example.com" not in json.dumps(body["metadata"])
    again = t.build(sample(order_key=body["metadata"]["order_key"]), now())
    assert again.headers["Idempotency-Key"] == req.headers["Idempotency-Key"]
    assert json.loads(t.build(sample("subscription_started"), now()).content)["type"] == "upgrade"
    assert json.loads(t.build(sample("subscription_renewed"), now()).content)["type"] == "custom"
    long = json.loads(t.build(sample(order_key="y" * 300), now()).content)
    assert len(long["order_id"]) <= 100
    assert "campaign_id" not in json.loads(t.build(sample(attribution={"topmail_campaign_id": "abc"}), now()).content)
    assert isinstance(t.build(sample(customer=Customer(id="cus_1")), now()), Skip)
    assert isinstance(t.build(sample("refund"), now()), Skip)


def test_converge_body():
    c = Converge(ConvergeSettings(postback_url="http://127.0.0.1:1/x", new_customer_default=False))
    names = {k: json.loads(c.build(sample(k), now()).content)["event_name"] for k in KINDS}
    assert names == {"purchase": "Placed Order", "subscription_started": "Started Subscription",
                     "subscription_renewed": "Placed Recurring Subscription Order",
                     "subscription_cancelled": "Cancelled Subscription"}
    conv = sample(new_customer=True)
    body = json.loads(c.build(conv, now()).content)
    assert body["event_id"] == f"stripe:purchase:{conv.order_key}"
    assert body["properties"]["$is_new_customer"] is True
    assert json.loads(c.build(sample(), now()).content)["properties"]["$is_new_customer"] is False
    assert body["aliases"] == ["urn:email:buyer@example.com"]
    assert body["timestamp"].endswith("+00:00")
    assert b'"total_price":49.00' in c.build(conv, now()).content
    assert c.build(sample(customer=Customer(id="cus_1")), now()).reason.startswith("no alias")
    assert isinstance(c.build(sample("refund"), now()), Skip)
    assert "X-Webhook-Token" not in c.build(conv, now()).headers


def test_standard_webhooks_vector():
    vectors = json.loads((FIXTURES / "vectors" / "signature_vectors.json").read_text())
    from standardwebhooks.webhooks import Webhook as Signer
    for case in vectors["standard_webhooks_svix"]["cases"]:
        moment = datetime.fromtimestamp(case["timestamp"], UTC)
        assert Signer(case["secret"]).sign(case["msg_id"], moment, case["payload"]) == case["signature"]


def test_webhook_headers_stable_id_fresh_timestamp():
    w = Webhook(WebhookSettings(url="http://127.0.0.1:1/h", secret=WEBHOOK_SECRET))
    conv = sample()
    a = w.build(conv, datetime.fromtimestamp(1_700_000_000, UTC))
    b = w.build(conv, datetime.fromtimestamp(1_700_000_100, UTC))
    assert a.headers["webhook-id"] == b.headers["webhook-id"] and "." not in a.headers["webhook-id"]
    assert a.headers["webhook-timestamp"] == "1700000000" and b.headers["webhook-timestamp"] == "1700000100"
    assert a.headers["webhook-signature"].startswith("v1,")
    assert a.headers["webhook-signature"] != b.headers["webhook-signature"]
    body = json.loads(a.content)
    assert body["type"] == "conversion.purchase" and body["version"] == 1
    assert body["data"]["total"] == "49.00" and body["data"]["net"] == "45.00"


def test_webhook_secret_validated():
    with pytest.raises(ValueError):
        WebhookSettings(url="http://x", secret="not-whsec")
    with pytest.raises(ValueError):
        WebhookSettings(url="http://x", secret="whsec_c2hvcnQ=")


def test_pagent_batch_one_request(tmp_path: Path, pagent_emu):
    pagent_emu.requests.clear()
    dest = Pagent(PagentSettings(api_key=PAGENT_KEY, url=pagent_emu.url))
    convs = [sample() for _ in range(5)] + [sample(attribution={})]
    rows = deliver(tmp_path / "b.db", {"pagent": dest}, convs)
    statuses = sorted(r.status for r in rows)
    assert statuses == ["delivered"] * 5 + ["skipped"]
    bulk = [s for s in pagent_emu.requests if s.path == "/v2/conversions/bulk"]
    assert len(bulk) == 1 and len(json.loads(bulk[0].body)["events"]) == 5
    assert [r for r in pagent_emu.requests if r.path == "/v2/conversions"] == []


def test_pagent_batch_failure_settles_each(tmp_path: Path, pagent_emu):
    dest = Pagent(PagentSettings(api_key=PAGENT_KEY, url=pagent_emu.url))
    pagent_emu.fail_next(1, 500, body={"error": "boom"})
    rows = deliver(tmp_path / "c.db", {"pagent": dest}, [sample() for _ in range(3)])
    assert [r.status for r in rows] == ["pending"] * 3
    assert all("batch of 3" in (r.last_error or "") for r in rows)


def test_pagent_batch_chunks_of_100(tmp_path: Path, pagent_emu):
    pagent_emu.requests.clear()
    dest = Pagent(PagentSettings(api_key=PAGENT_KEY, url=pagent_emu.url))
    from relay.settings import WorkerSettings
    ws = WorkerSettings(batch_size=250, concurrency=250, poll_seconds=0.2, retry_base_seconds=30)
    rows = deliver(tmp_path / "d.db", {"pagent": dest}, [sample() for _ in range(230)], worker_settings=ws)
    assert all(r.status == "delivered" for r in rows) and len(rows) == 230
    sizes = sorted(len(json.loads(s.body)["events"]) for s in pagent_emu.requests if s.path.endswith("/bulk"))
    assert sum(sizes) == 230 and max(sizes) <= 100


def test_settings_enable_all_six_and_mask_secrets(monkeypatch):
    from relay.destinations import build_destinations
    from relay.settings import load_settings

    for key, value in {
        "RELAY_PAGENT__API_KEY": "pk", "RELAY_PAGENT__CURRENCY": "USD", "RELAY_TOPMAIL__API_KEY": "tm_test_k",
        "RELAY_TOPMAIL__SUBSCRIPTION_TYPE": "upgrade",
        "RELAY_CONVERGE__POSTBACK_URL": "https://app.runconverge.com/api/webhooks/secretpath",
        "RELAY_WEBHOOK__URL": "https://example.org/hook", "RELAY_WEBHOOK__SECRET": WEBHOOK_SECRET,
        "RELAY_SIMMER__SECRET_KEY": "s", "RELAY_SIMMER__PROJECT_ID": "p",
        "RELAY_IMPACT__ACCOUNT_SID": "IR1", "RELAY_IMPACT__AUTH_TOKEN": "t",
        "RELAY_IMPACT__CAMPAIGN_ID": "1", "RELAY_IMPACT__EVENT_TYPE_ID": "2",
    }.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert set(build_destinations(settings)) == {"simmer", "impact", "pagent", "topmail", "converge", "webhook"}
    described = json.dumps(settings.describe())
    assert "secretpath" not in described and WEBHOOK_SECRET not in described
    assert settings.topmail.subscription_type == "upgrade"
    assert "refund" not in settings.converge.kinds
    monkeypatch.setenv("RELAY_TOPMAIL__ATTRIBUTION_WINDOW", "91")
    with pytest.raises(Exception, match="RELAY_TOPMAIL__ATTRIBUTION_WINDOW"):
        load_settings()


def test_pagent_batch_refused_whole_is_resent_one_by_one(tmp_path: Path, pagent_emu):
    pagent_emu.requests.clear()
    dest = Pagent(PagentSettings(api_key=PAGENT_KEY, url=pagent_emu.url))
    pagent_emu.fail_next(1, 400, body={"error": "events[1]: invalid"})  # nothing of the batch counted
    rows = deliver(tmp_path / "e.db", {"pagent": dest}, [sample() for _ in range(3)])
    assert [r.status for r in rows] == ["delivered"] * 3
    paths = [s.path for s in pagent_emu.requests]
    assert paths == ["/v2/conversions/bulk"] + ["/v2/conversions"] * 3
