"""Stand-ins as strict as the documents, and relay meeting them.

- A request is validated before an injected fault is answered: a rule broken
  while a fault is queued is a rejection, and the fault waits for a valid request.
- The rules themselves: ISO 4217 codes only, real dates, impact's field limits.
- What the documents say relay must do with the answers: topmail's
  `contact_not_found`, impact's 429 with `X-RateLimit-*`.
- Every destination's default kinds, impact's customer status, discounts with
  items and promo codes, Simmer's 1,000,000 ceiling.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest

from relay.conversion import KINDS, Item
from relay.destinations import Destination, Skip
from relay.destinations.impact import Impact
from relay.destinations.simmer import Simmer
from relay.destinations.topmail import Topmail
from relay.settings import (
    ConvergeSettings,
    ImpactSettings,
    PagentSettings,
    SimmerSettings,
    TopmailSettings,
    WebhookSettings,
    WorkerSettings,
)
from tests.destinations.conftest import TOPMAIL_KEY, WorkerRun, sample
from tests.destinations.test_amounts import WIRE
from tests.emulators.base import Emulator
from tests.emulators.impact import ImpactEmulator
from tests.emulators.simmer import SimmerEmulator
from tests.emulators.topmail import TopmailEmulator
from tests.helpers import IMPACT_SID, IMPACT_TOKEN, SIMMER_KEY, SIMMER_PROJECT

QUICK = WorkerSettings(retry_base_seconds=30, retry_max_seconds=60, poll_seconds=0.2, lease_seconds=30)


def now() -> datetime:
    return datetime.now(UTC)


def wire(name: str):  # type: ignore[no-untyped-def]
    return next(w for w in WIRE if w.destination == name)


@pytest.fixture
def stand_ins(simmer, impact, pagent_emu, topmail_emu, converge_emu, webhook_emu) -> dict[str, Emulator]:
    return {"simmer": simmer, "impact": impact, "pagent": pagent_emu, "topmail": topmail_emu,
            "converge": converge_emu, "webhook": webhook_emu}


def send(request: httpx.Request) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.send(request)


def resend(request: httpx.Request, change) -> httpx.Response:  # type: ignore[no-untyped-def]
    """The same request with its body changed by `change` (JSON or form)."""
    if request.headers["content-type"].startswith("application/json"):
        body = json.loads(request.content)
        change(body)
        content = json.dumps(body).encode()
    else:
        form = dict(parse_qsl(request.content.decode()))
        change(form)
        content = urlencode(form).encode()
    headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
    return send(httpx.Request(request.method, request.url, content=content, headers=headers))


# ------------------------------------------------------------------ validate, then inject


def test_a_rule_broken_while_a_fault_is_queued_is_a_rejection(simmer):
    dest = wire("simmer").make(simmer, "USD")
    good = dest.build(sample(), now())
    simmer.fail_next(1, 503, body={"error": "injected outage"})
    bad = resend(good, lambda b: b.update(currency="usd"))
    assert bad.status_code == 400 and "currency" in bad.text
    assert [code for _, code, _ in simmer.rejected] == [400] and simmer.faulted == []
    assert send(good).status_code == 503  # the fault waited for a valid request
    assert [code for _, code in simmer.faulted] == [503]
    assert send(good).status_code == 200
    assert len(simmer.accepted) == 1 and simmer.writes == {f"order:{SIMMER_PROJECT}:{json.loads(good.content)['order_id']}": 1}


def test_a_faulted_request_changes_nothing(topmail_emu):
    """The fault is the answer: topmail did not record the order, so the retry is a 201, not a 409."""
    dest = wire("topmail").make(topmail_emu, "USD")
    request = dest.build(sample(), now())
    topmail_emu.fail_next(1, 500, body={"error": {"code": "server_error", "message": "x", "path": None}})
    assert send(request).status_code == 500
    assert topmail_emu.conversions == {}
    assert send(request).status_code == 201


# ------------------------------------------------------------------ the rules


def signed_with(monkeypatch: pytest.MonkeyPatch, change) -> None:  # type: ignore[no-untyped-def]
    """The generic webhook's body is signed: change the payload before relay signs it."""
    import relay.destinations.webhook as module

    original = module.payload

    def changed(conversion):  # type: ignore[no-untyped-def]
        body = original(conversion)
        change(body)
        return body

    monkeypatch.setattr(module, "payload", changed)


@pytest.mark.parametrize("name", ["simmer", "impact", "topmail", "converge", "webhook"])
@pytest.mark.parametrize("code", ["XYZ", "usd", "US$", "XXX"])
def test_non_iso_currency_codes_are_refused(name, code, stand_ins, monkeypatch):
    emu = stand_ins[name]
    dest = wire(name).make(emu, "USD")
    request = dest.build(sample(), now())
    assert send(request).status_code in (200, 201)  # the request as relay builds it passes

    def change(body: dict[str, Any]) -> None:
        if name == "impact":
            body["CurrencyCode"] = code
        elif name == "converge":
            body["properties"]["currency"] = code
        elif name == "webhook":
            body["data"]["currency"] = code
        else:
            body["currency"] = code

    if name == "webhook":
        signed_with(monkeypatch, change)
        response = send(dest.build(sample(), now()))
    else:
        response = resend(request, change)
    assert response.status_code == 400, (name, code, response.text)
    assert "currency" in response.text.lower()


@pytest.mark.parametrize(("name", "field"), [
    ("simmer", "occurred_at"), ("converge", "timestamp"), ("impact", "EventDate"),
])
def test_impossible_dates_are_a_400_not_a_500(name, field, stand_ins):
    emu = stand_ins[name]
    request = wire(name).make(emu, "USD").build(sample(), now())
    impossible = "2024-02-31T12:00:00Z" if name != "impact" else "2024-02-31T12:00:00+00:00"
    response = resend(request, lambda b: b.update({field: impossible}))
    assert response.status_code == 400, response.text
    assert [code for _, code, _ in emu.rejected] == [400]


def test_webhook_receiver_refuses_an_impossible_date(webhook_emu, monkeypatch):
    signed_with(monkeypatch, lambda body: body["data"].update(occurred_at="2024-02-31T12:00:00Z"))
    response = send(wire("webhook").make(webhook_emu, "USD").build(sample(), now()))
    assert response.status_code == 400 and "occurred_at" in response.text


@pytest.mark.parametrize(("change", "field"), [
    (lambda f: (f.pop("EventTypeId"), f.update(EventTypeCode="x" * 65)), "EventTypeCode"),
    (lambda f: (f.pop("EventTypeId"), f.update(ActionTrackerId="98a")), "ActionTrackerId"),
    (lambda f: f.update(ActionTrackerId="9876"), "EventTypeId"),  # two event types at once
    (lambda f: f.update(CustomProfileId="p" * 71), "CustomProfileId"),
    (lambda f: f.update(CustomerStatus="Returning"), "CustomerStatus"),
    (lambda f: f.update(OrderPromoCode="P" * 65), "OrderPromoCode"),
])
def test_impact_field_limits(change, field, impact):
    request = wire("impact").make(impact, "USD").build(sample(), now())
    response = resend(request, change)
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["field"] == field


@pytest.mark.parametrize("change", [
    lambda f: (f.pop("EventTypeId"), f.update(EventTypeCode="x" * 64)),
    lambda f: (f.pop("EventTypeId"), f.update(ActionTrackerId="9876")),
    lambda f: f.update(CustomProfileId="p" * 70),
    lambda f: f.update(CustomerStatus="existing"),
])
def test_impact_field_limits_are_inclusive(change, impact):
    request = wire("impact").make(impact, "USD").build(sample(), now())
    assert resend(request, change).status_code == 200


# ------------------------------------------------------------------ answers relay must handle


def test_topmail_contact_not_found_is_a_permanent_failure(tmp_path: Path):
    """topmail answers 404 contact_not_found for an email with no contact: failed at once,
    with topmail's reason, never retried; a known contact is delivered."""
    with TopmailEmulator(TOPMAIL_KEY, contacts={"known@example.com"}) as emu:
        dest = Topmail(TopmailSettings(api_key=TOPMAIL_KEY, url=emu.url))
        unknown = sample()  # buyer@example.com
        known = sample(customer=sample().customer.__class__(email="Known@Example.com", id="cus_K"))

        async def go():
            async with WorkerRun(tmp_path / "t.db", {"topmail": dest}, QUICK) as run:
                await run.record(unknown, known)
                return await run.until(lambda rows: all(r.status != "pending" for r in rows), "settled")

        rows = asyncio.run(go())
        by_email = {r.order_key: r for r in rows}
        failed, delivered = by_email[unknown.order_key], by_email[known.order_key]
        assert (failed.status, failed.attempts, failed.last_status_code) == ("failed", 1, 404)
        assert failed.last_error == "HTTP 404 contact_not_found: topmail has no contact with this email"
        assert delivered.status == "delivered"
        assert [code for _, code, _ in emu.rejected] == [404] and len(emu.accepted) == 1
        assert "buyer@example.com" not in (failed.last_error or "")


def test_impact_429_waits_for_x_ratelimit_reset(tmp_path: Path):
    """impact's 429 carries X-RateLimit-Reset (an epoch second) and no Retry-After: the retry
    is due at the reset, not after the usual backoff and not at once."""
    with ImpactEmulator(IMPACT_SID, IMPACT_TOKEN) as emu:
        emu.rate_limit_per_minute = 1
        dest = Impact(ImpactSettings(account_sid=IMPACT_SID, auth_token=IMPACT_TOKEN, campaign_id=1000,
                                     event_type_id=9876, url=emu.url))
        settings = QUICK.model_copy(update={"retry_base_seconds": 1, "retry_max_seconds": 2})

        async def go():
            async with WorkerRun(tmp_path / "i.db", {"impact": dest}, settings) as run:
                await run.record(sample(), sample())
                return await run.until(
                    lambda rows: {r.status for r in rows} == {"delivered", "pending"}
                    and all(r.last_status_code for r in rows), "one delivered, one limited")

        rows = asyncio.run(go())
        [(_, code, _)] = emu.rejected
        seen = emu.requests[-1]
        assert code == 429
        [limited] = [r for r in rows if r.status == "pending"]
        reset = emu.accepted[0].at + 60  # the window opened by the accepted request
        assert limited.last_status_code == 429 and "HTTP 429" in limited.last_error
        assert reset - 2 <= limited.next_attempt_at <= reset + 3, (limited.next_attempt_at - seen.at)


def test_impact_rate_limit_reset_forms():
    from relay.destinations.impact import rate_limit_reset

    def reset(value: str | None) -> float | None:
        headers = {} if value is None else {"X-RateLimit-Reset": value}
        return rate_limit_reset(httpx.Response(429, headers=headers))

    assert 118 <= reset(str(int(time.time()) + 120)) <= 120
    assert reset(str(int(time.time()) - 30)) == 0.0
    assert reset("45") == 45.0  # the older page: seconds until the reset
    assert reset(None) is None and reset("soon") is None and reset("-5") is None


# ------------------------------------------------------------------ what each destination takes


DEFAULT_KINDS = {
    "simmer": ["purchase", "subscription_renewed"],
    "impact": ["purchase", "subscription_renewed", "refund"],  # refunds reverse the action
    "pagent": ["purchase", "subscription_renewed"],
    "topmail": ["purchase", "subscription_started", "subscription_renewed"],
    "converge": ["purchase", "subscription_started", "subscription_renewed", "subscription_cancelled"],
    "webhook": ["purchase", "subscription_started", "subscription_renewed", "subscription_cancelled", "refund"],
}


def test_default_kinds_are_the_documented_ones():
    settings = {"simmer": SimmerSettings(), "impact": ImpactSettings(), "pagent": PagentSettings(),
                "topmail": TopmailSettings(), "converge": ConvergeSettings(), "webhook": WebhookSettings()}
    assert {name: s.kinds for name, s in settings.items()} == DEFAULT_KINDS


@pytest.mark.parametrize("name", sorted(DEFAULT_KINDS))
def test_every_default_kind_reaches_the_stand_in(name, stand_ins):
    emu = stand_ins[name]
    dest: Destination = wire(name).make(emu, "USD")
    for kind in KINDS:
        conv = sample(kind, total=Decimal("10.00"), tax=Decimal("0"), subtotal=Decimal("10.00"),
                      items=(Item(quantity=1, price=Decimal("10.00"), sku="S"),))
        assert dest.accepts(conv) == (kind in DEFAULT_KINDS[name]), (name, kind)
        if not dest.accepts(conv) or (kind == "refund" and dest.reverses):
            continue  # impact's refunds change the purchase's action (test_impact_refunds.py)
        built = dest.build(conv, now())
        assert not isinstance(built, Skip), (name, kind, built)
        response = send(built)
        assert response.status_code in (200, 201), (name, kind, response.text)
    sent = [k for k in DEFAULT_KINDS[name] if not (k == "refund" and dest.reverses)]
    assert len(emu.accepted) == len(sent) and emu.rejected == []


def test_converge_event_name_per_kind_and_topmail_type_per_kind(converge_emu, topmail_emu):
    names = {}
    for kind in DEFAULT_KINDS["converge"]:
        send(wire("converge").make(converge_emu, "USD").build(sample(kind), now()))
        names[kind] = converge_emu.accepted[-1].parsed["event_name"]
    assert names == {"purchase": "Placed Order", "subscription_started": "Started Subscription",
                     "subscription_renewed": "Placed Recurring Subscription Order",
                     "subscription_cancelled": "Cancelled Subscription"}
    types = {}
    for kind in DEFAULT_KINDS["topmail"]:
        send(wire("topmail").make(topmail_emu, "USD").build(sample(kind), now()))
        types[kind] = topmail_emu.accepted[-1].parsed["type"]
    assert types == {"purchase": "purchase", "subscription_started": "signup", "subscription_renewed": "custom"}


# ------------------------------------------------------------------ impact's order details


def impact_form(impact: ImpactEmulator, **changes: Any) -> dict[str, str]:
    response = send(wire("impact").make(impact, "USD").build(sample(**changes), now()))
    assert response.status_code == 200, response.text
    return impact.accepted[-1].parsed


@pytest.mark.parametrize(("new", "status"), [(True, "New"), (False, "Existing"), (None, None)])
def test_impact_customer_status(new, status, impact):
    assert impact_form(impact, new_customer=new).get("CustomerStatus") == status


def test_impact_discount_with_items_and_promo_code(impact):
    """Items carry their line totals before the discount; the discount goes once, as
    OrderDiscount (impact spreads it over the items); never OrderSubTotalPostDiscount with items."""
    form = impact_form(
        impact, total=Decimal("95.00"), subtotal=Decimal("100.00"), discount=Decimal("15.00"),
        tax=Decimal("10.00"), shipping=Decimal("0"), promo_code="15BUCKSOFF",
        items=(Item(quantity=2, price=Decimal("14.00"), sku="1ABC2345", name="Product Name 1", category="Hardware"),
               Item(quantity=3, subtotal=Decimal("72.00"), sku="9ZXY7654", name="Product Name 2")))
    assert {k: v for k, v in form.items() if k.startswith(("Item", "Order"))} == {
        "ItemSku1": "1ABC2345", "ItemName1": "Product Name 1", "ItemCategory1": "Hardware",
        "ItemQuantity1": "2", "ItemSubTotal1": "28.00",
        "ItemSku2": "9ZXY7654", "ItemName2": "Product Name 2", "ItemQuantity2": "3", "ItemSubTotal2": "72.00",
        "OrderDiscount": "15.00", "OrderTax": "10.00", "OrderShipping": "0.00", "OrderPromoCode": "15BUCKSOFF",
        "OrderId": form["OrderId"],
    }


def test_impact_without_items_sends_the_net_of_the_discount(impact):
    form = impact_form(impact, total=Decimal("95.00"), subtotal=Decimal("100.00"), discount=Decimal("15.00"),
                       tax=Decimal("10.00"), shipping=Decimal("0"), promo_code="15BUCKSOFF", items=())
    assert form["OrderSubTotalPostDiscount"] == "85.00" and "OrderDiscount" not in form
    assert form["OrderPromoCode"] == "15BUCKSOFF" and not any(k.startswith("Item") for k in form)


# ------------------------------------------------------------------ Simmer's ceiling


def test_simmer_takes_up_to_one_million_and_skips_above(tmp_path: Path):
    with SimmerEmulator(SIMMER_KEY, SIMMER_PROJECT) as emu:
        dest = Simmer(SimmerSettings(secret_key=SIMMER_KEY, project_id=SIMMER_PROJECT, url=f"{emu.url}/api/conversion"))
        top = sample(total=Decimal("1000000.00"))
        over = sample(total=Decimal("1000000.01"))

        async def go():
            async with WorkerRun(tmp_path / "s.db", {"simmer": dest}, QUICK) as run:
                await run.record(top, over)
                return await run.until(lambda rows: all(r.status != "pending" for r in rows), "settled")

        rows = {r.order_key: r for r in asyncio.run(go())}
        assert rows[top.order_key].status == "delivered"
        assert emu.accepted[0].parsed["total_revenue"] == Decimal("1000000.00")
        skipped = rows[over.order_key]
        assert skipped.status == "skipped" and skipped.attempts == 1
        assert skipped.last_error == "revenue 1000000.01 is outside Simmer's 0–1,000,000 range"
        assert len(emu.requests) == 1  # the skipped one was never sent


def test_impact_rate_limit_reset_bounds():
    from relay.destinations.impact import rate_limit_reset

    def reset(value: str) -> float | None:
        return rate_limit_reset(httpx.Response(429, headers={"X-RateLimit-Reset": value}))

    assert reset("1000000000") == 0.0  # 2001-09-09: a moment (long past), not 31 years from now
    assert reset("999999999") == 999999999.0  # below it: seconds, as the older page says
    assert reset("9" * 12) is not None and reset("9" * 13) is None  # more digits: not a time


def test_impact_reads_the_reset_only_for_a_429_without_retry_after():
    dest = Impact(ImpactSettings(account_sid=IMPACT_SID, auth_token=IMPACT_TOKEN, campaign_id=1, event_type_id=2))
    later = str(int(time.time()) + 120)

    def outcome(status: int, **headers: str):  # type: ignore[no-untyped-def]
        return dest.classify(httpx.Response(status, headers=headers, json={"Status": "ERROR"}))

    assert outcome(503, **{"X-RateLimit-Reset": later}).retry_after is None
    assert outcome(429, **{"X-RateLimit-Reset": later, "Retry-After": "7"}).retry_after == 7.0
    assert 110 <= outcome(429, **{"X-RateLimit-Reset": later}).retry_after <= 120
    assert outcome(429).retry_after is None and outcome(429).kind == "retry"


def test_topmail_answers_in_relay_deliveries():
    t = Topmail(TopmailSettings(api_key=TOPMAIL_KEY))

    def outcome(status: int, code: str | None):  # type: ignore[no-untyped-def]
        body = {"error": {"code": code, "message": "m", "path": None}} if code else {}
        return t.classify(httpx.Response(status, json=body))

    assert (outcome(409, "duplicate").kind, outcome(409, "duplicate").detail) == (
        "delivered", "already recorded by topmail (409 duplicate)")
    assert outcome(409, "idempotency_conflict").detail == "already recorded by topmail (409 idempotency_conflict)"
    assert outcome(409, None).detail == "already recorded by topmail (409 duplicate)"
    missing = outcome(404, "workspace_not_found")  # another 404: topmail's own words, not "no contact"
    assert (missing.kind, missing.detail) == ("failed", "HTTP 404 workspace_not_found: m")
    assert outcome(400, "contact_not_found").detail == "HTTP 400 contact_not_found: m"


# ------------------------------------------------------------------ impact's identifiers, in process
# (the same rules are checked end to end in test_stripe_to_simmer_impact.py; these run per
# mutant in scripts/mutate, which leaves relay processes out)


def test_impact_attribution_keys(impact):
    customer = sample().customer.__class__
    form = impact_form(impact, attribution={"irclickid": "QiiWXOVnrQ3SQHl24jQjyx"},
                       customer=customer(email="Buyer.One@Example.com", id="cus_TestCustomer01"))
    assert form["ClickId"] == "QiiWXOVnrQ3SQHl24jQjyx" and form["CustomerId"] == "cus_TestCustomer01"
    assert form["CustomerEmail"] == "108e66a0ed9fe5f566bb89e55c907ca2d32c7662"  # SHA-1 of the lowercased email
    padded = impact_form(impact, customer=customer(email="  Buyer.One@Example.COM ", id="c1"))
    assert padded["CustomerEmail"] == "108e66a0ed9fe5f566bb89e55c907ca2d32c7662"
    edge = impact_form(impact, attribution={"irclickid": "c" * 64})
    assert edge["ClickId"] == "c" * 64  # 64 is allowed
    long = impact_form(impact, attribution={"irclickid": "c" * 65})
    assert "ClickId" not in long and long["CustomerId"] == "cus_TestCustomer01"  # too long: dropped
    assert impact_form(impact, customer=customer(id="x" * 255))["CustomerId"] == "x" * 255
    only_click = impact_form(impact, customer=customer(id="x" * 256))
    assert "CustomerId" not in only_click and only_click["ClickId"] == "click-1"
    assert "CustomerId" not in impact_form(impact, customer=customer(id="jo@example.com"))  # never an email
    assert "CustomerEmail" not in impact_form(impact, customer=customer(id="c2"))


def test_impact_skips_without_an_attribution_key():
    dest = Impact(ImpactSettings(account_sid=IMPACT_SID, auth_token=IMPACT_TOKEN, campaign_id=1, event_type_id=2))
    customer = sample().customer.__class__
    for attribution, who in (({}, customer(email="a@b.co")), ({"irclickid": "c" * 65}, customer(id="@" * 3))):
        skipped = dest.build(sample(attribution=attribution, customer=who), now())
        assert skipped == Skip("no attribution key: neither irclickid nor a customer id is known")
    assert not isinstance(dest.build(sample(attribution={}, customer=customer(id="c")), now()), Skip)
    assert not isinstance(dest.build(sample(attribution={"irclickid": "k"}, customer=customer()), now()), Skip)


def test_impact_order_id(impact):
    key64 = "o" * 64
    assert impact_form(impact, order_key=key64)["OrderId"] == key64
    session = "cs_live_" + "a" * 58  # 66 characters, like a real Checkout Session id
    assert impact_form(impact, order_key=session, refs={"payment_intent": "pi_3Abc"})["OrderId"] == "pi_3Abc"
    assert impact_form(impact, order_key=session, refs={"invoice": "in_1Xyz"})["OrderId"] == "in_1Xyz"
    both = impact_form(impact, order_key=session, refs={"payment_intent": "pi_3A", "invoice": "in_1B"})
    assert both["OrderId"] == "pi_3A"
    too_long_ref = impact_form(impact, order_key=session, refs={"payment_intent": "p" * 65, "invoice": "i" * 64})
    assert too_long_ref["OrderId"] == "i" * 64
    assert impact_form(impact, order_key=session, refs={})["OrderId"] == (
        "h-6e9d548e09c3c2aebd86c3e60148110bc4b0fabf84263d5133a37fa428579b")  # 64 characters


def test_topmail_error_texts_in_relay_deliveries():
    t = Topmail(TopmailSettings(api_key=TOPMAIL_KEY))

    def detail(status: int, body: Any) -> str:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return t.classify(httpx.Response(status, content=content)).detail

    assert detail(400, {"error": {"code": "validation_error", "message": "invalid email", "path": "email"}}) == (
        "HTTP 400 validation_error: invalid email (path email)")
    assert detail(400, {"error": {"code": "validation_error", "message": "bad", "path": None}}) == (
        "HTTP 400 validation_error: bad")
    assert detail(400, {"error": {"code": "validation_error"}}) == "HTTP 400 validation_error: "
    assert detail(403, {"error": {"code": "x" * 80, "message": "m"}}) == f"HTTP 403 {'x' * 60}: m"
    assert detail(500, {"error": "plain text error"}) == 'HTTP 500: {"error": "plain text error"}'
    assert detail(502, b"<html>bad gateway</html>") == "HTTP 502: <html>bad gateway</html>"
    assert detail(400, {"error": {"code": "c", "message": "m " + "y" * 400}}) == "HTTP 400 c: m " + "y" * 298


def test_simmer_order_id(simmer):
    """order_id is the order key when it is 1–128 ASCII characters, else a stable digest."""
    dest = wire("simmer").make(simmer, "USD")

    def order_id(key: str) -> str:
        response = send(dest.build(sample(order_key=key), now()))
        assert response.status_code == 200, response.text
        return simmer.accepted[-1].parsed["order_id"]

    assert order_id("k") == "k"
    assert order_id("k" * 128) == "k" * 128
    assert order_id("k" * 129) == "sha256-9094034fb2d0ce2e407c9b260f2806ab2efb352e200722fd6296d9cf1cf7e6f5"
    assert order_id("cs_live_é") == "sha256-07d842cf0c2a023a08724e1ff1b349439c3b3467439b629a59cc8d0a5bad4604"


def test_simmer_body_and_skips(simmer):
    from datetime import timedelta

    dest = wire("simmer").make(simmer, "USD")
    customer = sample().customer.__class__

    def body(**changes: Any) -> dict[str, Any]:
        response = send(dest.build(sample(**changes), now()))
        assert response.status_code == 200, response.text
        return simmer.accepted[-1].parsed

    assert body(attribution={"simmer_anonymous_id": "anon-7f3a"})["anonymous_id"] == "anon-7f3a"
    assert body(attribution={"simmer_anonymous_id": "a" * 256})["anonymous_id"] == "a" * 256
    assert "anonymous_id" not in body(attribution={"simmer_anonymous_id": "a" * 257})  # Simmer's 1–256
    assert "anonymous_id" not in body(attribution={})  # omitted, never ""
    sent = body(occurred_at=datetime(2030, 1, 1, tzinfo=UTC))  # a clock ahead: never in the future
    assert real_time(sent["occurred_at"]) <= datetime.now(UTC)
    just_in = body(occurred_at=datetime.now(UTC) - timedelta(days=7) + timedelta(minutes=6))
    assert just_in["email"] == "buyer@example.com" and just_in["project_id"] == SIMMER_PROJECT

    def skipped(**changes: Any) -> str:
        built = dest.build(sample(**changes), now())
        assert isinstance(built, Skip), built
        return built.reason

    assert skipped(occurred_at=datetime.now(UTC) - timedelta(days=7) + timedelta(minutes=4)) == (
        "conversion is older than Simmer's 7-day window")  # it would arrive outside the window
    assert skipped(customer=customer(id="c")) == "no buyer email: Simmer requires one"
    assert skipped(customer=customer(email="not an address")) == "buyer email is not an address Simmer accepts"
    assert skipped(total=None) == "no revenue amount"
    assert skipped(currency=None) == "no revenue amount"
    assert skipped(total=Decimal("-1.00")) == "revenue -1.00 is outside Simmer's 0–1,000,000 range"


def real_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_impact_skips_and_limits(impact):
    dest = wire("impact").make(impact, "USD")

    def reason(**changes: Any) -> str:
        built = dest.build(sample(**changes), now())
        assert isinstance(built, Skip), built
        return built.reason

    assert reason(total=None) == "no order amount"
    assert reason(currency=None) == "no order amount"
    big = Decimal("10000000000.00")
    for field in ("total", "tax", "shipping"):
        assert reason(**{field: big}) == "amount exceeds impact's DECIMAL(12,2) fields", field
    top = impact_form(impact, total=Decimal("9999999999.99"), subtotal=Decimal("9999999999.99"), tax=None,
                      shipping=None, items=())
    assert top["OrderSubTotalPostDiscount"] == "9999999999.99"
    assert impact_form(impact, promo_code="P" * 70)["OrderPromoCode"] == "P" * 64


def test_impact_item_skus_fall_back_in_order(impact):
    items = (Item(quantity=1, price=Decimal("1.00"), sku="S-1", product_id="prod_1", name="One"),
             Item(quantity=1, price=Decimal("1.00"), product_id="prod_2", name="Two"),
             Item(quantity=1, price=Decimal("1.00"), name="Three"),
             Item(quantity=1, price=Decimal("1.00")))
    form = impact_form(impact, total=Decimal("4.00"), subtotal=Decimal("4.00"), tax=None, shipping=None, items=items)
    assert [form[f"ItemSku{n}"] for n in (1, 2, 3, 4)] == ["S-1", "prod_2", "Three", "item-4"]


def test_impact_url_and_account_in_the_path(impact):
    dest = Impact(ImpactSettings(account_sid=IMPACT_SID, auth_token=IMPACT_TOKEN, campaign_id=1000,
                                 event_type_id=9876, url=impact.url + "/"))
    built = dest.build(sample(), now())
    assert str(built.url) == f"{impact.url}/Advertisers/{IMPACT_SID}/Conversions" and built.method == "POST"
    assert send(built).status_code == 200
    odd = Impact(ImpactSettings(account_sid="IR a/b", auth_token="t", campaign_id=1, event_type_id=2,
                                url="https://api.impact.com"))
    assert odd.build(sample(), now()).url.raw_path == b"/Advertisers/IR%20a%2Fb/Conversions"


def test_webhook_answers():
    from relay.destinations.webhook import Webhook

    w = Webhook(WebhookSettings(url="http://127.0.0.1:1/h", secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))

    def outcome(status: int, **headers: str):  # type: ignore[no-untyped-def]
        return w.classify(httpx.Response(status, headers=headers, text="thanks jo@example.com"))

    ok = outcome(204)
    assert (ok.kind, ok.detail, ok.gone) == ("delivered", "thanks [email]", False)
    gone = outcome(410)
    assert (gone.kind, gone.gone) == ("failed", True) and gone.detail.endswith(": thanks [email]")
    for status in (300, 301, 399):
        moved = outcome(status, Location="https://new.example.org/hook", **{"Retry-After": "120"})
        assert (moved.kind, moved.retry_after, moved.gone) == ("retry", 120.0, False), status
        assert moved.detail.startswith(f"HTTP {status}: redirected to https://new.example.org/hook;")
    assert outcome(400).kind == "retry" and outcome(400).detail == "HTTP 400: thanks [email]"
    assert outcome(503, **{"Retry-After": "30"}).retry_after == 30.0
