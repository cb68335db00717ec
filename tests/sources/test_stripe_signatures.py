"""Stripe-Signature against expectations that do not come from the code under test.

relay verifies with the stripe SDK; these tests sign with the scheme written out
(tests.helpers.stripe_v1, hashlib) and check relay against the four shared
vectors in ../shared/fixtures/vectors/signature_vectors.json (fixed headers,
literal timestamps), including a header with several `v1` signatures, the way
Stripe sends one per active secret while a secret is being rolled.
"""

from __future__ import annotations

import time

import pytest

from relay.errors import SignatureError
from relay.settings import StripeSettings
from relay.sources.stripe import StripeSource
from tests.helpers import FIXTURES, STRIPE_SECRET, body_of, checkout_event, fixture, stripe_v1

CASES = fixture("vectors/signature_vectors.json")["stripe"]["cases"]


def payload(case: dict) -> bytes:
    if "payload_file" in case:
        return (FIXTURES / "vectors" / case["payload_file"].split(" ")[0]).read_bytes()
    return case["payload"].encode()


def timestamp(case: dict) -> int:
    return int(case["header"].split(",")[0].removeprefix("t="))


def source(*secrets: str) -> StripeSource:
    return StripeSource(StripeSettings(webhook_secrets=",".join(secrets)))


def test_the_vectors_are_the_ones_expected():
    assert len(CASES) == 4
    assert [timestamp(c) for c in CASES] == [1700000000, 1753539918, 1700000000, 1700000000]


@pytest.mark.parametrize("case", [CASES[0], CASES[1]], ids=["terminal-reader", "jpy-checkout-file"])
def test_written_out_signature_reproduces_the_vectors(case):
    """The test suite's own signer (used by every other Stripe test) agrees with the SDK's
    published output, so the other tests do not sign and verify with the same code."""
    t = timestamp(case)
    assert f"t={t},v1={stripe_v1(payload(case), case['secret'], t)}" == case["header"]


class Clock:
    """The stripe SDK reads the time itself (time.time(), not verify's `now`): pin it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    import stripe._webhook

    pinned = Clock(time.time())
    monkeypatch.setattr(stripe._webhook, "time", pinned)
    return pinned


@pytest.mark.parametrize("case", [CASES[0], CASES[1]], ids=["terminal-reader", "jpy-checkout-file"])
def test_vector_verifies_within_the_tolerance_only(case, clock):
    body, t = payload(case), timestamp(case)
    headers = {"stripe-signature": case["header"]}
    with pytest.raises(SignatureError, match="tolerance"):  # case 1: expect_verify_with_tolerance_300_now
        source(case["secret"]).verify(body, headers, now=clock.now)
    for now in (t, t + 299):
        clock.now = now
        source(case["secret"]).verify(body, headers, now=now)
    clock.now = t + 301
    with pytest.raises(SignatureError, match="tolerance"):
        source(case["secret"]).verify(body, headers, now=clock.now)
    clock.now = t
    with pytest.raises(SignatureError, match="does not match"):
        source("whsec_some_other_secret").verify(body, headers, now=t)
    with pytest.raises(SignatureError, match="does not match"):
        source(case["secret"]).verify(body + b" ", headers, now=t)  # one byte more


def test_vector_with_an_extra_bad_v1_verifies(clock):
    case = CASES[2]
    clock.now = timestamp(case) + 10
    assert case["header"].count("v1=") == 2
    source(case["secret"]).verify(payload(case), {"stripe-signature": case["header"]},
                                  now=timestamp(case) + 10)


def test_vector_with_only_a_v0_signature_is_refused(clock):
    case = CASES[3]
    clock.now = timestamp(case) + 10
    assert "v1=" not in case["header"]
    with pytest.raises(SignatureError):
        source(case["secret"]).verify(payload(case), {"stripe-signature": case["header"]},
                                      now=timestamp(case) + 10)


def test_the_second_configured_secret_verifies(clock):
    case = CASES[0]
    clock.now = timestamp(case)
    source("whsec_other_endpoint", case["secret"]).verify(
        payload(case), {"stripe-signature": case["header"]}, now=timestamp(case))


def header(t: int, *signatures: str) -> dict[str, str]:
    return {"Stripe-Signature": ",".join([f"t={t}", *(f"v1={s}" for s in signatures)]),
            "Content-Type": "application/json"}


def test_several_v1_signatures_in_one_header_over_http(relay):
    """A header carries one v1 per secret while the merchant rolls the endpoint's secret:
    relay accepts it when any of them matches a configured secret, in any position."""
    t = int(time.time())
    event = checkout_event(metadata={"irclickid": "c"})
    body = body_of(event)
    good = stripe_v1(body, STRIPE_SECRET, t)
    rolled = stripe_v1(body, "whsec_the_new_secret_not_configured", t)
    assert relay.post("stripe", body, header(t, rolled, good)).json()["status"] == "accepted"
    assert relay.post("stripe", body, header(t, good, rolled)).json()["status"] == "duplicate"

    other = body_of(checkout_event(metadata={"irclickid": "c"}))
    wrong = [stripe_v1(other, "whsec_a", t), stripe_v1(other, "whsec_b", t), "00" * 32]
    refused = relay.post("stripe", other, header(t, *wrong))
    assert refused.status_code == 400 and "does not match" in refused.json()["error"]
    stale = relay.post("stripe", other, header(t - 301, rolled, stripe_v1(other, STRIPE_SECRET, t - 301)))
    assert stale.status_code == 400 and "tolerance" in stale.json()["error"]
