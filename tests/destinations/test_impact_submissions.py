"""The impact.com destination's pure parts for outcomes and refunds: which QueuedUri is
followed, what a look at a submission means, and what a refund sends (or why not)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import parse_qsl

import httpx
import orjson
import pytest

from relay.conversion import Conversion, Customer, Item
from relay.destinations import Defer, Skip
from relay.destinations.impact import Impact, action_amount
from relay.errors import ConfigError
from relay.settings import ImpactSettings, load_settings
from relay.store import RefundSibling, RefundTarget

SID = "IRsid42"


def impact(**overrides) -> Impact:
    return Impact(ImpactSettings(account_sid=SID, auth_token="tok", campaign_id=1000,
                                 event_type_id=9876, url="https://api.impact.com", **overrides))


def answer(body: object, status: int = 200, method: str = "POST", headers: dict | None = None) -> httpx.Response:
    request = httpx.Request(method, f"https://api.impact.com/Advertisers/{SID}/Conversions")
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.Response(status, content=content, headers=headers, request=request)


@pytest.mark.parametrize(("queued", "followed"), [
    (f"/Advertisers/{SID}/APISubmissions/A-86b9-56992f50eefe", f"/Advertisers/{SID}/APISubmissions/A-86b9-56992f50eefe"),
    # An absolute URI: only its path counts, the host is never taken from the answer.
    (f"https://elsewhere.example/Advertisers/{SID}/APISubmissions/A-1", f"/Advertisers/{SID}/APISubmissions/A-1"),
    ("/Advertisers/IRother/APISubmissions/A-1", None),  # not this account
    (f"/Advertisers/{SID}/APISubmissions/../Actions", None),
    (f"/Advertisers/{SID}/APISubmissions/A-1/../../x", None),
    (f"/Advertisers/{SID}/Conversions", None),
    (12, None),
])
def test_only_this_accounts_submissions_are_followed(queued, followed) -> None:
    dest = impact()
    outcome = dest.classify(answer({"Status": "QUEUED", "QueuedUri": queued}))
    assert outcome.kind == "delivered"
    assert outcome.follow_up == (None if followed is None else (followed, "conversion"))
    if followed:
        look = dest.submission_request(followed)
        assert str(look.url) == f"https://api.impact.com{followed}" and look.method == "GET"
        assert look.headers["authorization"].startswith("Basic ")


def test_what_was_submitted_follows_the_method() -> None:
    body = {"Status": "QUEUED", "QueuedUri": f"/Advertisers/{SID}/APISubmissions/A-2"}
    assert impact().classify(answer(body, method="PUT")).follow_up[1] == "modification"
    assert impact().classify(answer(body, method="DELETE")).follow_up[1] == "reversal"
    assert impact().classify(answer(b"not json")).follow_up is None


def test_a_429_waits_for_the_reset() -> None:
    reset = int(time.time()) + 120
    outcome = impact().classify(answer({}, 429, headers={"X-RateLimit-Reset": str(reset)}))
    assert outcome.kind == "retry" and 110 < outcome.retry_after <= 120
    assert impact().classify(answer({}, 429, headers={"X-RateLimit-Reset": "30"})).retry_after == 30


@pytest.mark.parametrize(("status", "body", "state", "detail"), [
    (200, {"Status": "Queued"}, "following", "impact: Queued"),
    (200, {"Status": "In Progress"}, "following", "impact: In Progress"),
    (200, {"Status": "Complete", "ErrorType": "", "ErrorReason": ""}, "accepted",
     "impact: conversion complete, no error"),
    (200, {"Status": "Complete", "ErrorType": None}, "accepted", "impact: conversion complete, no error"),
    (200, {"Status": "Complete", "ErrorType": "Validation", "ErrorReason": "CONV_DUPLICATE"}, "duplicate",
     "impact: CONV_DUPLICATE, it already had an action with this OrderId"),
    (200, {"Status": "Complete", "ErrorType": "Contract Error",
           "ErrorReason": "CONTRACT_NOT_FOUND RESTRICTED_PROMOCODE"}, "rejected",
     "impact rejected the conversion: Contract Error: CONTRACT_NOT_FOUND RESTRICTED_PROMOCODE"
     " (no contract with the partner at that time)"),
    (200, {"Status": "Complete", "ErrorType": "Validation", "ErrorReason": "SOMETHING_NEW"}, "rejected",
     "impact rejected the conversion: Validation: SOMETHING_NEW"),
    (404, {"Status": "ERROR"}, "following", 'HTTP 404: {"Status":"ERROR"}'),
    (200, b"<html>", "following", "HTTP 200: not an API submission: <html>"),
    (200, {"Status": "Complete", "ErrorType": "Validation",
           "ErrorReason": "bad buyer@example.com\r\nX-Injected: 1"}, "rejected",
     "impact rejected the conversion: Validation: bad [email] X-Injected: 1"),
])
def test_what_a_look_means(status, body, state, detail) -> None:
    look = impact().read_submission(answer(body, status, "GET"), "conversion")
    assert (look.state, look.detail) == (state, detail)


def test_a_rejected_reversal_says_so() -> None:
    body = {"Status": "Complete", "ErrorType": "Validation", "ErrorReason": "STAND_IN_ACTION_REVERSED"}
    look = impact().read_submission(answer(body, 200, "GET"), "reversal")
    assert look.detail.startswith("impact rejected the reversal: Validation:")


def test_a_rate_limited_look_is_no_look() -> None:
    look = impact().read_submission(answer({}, 429, "GET", {"Retry-After": "7"}), "conversion")
    assert look.state == "wait" and look.retry_after == 7


# ---------------------------------------------------------------- refunds


def purchase(total: str = "110.00", tax: str = "10.00", items: tuple[Item, ...] = ()) -> Conversion:
    return Conversion(source="stripe", kind="purchase", order_key="cs_live_" + "a" * 58,
                      occurred_at=datetime.now(UTC), currency="USD", total=Decimal(total),
                      tax=Decimal(tax), customer=Customer(id="cus_1"), items=items,
                      refs={"payment_intent": "pi_1"})


def refund(total: str, currency: str = "USD") -> Conversion:
    return Conversion(source="stripe", kind="refund", order_key="re_1", occurred_at=datetime.now(UTC),
                      currency=currency, total=Decimal(total), refs={"payment_intent": "pi_1"})


def target(*refunds: tuple[str, str | None, str | None, str | None], **fields) -> RefundTarget:
    values = {"link": "pi_1", "purchase": purchase(), "delivery_status": "delivered",
              "confirmation": "accepted"} | fields
    siblings = [RefundSibling(n, Decimal(t), "USD", status, kind, state)
                for n, (t, status, kind, state) in enumerate(refunds, start=1)]
    return RefundTarget(refunds=siblings, **values)


def build(t: RefundTarget, conv: Conversion | None = None, recorded_at: float | None = None):
    return impact().build_refund(conv or refund("11.00"), t, recorded_at or time.time(), datetime.now(UTC))


def form(request: httpx.Request) -> dict[str, str]:
    return dict(parse_qsl(request.content.decode()))


def test_a_partial_refund_sets_what_remains_of_the_sale() -> None:
    # 11 of 110 back; impact's sale is the net (100): 90 % of it stands.
    request = build(target(("11.00", "pending", None, None)))
    assert request.method == "PUT"
    assert str(request.url) == f"https://api.impact.com/Advertisers/{SID}/Actions"
    assert form(request) == {"ActionTrackerId": "9876", "OrderId": "pi_1", "Amount": "90.00",
                             "Reason": "ITEM_RETURNED"}
    # Every refund recorded so far counts, in whatever order they are delivered.
    request = build(target(("11.00", "delivered", "modification", "accepted"), ("33.00", "pending", None, None)))
    assert form(request)["Amount"] == "60.00"


def test_a_full_refund_reverses_once() -> None:
    request = build(target(("60.00", "delivered", "modification", "accepted"), ("50.00", "pending", None, None)))
    assert request.method == "DELETE"
    assert form(request) == {"ActionTrackerId": "9876", "OrderId": "pi_1", "DispositionCode": "ITEM_RETURNED"}
    done = build(target(("110.00", "delivered", "reversal", "accepted"), ("0.50", "pending", None, None)))
    assert done == Skip("the action was reversed in full already, by another refund")
    # A reversal impact refused does not count as one.
    again = build(target(("110.00", "failed", "reversal", "rejected"), ("1.00", "pending", None, None)))
    assert again.method == "DELETE"


def test_the_reason_is_configurable() -> None:
    dest = impact(refund_reason="REJECTED")
    request = dest.build_refund(refund("110.00"), target(("110.00", "pending", None, None)), time.time(),
                                datetime.now(UTC))
    assert form(request)["DispositionCode"] == "REJECTED"
    with pytest.raises(ValueError):
        ImpactSettings(refund_reason="item returned")


def test_item_sales_reduce_by_what_impact_was_given() -> None:
    items = (Item(quantity=2, subtotal=Decimal("40.00"), sku="a"), Item(quantity=1, price=Decimal("30.00"), sku="b"))
    with_items = purchase(total="70.00", tax="0", items=items)
    assert action_amount(with_items) == Decimal("70.00")
    request = build(target(("7.00", "pending", None, None), purchase=with_items), refund("7.00"))
    assert form(request)["Amount"] == "63.00"


@pytest.mark.parametrize(("fields", "expected"), [
    ({"link": None}, Skip("the refund names nothing that matches a purchase (no payment reference)")),
    ({"delivery_status": None}, Skip("the purchase was never sent to impact (its kind is not routed there)")),
    ({"delivery_status": "skipped", "delivery_error": "no attribution key"},
     Skip("the purchase never reached impact (skipped: no attribution key)")),
    ({"delivery_status": "failed", "delivery_error": "impact rejected the conversion: X"},
     Skip("the purchase never reached impact (failed: impact rejected the conversion: X)")),
])
def test_no_refund_where_the_purchase_never_went(fields, expected) -> None:
    assert build(target(("11.00", "pending", None, None), **fields)) == expected


def test_a_refund_waits_for_its_purchase() -> None:
    soon = time.time() + 30
    waiting = build(target(("11.00", "pending", None, None), delivery_status="pending", next_attempt_at=soon))
    assert isinstance(waiting, Defer) and 29 < waiting.seconds <= 31
    assert waiting.reason == "waiting for the purchase to reach impact first"
    following = build(target(("11.00", "pending", None, None), confirmation="following", next_check_at=soon))
    assert isinstance(following, Defer) and following.reason == "impact has not confirmed the purchase yet"
    # Not recorded yet: waited for an hour, then skipped.
    missing = target(("11.00", "pending", None, None), purchase=None, delivery_status=None)
    assert isinstance(build(missing), Defer)
    late = build(missing, recorded_at=time.time() - 3601)
    assert isinstance(late, Skip) and late.reason.startswith("no purchase in the ledger for this refund (pi_1)")


def test_a_refund_in_another_currency_is_skipped() -> None:
    assert build(target(("11.00", "pending", None, None)), refund("11.00", "EUR")) == Skip(
        "the refund is in EUR, the purchase in USD")


def test_follow_up_settings_are_checked(monkeypatch) -> None:
    monkeypatch.setenv("RELAY_IMPACT__FOLLOW_UP_SECONDS", "60,0")
    monkeypatch.setenv("RELAY_IMPACT__FOLLOW_UP_HOURS", "3000")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "RELAY_IMPACT__FOLLOW_UP_SECONDS: each wait must be more than 0 and at most 86400 seconds" in str(err.value)
    assert "RELAY_IMPACT__FOLLOW_UP_HOURS" in str(err.value)
    assert ImpactSettings(follow_up_seconds="5, 10").follow_up_seconds == [5.0, 10.0]
