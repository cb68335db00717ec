"""Money at every destination: the exact amounts each stand-in receives, as literals.

One purchase per currency case — JPY (no decimals), USD (two), BHD and KWD
(three) — is built by each destination module and sent to its stand-in, which
must accept it; then the amounts the stand-in parsed are compared with literal
values written out by hand from each API's documented unit (major units as
JSON numbers, decimal strings, integer minor units, DECIMAL(12,2) form fields).
A destination that sent ¥800 as 8.00, or 12.345 BHD as 12.34, fails here.

`WIRE` is the table the tests iterate over: one row per destination, naming how
to build it, where its stand-in lives and what amounts it must carry for each
case. A new destination (Meta CAPI, GA4) adds one row.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from relay.conversion import Conversion, Item
from relay.destinations import Destination, Skip
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
    sample,
)
from tests.emulators.base import Emulator
from tests.helpers import IMPACT_SID, IMPACT_TOKEN, SIMMER_KEY, SIMMER_PROJECT

# The money of each case: total paid, of which tax and shipping; one line of items
# making up the rest (net = total - tax - shipping = quantity x price).
CASES: dict[str, dict[str, Any]] = {
    "JPY": {"currency": "JPY", "total": Decimal("800"), "tax": Decimal("72"), "shipping": Decimal("0"),
            "subtotal": Decimal("728"), "items": (Item(quantity=2, price=Decimal("364"), sku="SKU-J"),)},
    "USD": {"currency": "USD", "total": Decimal("49.99"), "tax": Decimal("4.55"), "shipping": Decimal("3.00"),
            "subtotal": Decimal("42.44"), "items": (Item(quantity=2, price=Decimal("21.22"), sku="SKU-U"),)},
    "BHD": {"currency": "BHD", "total": Decimal("12.345"), "tax": Decimal("0.345"),
            "shipping": Decimal("1.500"), "subtotal": Decimal("10.500"),
            "items": (Item(quantity=3, price=Decimal("3.500"), sku="SKU-B"),)},
    "KWD": {"currency": "KWD", "total": Decimal("7.005"), "tax": Decimal("0.000"), "shipping": Decimal("0.000"),
            "subtotal": Decimal("7.005"), "items": (Item(quantity=1, price=Decimal("7.005"), sku="SKU-K"),)},
}


@dataclass(frozen=True)
class Wire:
    """How one destination carries money."""

    destination: str
    stand_in: str  # the fixture name of its stand-in
    make: Callable[[Emulator, str], Destination]  # (stand-in, currency) → destination
    read: Callable[[Any], dict[str, Any]]  # what the stand-in parsed → the amounts it got
    expected: dict[str, dict[str, Any]]  # case → those amounts, written out


def _simmer(emu: Emulator, currency: str) -> Destination:
    return Simmer(SimmerSettings(secret_key=SIMMER_KEY, project_id=SIMMER_PROJECT, url=f"{emu.url}/api/conversion"))


def _impact(emu: Emulator, currency: str) -> Destination:
    return Impact(ImpactSettings(account_sid=IMPACT_SID, auth_token=IMPACT_TOKEN, campaign_id=1000,
                                 event_type_id=9876, url=emu.url))


def _pagent(emu: Emulator, currency: str) -> Destination:
    return Pagent(PagentSettings(api_key=PAGENT_KEY, url=emu.url, currency=currency))


def _topmail(emu: Emulator, currency: str) -> Destination:
    return Topmail(TopmailSettings(api_key=TOPMAIL_KEY, url=emu.url))


def _converge(emu: Emulator, currency: str) -> Destination:
    return Converge(ConvergeSettings(postback_url=emu.url + CONVERGE_PATH, webhook_token=CONVERGE_TOKEN))


def _webhook(emu: Emulator, currency: str) -> Destination:
    return Webhook(WebhookSettings(url=emu.url + "/hooks/relay", secret=WEBHOOK_SECRET))


def _converge_read(body: dict[str, Any]) -> dict[str, Any]:
    p = body["properties"]
    return {"total_price": p["total_price"], "total_tax": p["total_tax"], "total_shipping": p["total_shipping"],
            "currency": p["currency"], "items": [(i["quantity"], i["price"], i["currency"]) for i in p["items"]]}


def _webhook_read(body: dict[str, Any]) -> dict[str, Any]:
    d = body["data"]
    return {k: d[k] for k in ("currency", "total", "subtotal", "tax", "shipping", "net", "discount")} | {
        "items": [(i["quantity"], i["price"], i["subtotal"]) for i in d["items"]]}


D = Decimal
WIRE: list[Wire] = [
    # Simmer: total_revenue in major units, a JSON number.
    Wire("simmer", "simmer", _simmer, lambda b: {"total_revenue": b["total_revenue"], "currency": b["currency"]}, {
        "JPY": {"total_revenue": D("800"), "currency": "JPY"},
        "USD": {"total_revenue": D("49.99"), "currency": "USD"},
        "BHD": {"total_revenue": D("12.345"), "currency": "BHD"},
        "KWD": {"total_revenue": D("7.005"), "currency": "KWD"},
    }),
    # impact.com: form fields, DECIMAL(12,2) strings in major units (three decimals round
    # half-up), items as ItemSubTotal{n} = the line total.
    Wire("impact", "impact", _impact,
         lambda f: {k: f.get(k) for k in ("CurrencyCode", "ItemQuantity1", "ItemSubTotal1", "OrderTax",
                                          "OrderShipping", "OrderSubTotalPostDiscount", "OrderDiscount")}, {
        "JPY": {"CurrencyCode": "JPY", "ItemQuantity1": "2", "ItemSubTotal1": "728.00", "OrderTax": "72.00",
                "OrderShipping": "0.00", "OrderSubTotalPostDiscount": None, "OrderDiscount": None},
        "USD": {"CurrencyCode": "USD", "ItemQuantity1": "2", "ItemSubTotal1": "42.44", "OrderTax": "4.55",
                "OrderShipping": "3.00", "OrderSubTotalPostDiscount": None, "OrderDiscount": None},
        "BHD": {"CurrencyCode": "BHD", "ItemQuantity1": "3", "ItemSubTotal1": "10.50", "OrderTax": "0.35",
                "OrderShipping": "1.50", "OrderSubTotalPostDiscount": None, "OrderDiscount": None},
        "KWD": {"CurrencyCode": "KWD", "ItemQuantity1": "1", "ItemSubTotal1": "7.01", "OrderTax": "0.00",
                "OrderShipping": "0.00", "OrderSubTotalPostDiscount": None, "OrderDiscount": None},
    }),
    # pagent: revenue an integer in the currency's minor units (999 = $9.99, ¥800 = 800).
    Wire("pagent", "pagent_emu", _pagent, lambda b: {"revenue": b["revenue"]}, {
        "JPY": {"revenue": 800},
        "USD": {"revenue": 4999},
        "BHD": {"revenue": 12345},
        "KWD": {"revenue": 7005},
    }),
    # topmail: revenue in major units, a JSON number, with the currency.
    Wire("topmail", "topmail_emu", _topmail, lambda b: {"revenue": b["revenue"], "currency": b["currency"]}, {
        "JPY": {"revenue": D("800"), "currency": "JPY"},
        "USD": {"revenue": D("49.99"), "currency": "USD"},
        "BHD": {"revenue": D("12.345"), "currency": "BHD"},
        "KWD": {"revenue": D("7.005"), "currency": "KWD"},
    }),
    # Converge: total_price / total_tax / total_shipping and item prices, major units, numbers.
    Wire("converge", "converge_emu", _converge, _converge_read, {
        "JPY": {"total_price": D("800"), "total_tax": D("72"), "total_shipping": D("0"), "currency": "JPY",
                "items": [(2, D("364"), "JPY")]},
        "USD": {"total_price": D("49.99"), "total_tax": D("4.55"), "total_shipping": D("3.00"), "currency": "USD",
                "items": [(2, D("21.22"), "USD")]},
        "BHD": {"total_price": D("12.345"), "total_tax": D("0.345"), "total_shipping": D("1.500"),
                "currency": "BHD", "items": [(3, D("3.500"), "BHD")]},
        "KWD": {"total_price": D("7.005"), "total_tax": D("0"), "total_shipping": D("0"), "currency": "KWD",
                "items": [(1, D("7.005"), "KWD")]},
    }),
    # The generic webhook: decimal strings with the currency's own number of places.
    Wire("webhook", "webhook_emu", _webhook, _webhook_read, {
        "JPY": {"currency": "JPY", "total": "800", "subtotal": "728", "tax": "72", "shipping": "0", "net": "728",
                "discount": None, "items": [(2, "364", None)]},
        "USD": {"currency": "USD", "total": "49.99", "subtotal": "42.44", "tax": "4.55", "shipping": "3.00",
                "net": "42.44", "discount": None, "items": [(2, "21.22", None)]},
        "BHD": {"currency": "BHD", "total": "12.345", "subtotal": "10.500", "tax": "0.345", "shipping": "1.500",
                "net": "10.500", "discount": None, "items": [(3, "3.500", None)]},
        "KWD": {"currency": "KWD", "total": "7.005", "subtotal": "7.005", "tax": "0.000", "shipping": "0.000",
                "net": "7.005", "discount": None, "items": [(1, "7.005", None)]},
    }),
]


def test_every_row_covers_every_case():
    assert {w.destination for w in WIRE} >= {"simmer", "impact", "pagent", "topmail", "converge", "webhook"}
    for wire in WIRE:
        assert set(wire.expected) == set(CASES), wire.destination


def purchase(case: str) -> Conversion:
    return sample(**CASES[case], discount=None, occurred_at=datetime.now(UTC) - timedelta(minutes=3))


def sent(dest: Destination, conv: Conversion, emu: Emulator) -> Any:
    """Build, send to the stand-in, insist it accepted: what it parsed."""
    import httpx

    built = dest.build(conv, datetime.now(UTC))
    assert not isinstance(built, Skip), built
    assert built.headers["User-Agent"].startswith("relay/"), built.headers  # who is calling, for their logs
    with httpx.Client(timeout=10) as client:
        response = client.send(built)
    assert response.status_code in (200, 201), (dest.name, response.status_code, response.text)
    assert emu.rejected == [], emu.rejected
    return emu.accepted[-1].parsed


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("wire", WIRE, ids=lambda w: w.destination)
def test_amount_received(wire: Wire, case: str, request: pytest.FixtureRequest):
    emu: Emulator = request.getfixturevalue(wire.stand_in)
    parsed = sent(wire.make(emu, CASES[case]["currency"]), purchase(case), emu)
    assert wire.read(parsed) == wire.expected[case]


@pytest.mark.parametrize("wire", WIRE, ids=lambda w: w.destination)
def test_json_numbers_are_written_exactly(wire: Wire, request: pytest.FixtureRequest):
    """The bytes on the wire: plain decimal text, never a float's 49.990000000000002 or 1E+3."""
    emu: Emulator = request.getfixturevalue(wire.stand_in)
    for case in ("USD", "BHD", "JPY"):
        sent(wire.make(emu, CASES[case]["currency"]), purchase(case), emu)
        raw = emu.accepted[-1].body.decode()
        assert "E+" not in raw and "e+" not in raw and "0000000" not in raw, raw


def test_zero_total_is_zero_everywhere(simmer, impact, pagent_emu, topmail_emu, converge_emu, webhook_emu):
    free = sample(currency="USD", total=Decimal("0.00"), subtotal=Decimal("0.00"), tax=Decimal("0.00"),
                  shipping=Decimal("0.00"), items=())
    emus = {"simmer": simmer, "impact": impact, "pagent_emu": pagent_emu, "topmail_emu": topmail_emu,
            "converge_emu": converge_emu, "webhook_emu": webhook_emu}
    got = {w.destination: sent(w.make(emus[w.stand_in], "USD"), free, emus[w.stand_in]) for w in WIRE
           if w.stand_in in emus}
    assert got["simmer"]["total_revenue"] == 0
    assert got["impact"]["OrderSubTotalPostDiscount"] == "0.00"
    assert got["pagent"]["revenue"] == 0
    assert got["topmail"]["revenue"] == 0
    assert got["converge"]["properties"]["total_price"] == 0
    assert got["webhook"]["data"]["total"] == "0.00"


def test_renewal_carries_the_same_amounts(simmer, impact, pagent_emu, topmail_emu, converge_emu, webhook_emu):
    """Renewals are revenue too: the same amounts as a purchase, at every destination that takes them."""
    emus = {"simmer": simmer, "impact": impact, "pagent_emu": pagent_emu, "topmail_emu": topmail_emu,
            "converge_emu": converge_emu, "webhook_emu": webhook_emu}
    for wire in WIRE:
        if wire.stand_in not in emus:
            continue
        emu = emus[wire.stand_in]
        renewal = purchase("BHD").replace(kind="subscription_renewed")
        assert wire.read(sent(wire.make(emu, "BHD"), renewal, emu)) == wire.expected["BHD"], wire.destination


def test_pagent_sends_only_its_project_currency(pagent_emu):
    """pagent has no currency field: ¥800 to a USD project would read as $8.00, so it is skipped."""
    dest = _pagent(pagent_emu, "USD")
    skipped = dest.build(purchase("JPY"), datetime.now(UTC))
    assert isinstance(skipped, Skip) and "JPY" in skipped.reason and "USD" in skipped.reason
    assert json.loads(_pagent(pagent_emu, "JPY").build(purchase("JPY"), datetime.now(UTC)).content)["revenue"] == 800
