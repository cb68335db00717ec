"""Attribution beyond checkout metadata: a customer's remembered ids on their renewals
(RELAY_ATTRIBUTION__MEMORY) and a Payment Link's client_reference_id
(RELAY_STRIPE__CLIENT_REFERENCE_ID_KEY).

Real parts: signed Stripe webhooks → `relay serve` (a real process, a real SQLite file)
→ the impact stand-in; what a user checks is the ClickId impact receives.
"""

from __future__ import annotations

import copy
import time
import uuid

import pytest

from tests.conftest import core_env
from tests.helpers import body_of, checkout_event, fixture, stripe_headers, wait_until

RENEWAL = "stripe/invoice.paid.api-2023-10-16.alimehndi.json"


def renewal(customer: str, metadata: dict[str, str] | None = None) -> dict:
    """A live invoice.paid of a subscription cycle for this customer, without metadata."""
    event = copy.deepcopy(fixture(RENEWAL))
    suffix = uuid.uuid4().hex
    invoice = event["data"]["object"]
    invoice.update(id=f"in_1{suffix[:23]}", billing_reason="subscription_cycle", customer=customer,
                   livemode=True, metadata={}, subscription_details={"metadata": metadata or {}},
                   payment_intent=f"pi_3{suffix[:23]}", charge=f"ch_3{suffix[:23]}")
    invoice["status_transitions"]["paid_at"] = int(time.time()) - 1
    event.update(id=f"evt_1{suffix[:23]}", livemode=True, created=int(time.time()))
    return event


def click_ids(impact, count: int) -> list[str | None]:
    wait_until(lambda: len(impact.accepted) >= count, message=f"{count} conversions at impact")
    return [seen.parsed.get("ClickId") for seen in impact.accepted]


@pytest.mark.parametrize(("memory", "expected"), [
    ("first", ["click-first", "click-second", "click-first", "click-first"]),
    ("last", ["click-first", "click-second", "click-second", "click-second"]),
    ("off", ["click-first", "click-second", None, None]),
])
def test_renewals_carry_the_remembered_ids(tmp_path, simmer, impact, relay_factory, memory, expected):
    env = core_env(tmp_path / "relay.db", simmer.url, impact.url)
    if memory != "first":  # first is the default
        env["RELAY_ATTRIBUTION__MEMORY"] = memory
    relay = relay_factory(env)
    # The purchase sets the click id; a later purchase of the same customer carries another.
    for n, click in enumerate(("click-first", "click-second"), start=1):
        event = checkout_event(customer="cus_memory", metadata={"irclickid": click})
        assert relay.post_stripe(event).status_code == 200
        click_ids(impact, n)  # in order: the second purchase comes after the first
    # Two renewals created by the subscription, no metadata of their own.
    for n in (3, 4):
        assert relay.post_stripe(renewal("cus_memory")).status_code == 200
        click_ids(impact, n)
    assert click_ids(impact, 4) == expected
    # Every one still names the customer; the renewals are the invoices.
    assert {seen.parsed["CustomerId"] for seen in impact.accepted} == {"cus_memory"}
    # Another customer's renewal gets nothing of theirs.
    assert relay.post_stripe(renewal("cus_someone_else")).status_code == 200
    assert click_ids(impact, 5)[4] is None


def test_a_renewal_with_ids_of_its_own_keeps_them(tmp_path, simmer, impact, relay_factory):
    relay = relay_factory(core_env(tmp_path / "relay.db", simmer.url, impact.url))
    assert relay.post_stripe(checkout_event(customer="cus_own", metadata={"irclickid": "c-1"})).status_code == 200
    assert relay.post_stripe(renewal("cus_own", {"irclickid": "c-own"})).status_code == 200
    assert sorted(click_ids(impact, 2)) == ["c-1", "c-own"]


def payment_link_session(reference: str | None) -> dict:
    """A Checkout Session from a Payment Link: no metadata, only client_reference_id."""
    event = checkout_event(metadata={})
    event["data"]["object"]["client_reference_id"] = reference
    return event


def test_payment_links_client_reference_id(tmp_path, simmer, impact, relay_factory):
    env = core_env(tmp_path / "relay.db", simmer.url, impact.url)
    keyed = relay_factory(env | {"RELAY_STRIPE__CLIENT_REFERENCE_ID_KEY": "irclickid"})
    for reference in ("plink-Click_42", "has space", "x" * 201):
        assert keyed.post_stripe(payment_link_session(reference)).status_code == 200
    # Only a client_reference_id of Stripe's shape (alphanumerics, - and _, <= 200) is used.
    assert click_ids(impact, 3) == ["plink-Click_42", None, None]
    keyed.stop()

    plain = relay_factory(env, start=False)  # the same relay, without the setting
    plain.start()
    assert plain.post_stripe(payment_link_session("plink-Click_43")).status_code == 200
    assert click_ids(impact, 4)[3] is None
    assert impact.accepted[3].parsed["CustomerId"] == "cus_TestCustomer01"


def test_the_setting_must_name_an_attribution_id(tmp_path, simmer, impact, relay_factory):
    env = core_env(tmp_path / "relay.db", simmer.url, impact.url)
    relay = relay_factory(env | {"RELAY_STRIPE__CLIENT_REFERENCE_ID_KEY": "click_id"}, start=False)
    result = relay.cli("check", check=False)
    assert result.returncode == 2
    assert "RELAY_STRIPE__CLIENT_REFERENCE_ID_KEY: 'click_id' is not an attribution id; known:" in result.stderr
    assert "irclickid" in result.stderr


def test_metadata_wins_over_the_client_reference_id(tmp_path, simmer, impact, relay_factory):
    env = core_env(tmp_path / "relay.db", simmer.url, impact.url)
    relay = relay_factory(env | {"RELAY_STRIPE__CLIENT_REFERENCE_ID_KEY": "irclickid"})
    event = checkout_event(metadata={"irclickid": "from-metadata"})
    event["data"]["object"]["client_reference_id"] = "from-link"
    body = body_of(event)
    assert relay.post("stripe", body, stripe_headers(body)).status_code == 200
    assert click_ids(impact, 1) == ["from-metadata"]
