"""The request as sent, on a conversion's page: every destination's own build, with every
secret masked — API keys and tokens in headers, URLs and bodies, impact's Basic
credentials, Meta's access token, GA4's api_secret, the Converge postback URL, the
Standard Webhooks key and the signature made with it — and exact numbers in bodies."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import quote, quote_plus

import pytest

from relay.console.outgoing import MASK, Outgoing, pretty_json, rebuild
from relay.conversion import Conversion, Customer
from relay.destinations import build_destinations
from relay.settings import Settings
from tests.console.conftest import TOKEN, Console
from tests.console.test_pages import text

WHSEC_KEY = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRETS = {
    "simmer": "sim-SECRET-1",
    "impact": "imp-SECRET-2",
    "pagent": "pag-SECRET-3",
    "topmail": "tm_live_SECRET4",
    "converge_url": "http://127.0.0.1:9/hooks/SECRET5path?k=SECRET5q",
    "converge_token": "conv-SECRET-6",
    "webhook": f"whsec_{WHSEC_KEY}",
    "meta": "EAAmeta/SECRET+7=",
    "ga4": "ga4SECRET8",
}
LOCAL = "http://127.0.0.1:9"


def every_destination(**extra: object) -> dict[str, object]:
    return {
        "simmer": {"secret_key": SECRETS["simmer"], "project_id": "p1", "url": f"{LOCAL}/api/conversion"},
        "impact": {"account_sid": "IRsid77", "auth_token": SECRETS["impact"], "campaign_id": 1,
                   "event_type_id": 2, "url": LOCAL},
        "pagent": {"api_key": SECRETS["pagent"], "currency": "USD", "url": LOCAL},
        "topmail": {"api_key": SECRETS["topmail"], "url": LOCAL},
        "converge": {"postback_url": SECRETS["converge_url"], "webhook_token": SECRETS["converge_token"]},
        "webhook": {"url": f"{LOCAL}/hook", "secret": SECRETS["webhook"]},
        "meta": {"pixel_id": "123", "access_token": SECRETS["meta"], "url": LOCAL},
        "ga4": {"measurement_id": "G-ABC123", "api_secret": SECRETS["ga4"], "url": LOCAL},
        **extra,
    }


ATTRIBUTION = {
    "irclickid": "ir1", "simmer_anonymous_id": "an1", "pagent_session_id": "ps1",
    "pagent_user_id": "pu1", "pagent_conversion_id": "pc1", "fbp": "fb.1.1.1",
    "client_user_agent": "UA", "event_source_url": "https://shop.example/", "ga_client_id": "1.2",
}


def forbidden() -> list[str]:
    """Every secret, and what could be made of one, that must never be on a page."""
    found = [v for v in SECRETS.values()] + [WHSEC_KEY, "SECRET5path", "SECRET5q"]
    found += [quote(SECRETS["meta"], safe=""), quote_plus(SECRETS["meta"])]
    found.append(base64.b64encode(f"IRsid77:{SECRETS['impact']}".encode()).decode())
    return found


def shown(out: Outgoing) -> str:
    return "\n".join([out.method, out.url, *(f"{k}: {v}" for k, v in out.headers), out.body])


def test_every_destination_masks_its_secrets() -> None:
    settings = Settings(**every_destination())
    destinations = build_destinations(settings)
    assert sorted(destinations) == sorted(every_destination())
    conversion = Conversion(
        source="stripe", kind="purchase", order_key="cs_1", occurred_at=datetime.now(UTC),
        currency="USD", total=Decimal("1234.50"), customer=Customer(email="a@example.com", id="cus_1"),
        attribution=ATTRIBUTION,
    )
    for name, dest in destinations.items():
        out = rebuild(dest, conversion, datetime.now(UTC))
        assert isinstance(out, Outgoing), (name, out)
        page = shown(out)
        for secret in forbidden():
            assert secret not in page, (name, secret)
        assert MASK in page, name
        # money exactly as sent, never 1234.5 (pagent takes minor units)
        assert ("123450" if name == "pagent" else "1234.50") in page, name
    signature = dict(rebuild(destinations["webhook"], conversion, datetime.now(UTC)).headers)  # type: ignore[union-attr]
    assert signature["webhook-signature"] == MASK and signature["webhook-id"].startswith("msg_")
    converge = rebuild(destinations["converge"], conversion, datetime.now(UTC))
    assert converge.url == f"http://127.0.0.1:9/{MASK}"  # type: ignore[union-attr]
    impact = dict(rebuild(destinations["impact"], conversion, datetime.now(UTC)).headers)  # type: ignore[union-attr]
    assert impact["Authorization"] == f"Basic {MASK}"
    ga4 = rebuild(destinations["ga4"], conversion, datetime.now(UTC))
    assert ga4.url.endswith(f"measurement_id=G-ABC123&api_secret={MASK}")  # type: ignore[union-attr]
    meta = rebuild(destinations["meta"], conversion, datetime.now(UTC))
    assert f"access_token = {MASK}" in meta.body and meta.body_kind == "form"  # type: ignore[union-attr]


def test_a_skip_says_why() -> None:
    dest = build_destinations(Settings(**every_destination()))["pagent"]
    conversion = Conversion(source="stripe", kind="purchase", order_key="cs_1",
                            occurred_at=datetime.now(UTC), currency="USD", total=Decimal("1"))
    skipped = rebuild(dest, conversion, datetime.now(UTC))
    assert not isinstance(skipped, Outgoing) and "pagent_session_id" in skipped.reason


@pytest.mark.parametrize("raw, expected", [
    (b'{"a": 49.00, "b": [1e5, 12345678901234567890]}', '"a": 49.00'),
    (b'{"b": [1e5, 12345678901234567890]}', "12345678901234567890"),
    (b'{"e": "\\u00e9"}', '"e": "\u00e9"'),
])
def test_json_is_indented_with_numbers_as_written(raw: bytes, expected: str) -> None:
    assert expected in (pretty_json(raw) or "")


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2", b"[" * 300 + b"]" * 300, b"\xff\xfe"])
def test_what_is_not_json_is_left_to_the_caller(raw: bytes) -> None:
    assert pretty_json(raw) is None


def test_the_conversion_page_shows_no_secret_of_any_destination(make_console) -> None:
    console: Console = make_console(None, run_worker=False, **every_destination())
    assert console.sign_in().status_code == 303
    from tests.helpers import checkout_event

    metadata = {"irclickid": "ir1", "fbp": "fb.1.1.1", "ga_client_id": "1.2",
                "pagent_session_id": "ps1", "pagent_user_id": "pu1", "pagent_conversion_id": "pc1"}
    answer = console.post_stripe(checkout_event(metadata=metadata))
    assert answer["deliveries"] == 8
    page = console.client.get("/console/conversions/1")
    assert page.status_code == 200
    for secret in [*forbidden(), TOKEN]:
        assert secret not in page.text, secret
    assert len(re.findall(r"The request as sent", page.text)) == 8
    assert "Basic ********" in text(page.text) and "api_secret=********" in text(page.text)
    for other in ("/console/", "/console/deliveries?status=any", "/console/events/1",
                  "/console/search?q=" + answer["event_id"]):
        body = console.client.get(other).text
        assert not any(secret in body for secret in [*forbidden(), TOKEN]), other
