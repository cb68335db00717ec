"""One signed Stripe purchase reaches all six destinations through a real `relay serve`;
a renewal reaches Converge as Placed Recurring Subscription Order."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from relay.conversion import Conversion, Customer
from relay.destinations.converge import Converge
from relay.settings import ConvergeSettings
from tests.conftest import core_env
from tests.destinations.conftest import (
    CAMPAIGN,
    CONVERGE_PATH,
    CONVERGE_TOKEN,
    PAGENT_KEY,
    TOPMAIL_KEY,
    WEBHOOK_SECRET,
    deliver,
)
from tests.helpers import checkout_event, wait_until


def full_env(db: Path, simmer, impact, pagent_emu, topmail_emu, converge_emu, webhook_emu) -> dict[str, str]:
    env = core_env(db, simmer.url, impact.url)
    env.update({
        "RELAY_PAGENT__API_KEY": PAGENT_KEY,
        "RELAY_PAGENT__CURRENCY": "USD",
        "RELAY_PAGENT__URL": pagent_emu.url,
        "RELAY_TOPMAIL__API_KEY": TOPMAIL_KEY,
        "RELAY_TOPMAIL__URL": topmail_emu.url,
        "RELAY_CONVERGE__POSTBACK_URL": converge_emu.postback_url,
        "RELAY_CONVERGE__WEBHOOK_TOKEN": CONVERGE_TOKEN,
        "RELAY_WEBHOOK__URL": webhook_emu.url + "/hooks/relay",
        "RELAY_WEBHOOK__SECRET": WEBHOOK_SECRET,
    })
    return env


def test_signed_purchase_reaches_all_six(tmp_path, relay_factory, simmer, impact, pagent_emu, topmail_emu,
                                         converge_emu, webhook_emu):
    for emu in (pagent_emu, topmail_emu, converge_emu, webhook_emu):
        emu.accepted.clear()
        emu.rejected.clear()
    relay = relay_factory(full_env(tmp_path / "relay.db", simmer, impact, pagent_emu, topmail_emu,
                                   converge_emu, webhook_emu))
    pagent_vars = {"session_id": "sess-e2e", "user_id": "user-e2e", "visit_id": "v-e2e",
                   "conversion_id": "goal-e2e"}
    event = checkout_event(amount=4900, tax=400, metadata={
        "simmer_anonymous_id": "anon-e2e",
        "irclickid": "click-e2e",
        "pagent": json.dumps(pagent_vars),
        "topmail_campaign_id": CAMPAIGN,
    })
    r = relay.post_stripe(event)
    assert r.status_code == 200, r.text
    assert r.json()["deliveries"] == 6, r.text
    emus = {"simmer": simmer, "impact": impact, "pagent": pagent_emu, "topmail": topmail_emu,
            "converge": converge_emu, "webhook": webhook_emu}
    wait_until(lambda: all(e.accepted for e in emus.values()), timeout=20,
               message="all six destinations: " + str({n: e.rejected[-1:] for n, e in emus.items()}))
    for name, emu in emus.items():
        assert emu.rejected == [], (name, emu.rejected)
        assert len(emu.accepted) == 1, name
    rows = wait_until(lambda: [d for d in relay.deliveries() if d["status"] == "delivered"] if len(
        [d for d in relay.deliveries() if d["status"] == "delivered"]) == 6 else None, message="6 delivered")
    assert {d["destination"] for d in rows} == set(emus)

    pagent = pagent_emu.accepted[0].parsed
    assert pagent["session_data"] == pagent_vars and pagent["revenue"] == 4900
    top = topmail_emu.accepted[0].parsed
    assert top["campaign_id"] == CAMPAIGN and top["type"] == "purchase" and top["revenue"] == Decimal("49.00")
    cvg = converge_emu.accepted[0].parsed
    assert cvg["event_name"] == "Placed Order" and cvg["properties"]["$is_new_customer"] is True
    assert cvg["properties"]["total_price"] == Decimal("49.00")
    assert simmer.accepted[0].parsed["anonymous_id"] == "anon-e2e"
    assert impact.accepted[0].parsed["ClickId"] == "click-e2e"
    hook = webhook_emu.accepted[0].parsed
    assert hook["type"] == "conversion.purchase" and hook["data"]["total"] == "49.00"
    logs = relay.logs()
    for secret in ("buyer@example.com", CONVERGE_PATH, CONVERGE_TOKEN, PAGENT_KEY, TOPMAIL_KEY, WEBHOOK_SECRET):
        assert secret not in logs


def test_renewal_reaches_converge_as_recurring_order(tmp_path, converge_emu):
    converge_emu.accepted.clear()
    renewal = Conversion(
        source="stripe", kind="subscription_renewed", order_key="in_1RenewalTest0001",
        occurred_at=datetime.now(UTC) - timedelta(minutes=1), currency="EUR", total=Decimal("19.00"),
        tax=Decimal("3.03"), customer=Customer(email="renewer@example.com", id="cus_Renew01"),
        refs={"subscription": "sub_1Test", "invoice": "in_1RenewalTest0001"},
    )
    dest = Converge(ConvergeSettings(postback_url=converge_emu.postback_url, webhook_token=CONVERGE_TOKEN))
    [row] = deliver(tmp_path / "r.db", {"converge": dest}, [renewal])
    assert row.status == "delivered", row
    body = converge_emu.accepted[-1].parsed
    assert body["event_name"] == "Placed Recurring Subscription Order"
    assert body["event_id"] == "stripe:subscription_renewed:in_1RenewalTest0001"
    assert body["properties"]["total_price"] == Decimal("19.00")
    assert body["properties"]["$is_new_customer"] is True  # first revenue conversion of this customer
    assert body["aliases"] == ["urn:email:renewer@example.com"]


def test_signed_jpy_and_kwd_purchases_reach_every_destination_exactly(
        tmp_path, relay_factory, simmer, impact, pagent_emu, topmail_emu, converge_emu, webhook_emu):
    """Stripe minor units → relay serve → six stand-ins: ¥4,980 is 4980 (not 49.80) and
    KWD 12.340 is 12.340 (not 123.40) at every destination, each in its own unit."""
    env = full_env(tmp_path / "relay.db", simmer, impact, pagent_emu, topmail_emu, converge_emu, webhook_emu)
    env["RELAY_PAGENT__CURRENCY"] = "JPY"  # pagent's project currency: the KWD one is skipped
    relay = relay_factory(env)
    meta = {"irclickid": "click-m", "pagent": json.dumps(
        {"session_id": "s", "user_id": "u", "conversion_id": "g"})}
    jpy = checkout_event(amount=4980, currency="jpy", tax=452, metadata=meta)
    kwd = checkout_event(amount=12340, currency="kwd", tax=340, shipping=1500, metadata=meta)
    for event in (jpy, kwd):
        assert relay.post_stripe(event).json()["deliveries"] == 6
    wait_until(lambda: len([r for r in relay.deliveries() if r["status"] != "pending"]) == 12, timeout=30,
               message="12 deliveries settled")
    by_currency = {
        "simmer": {b.parsed["currency"]: b.parsed["total_revenue"] for b in simmer.accepted},
        "topmail": {b.parsed["currency"]: b.parsed["revenue"] for b in topmail_emu.accepted},
        "converge": {b.parsed["properties"]["currency"]: (b.parsed["properties"]["total_price"],
                                                           b.parsed["properties"]["total_tax"],
                                                           b.parsed["properties"]["total_shipping"])
                     for b in converge_emu.accepted},
        "webhook": {b.parsed["data"]["currency"]: (b.parsed["data"]["total"], b.parsed["data"]["tax"],
                                                    b.parsed["data"]["shipping"], b.parsed["data"]["net"])
                    for b in webhook_emu.accepted},
        "impact": {b.parsed["CurrencyCode"]: (b.parsed["OrderSubTotalPostDiscount"], b.parsed["OrderTax"],
                                               b.parsed["OrderShipping"]) for b in impact.accepted},
        "pagent": [b.parsed["revenue"] for b in pagent_emu.accepted],
    }
    assert by_currency == {
        "simmer": {"JPY": Decimal("4980"), "KWD": Decimal("12.340")},
        "topmail": {"JPY": Decimal("4980"), "KWD": Decimal("12.340")},
        "converge": {"JPY": (Decimal("4980"), Decimal("452"), Decimal("0")),
                     "KWD": (Decimal("12.340"), Decimal("0.340"), Decimal("1.500"))},
        "webhook": {"JPY": ("4980", "452", "0", "4528"), "KWD": ("12.340", "0.340", "1.500", "10.500")},
        "impact": {"JPY": ("4528.00", "452.00", "0.00"), "KWD": ("10.50", "0.34", "1.50")},
        "pagent": [4980],
    }
    [skipped] = relay.deliveries(status="skipped")
    assert skipped["destination"] == "pagent" and "KWD" in skipped["last_error"]
