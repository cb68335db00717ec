"""The console's pages through the app: a real SQLite ledger, signed Stripe webhooks,
the Simmer stand-in answering on 127.0.0.1 and the delivery worker running — what a
user sees and does: failures with the destination's answer, Retry, search, a
conversion's page, quarantined and ignored events with Replay, paging and filters."""

from __future__ import annotations

import html
import re
import sqlite3
import time
from pathlib import Path

import pytest

from relay.store import FAILED
from tests.console.conftest import TOKEN, Console
from tests.emulators.simmer import SimmerEmulator
from tests.helpers import (
    SIMMER_KEY,
    STRIPE_SECRET,
    body_of,
    checkout_event,
    stripe_headers,
    wait_until,
)


def statuses(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT status FROM deliveries ORDER BY id")]


def text(page: str) -> str:
    """The page's text as a reader sees it (tags dropped, entities decoded, spaces folded)."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def fail_once(console: Console, simmer: SimmerEmulator, **event: object) -> dict[str, object]:
    """One purchase whose delivery Simmer refuses (400: the email is invalid)."""
    simmer.fail_next(1, 400, body={"error": "email is invalid"})
    answer = console.post_stripe(checkout_event(**event))  # type: ignore[arg-type]
    wait_until(lambda: statuses(console.db) == [FAILED], message="the delivery to fail")
    return answer


def test_a_failed_delivery_shows_the_answer_and_retry_delivers_it(
    console: Console, simmer: SimmerEmulator
) -> None:
    answer = fail_once(console, simmer, email="ann@example.com")
    order_key = answer["conversions"][0]["order_key"]  # type: ignore[index]
    page = console.client.get("/console/deliveries?status=failed&destination=simmer")
    assert page.status_code == 200
    shown = text(page.text)
    assert "HTTP 400" in shown and "email is invalid" in shown and order_key in shown
    assert "ann@example.com" not in page.text  # a list needs no buyer's email

    delivery_id = re.search(r'name="id" value="(\d+)"', page.text).group(1)  # type: ignore[union-attr]
    retried = console.client.post(
        "/console/deliveries/retry",
        data={"csrf": console.csrf(), "id": delivery_id,
              "back": "/console/deliveries?status=failed&destination=simmer"},
        follow_redirects=False,
    )
    assert retried.status_code == 303  # post-redirect-get
    assert retried.headers["location"] == "/console/deliveries?status=failed&destination=simmer"
    after = console.client.get(retried.headers["location"])
    assert f"Delivery {delivery_id} to simmer" in text(after.text)
    assert "is pending again" in text(after.text)
    assert "is pending again" not in text(console.client.get("/console/").text)  # shown once

    wait_until(lambda: len(simmer.accepted) == 1, message="Simmer to accept the retry")
    assert simmer.accepted[0].parsed["order_id"] == order_key
    wait_until(lambda: statuses(console.db) == ["delivered"], message="delivered in the ledger")
    conversion_id = re.search(r"/console/conversions/(\d+)", page.text).group(1)  # type: ignore[union-attr]
    detail = console.client.get(f"/console/conversions/{conversion_id}")
    shown = text(detail.text)
    assert "delivered" in shown and "email is invalid" in shown  # both attempts are listed
    assert detail.text.count('<td data-label="#" class="num">') == 2
    assert "Authorization: Bearer ********" in shown and SIMMER_KEY not in detail.text
    assert f'"order_id": "{order_key}"' in shown  # the body as built, indented


def test_retry_all_of_a_destination(console: Console, simmer: SimmerEmulator) -> None:
    simmer.fail_next(3, 400, body={"error": "email is invalid"})
    for _ in range(3):
        console.post_stripe(checkout_event())
    wait_until(lambda: statuses(console.db) == [FAILED] * 3, message="three failures")
    overview = console.client.get("/console/")
    assert "Retry all 3 failed" in text(overview.text)
    done = console.client.post(
        "/console/deliveries/retry",
        data={"csrf": console.csrf(), "destination": "simmer", "status": "failed", "back": "/console/"},
    )
    assert "Requeued 3 failed deliveries to simmer" in text(done.text)
    wait_until(lambda: len(simmer.accepted) == 3, message="all three delivered")
    again = console.client.post(
        "/console/deliveries/retry",
        data={"csrf": console.csrf(), "destination": "simmer", "status": "failed"},
    )
    assert "No failed deliveries to simmer to retry" in text(again.text)


def test_retry_of_a_delivered_delivery_changes_nothing(console: Console, simmer: SimmerEmulator) -> None:
    console.post_stripe(checkout_event())
    wait_until(lambda: statuses(console.db) == ["delivered"], message="delivered")
    page = console.client.post("/console/deliveries/retry", data={"csrf": console.csrf(), "id": "1"})
    assert "is delivered: nothing to retry" in text(page.text)
    assert len(simmer.accepted) == 1 and statuses(console.db) == ["delivered"]
    missing = console.client.post("/console/deliveries/retry", data={"csrf": console.csrf(), "id": "99"})
    assert missing.status_code == 404 and "no delivery 99" in text(missing.text)


def test_overview_counts_webhooks_by_outcome_and_flags_a_failing_destination(
    console: Console, simmer: SimmerEmulator
) -> None:
    simmer.fail_next(4, 400, body={"error": "Invalid secret key"})
    accepted = checkout_event()
    console.post_stripe(accepted)
    console.post_stripe(accepted)  # duplicate
    for _ in range(3):
        console.post_stripe(checkout_event())
    console.post_stripe(checkout_event(livemode=False))  # ignored: test mode
    console.post_stripe(checkout_event(currency="xyz"))  # quarantined: unknown currency
    bad = body_of(checkout_event())
    refused = console.client.post("/webhooks/stripe", content=bad,
                                  headers=stripe_headers(bad, secret="whsec_wrong"))
    assert refused.status_code == 400
    wait_until(lambda: statuses(console.db).count(FAILED) == 4, message="four failures")
    console.flush_tallies()
    page = console.client.get("/console/")
    row = re.search(r"<th scope=\"row\" data-label=\"Source\">stripe.*?</tr>", page.text, re.S)
    assert row is not None
    cells = re.findall(r'data-label="(\w+)" class="num">(.*?)</td>', row.group(0), re.S)
    counts = {label: text(value) for label, value in cells}
    assert counts == {"Accepted": "4", "Duplicate": "1", "Ignored": "1",
                      "Quarantined": "1 quarantined", "Rejected": "1 rejected", "Other": "0"}
    card = re.search(r'<article class="card h-(\w+)" aria-labelledby="d-simmer">(.*?)</article>',
                     page.text, re.S)
    assert card is not None and card.group(1) == "bad"  # stands out: its own colour…
    words = text(card.group(2))
    assert "Failing repeatedly: 4 of 4 attempts in the last 24 h failed" in words  # …and words
    assert "HTTP 400" in words and "Invalid secret key" in words
    assert "0 %" in words and "0 of 4 attempts" in words


def test_tallies_reach_the_ledger_on_their_own(console: Console, simmer: SimmerEmulator) -> None:
    console.post_stripe(checkout_event())

    def saved() -> bool:
        with sqlite3.connect(console.db) as conn:
            rows = conn.execute("SELECT kind, name, outcome, n FROM tallies").fetchall()
        return ("webhook", "stripe", "accepted", 1) in rows and ("delivery", "simmer", "delivered", 1) in rows

    wait_until(saved, timeout=20, message="the tally task to save the counts")


def test_search_by_email_order_key_and_event_id(console: Console, simmer: SimmerEmulator) -> None:
    mine = console.post_stripe(checkout_event(email="Ann.Buyer@Example.com"))
    console.post_stripe(checkout_event(email="bob@example.com"))
    found = console.client.get("/console/search", params={"q": " ann.buyer@example.COM "})
    key = mine["conversions"][0]["order_key"]
    assert key in found.text and "bob@example.com" not in found.text
    assert found.text.count("/console/conversions/") == 2  # one row: its id and its key link
    by_key = console.client.get("/console/search", params={"q": key})
    assert by_key.text.count("/console/conversions/") == 2
    by_event = console.client.get("/console/search", params={"q": mine["event_id"]})
    assert "/console/events/1" in by_event.text and "accepted" in text(by_event.text)
    nothing = console.client.get("/console/search", params={"q": "nobody@example.com"})
    assert "Nothing found" in text(nothing.text)


def test_conversion_page_shows_raw_event_money_and_escapes_every_value(
    console: Console, simmer: SimmerEmulator
) -> None:
    hostile = "<script>alert(1)</script>"
    event = checkout_event(amount=4900, currency="jpy", email="ann@example.com",
                           metadata={"note": hostile, "simmer_anonymous_id": '"><img src=x>'})
    console.post_stripe(event)
    console.post_stripe(checkout_event(email="bob@example.com"))
    wait_until(lambda: statuses(console.db) == ["delivered", "delivered"], message="delivered")
    page = console.client.get("/console/conversions/1")
    assert page.status_code == 200
    assert "<script" not in page.text.lower() and "<img" not in page.text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text  # shown as text
    shown = text(page.text)
    assert hostile in shown and "4,900 JPY" in shown
    assert f'"id": "{event["id"]}"' in shown  # the raw event, indented
    assert "ann@example.com" in shown and "bob@example.com" not in page.text
    assert SIMMER_KEY not in page.text and TOKEN not in page.text and STRIPE_SECRET not in page.text


def test_events_replay_after_the_setting_changed(make_console, simmer: SimmerEmulator, tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    first = make_console(simmer.url, db=db)
    assert first.sign_in().status_code == 303
    one = first.post_stripe(checkout_event(livemode=False))
    two = first.post_stripe(checkout_event(livemode=False))
    assert one["status"] == two["status"] == "ignored"
    first.client.__exit__(None, None, None)

    later = make_console(simmer.url, db=db, deliver_test_events=True)  # the operator changed it
    assert later.sign_in().status_code == 303
    listed = later.client.get("/console/events?status=ignored")
    assert "test-mode event" in text(listed.text) and "Replay all 2 shown" in text(listed.text)
    ids = re.findall(r'<input type="hidden" name="id" value="(\d+)">', listed.text)
    data = {"csrf": later.csrf(), "back": "/console/events?status=ignored"}
    done = later.client.post("/console/events/replay", data={**data, "id": ids[0]})
    shown = text(done.text)
    assert "replayed 1 event: 1 changed, 1 now accepted, 1 new conversion, 1 delivery" in shown
    assert "ignored → accepted" in shown
    wait_until(lambda: len(simmer.accepted) == 1, message="the replayed purchase delivered")
    rest = later.client.get("/console/events?status=ignored")
    assert rest.text.count('aria-label="Replay event') == 1 and "Replay all" not in rest.text
    again = later.client.post("/console/events/replay", data={**data, "id": [ids[0], ids[1]]})
    assert "replayed 2 events: 1 changed, 1 now accepted" in text(again.text)
    wait_until(lambda: len(simmer.accepted) == 2, message="the second one delivered")
    unknown = later.client.post("/console/events/replay", data={**data, "id": "999"})
    assert unknown.status_code == 404 and "no stored event with id 999" in text(unknown.text)


def test_quarantined_events_are_listed_with_their_reason(console: Console) -> None:
    console.post_stripe(checkout_event(currency="xyz"))
    page = console.client.get("/console/events")
    assert "unknown currency code 'xyz'" in text(page.text)
    detail = console.client.get("/console/events/1")
    assert "quarantined" in text(detail.text) and '"currency": "xyz"' in text(detail.text)
    assert "Replay this event" in text(detail.text)


def test_deliveries_page_through_by_keyset_newest_first(make_console) -> None:
    console = make_console(None, run_worker=False, simmer={
        "secret_key": SIMMER_KEY, "project_id": "p", "url": "http://127.0.0.1:9/api/conversion"})
    assert console.sign_in().status_code == 303
    for _ in range(120):
        console.post_stripe(checkout_event())
    seen: list[str] = []
    url = "/console/deliveries?status=pending"
    pages = 0
    while url:
        page = console.client.get(url)
        pages += 1
        ids = re.findall(r'<td data-label="ID" class="num">(\d+)</td>', page.text)
        assert len(ids) <= 50
        seen += ids
        older = re.search(r'<a href="([^"]+)">Older →</a>', page.text)
        url = html.unescape(older.group(1)) if older else ""
        assert "OFFSET" not in url.upper()
    assert pages == 3 and len(seen) == 120 and len(set(seen)) == 120
    assert [int(i) for i in seen] == sorted((int(i) for i in seen), reverse=True)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))
    dated = console.client.get(f"/console/deliveries?status=any&since={today}&until={today}")
    assert dated.text.count('data-label="ID"') == 50
    later = console.client.get(f"/console/deliveries?status=any&since={tomorrow}")
    assert 'data-label="ID"' not in later.text and "No  deliveries" not in later.text
    other = console.client.get("/console/deliveries?status=any&source=paddle")
    assert 'data-label="ID"' not in other.text


@pytest.mark.parametrize("path, status, words", [
    ("/console/deliveries?status=bogus", 400, "status must be one of"),
    ("/console/deliveries?destination=nowhere", 400, "no destination 'nowhere'"),
    ("/console/deliveries?since=2025-13-01", 400, "give a date as YYYY-MM-DD"),
    ("/console/deliveries?before=abc", 400, "before must be a position from an Older link"),
    ("/console/events?before=x:y", 400, "before must be a position from an Older link"),
    ("/console/events?status=accepted", 400, "status must be one of"),
    ("/console/conversions/999", 404, "There is no conversion 999"),
    ("/console/events/999", 404, "There is no stored event 999"),
    ("/console/no/such/page", 404, "No such page"),
])
def test_bad_requests_get_a_page_that_says_why(console: Console, path: str, status: int, words: str) -> None:
    page = console.client.get(path)
    assert page.status_code == status and words in text(page.text)


def test_a_ledger_that_does_not_answer_is_a_503_page(console: Console) -> None:
    csrf = console.csrf()
    console.client.portal.call(console.client.app.state.relay.store.close)  # type: ignore[union-attr]
    page = console.client.get("/console/deliveries")
    assert page.status_code == 503 and "The ledger is unavailable" in text(page.text)
    post = console.client.post("/console/deliveries/retry", data={"csrf": csrf, "id": "1"})
    assert post.status_code == 503 and "Nothing was changed" in text(post.text)


def test_overview_says_when_a_source_reconcile_fails(console: Console) -> None:
    store = console.client.app.state.relay.store  # type: ignore[union-attr]
    portal = console.client.portal  # type: ignore[union-attr]
    now = time.time()
    assert portal.call(store.reconcile_lease, "stripe", "test", now, now + 60) is not None
    portal.call(store.reconcile_done, "stripe", "test", now, None, "Stripe API: HTTP 401 bad key")
    shown = text(console.client.get("/console/").text)
    assert "reconcile failing" in shown and "Stripe API: HTTP 401 bad key" in shown
    assert portal.call(store.reconcile_lease, "stripe", "test", now + 1, now + 60) is not None
    portal.call(store.reconcile_done, "stripe", "test", now + 2, now, None)
    shown = text(console.client.get("/console/").text)
    assert "reconcile failing" not in shown and "reconciled" in shown


def test_a_destination_its_endpoint_disabled_is_shown_and_enabled_again(
    console: Console, simmer: SimmerEmulator
) -> None:
    store = console.client.app.state.relay.store  # type: ignore[union-attr]
    portal = console.client.portal  # type: ignore[union-attr]
    now = time.time()
    assert portal.call(store.disable_destination, "simmer", "HTTP 410: endpoint gone", None, now)
    page = console.client.get("/console/")
    card = re.search(r'<article class="card h-(\w+)" aria-labelledby="d-simmer">(.*?)</article>',
                     page.text, re.S)
    assert card is not None and card.group(1) == "bad"
    words = text(card.group(2))
    assert "Disabled by its endpoint" in words and "HTTP 410: endpoint gone" in words
    assert "Enable simmer again" in words and ">Disabled<" in card.group(2)
    done = console.client.post("/console/destinations/enable",
                               data={"csrf": console.csrf(), "destination": "simmer",
                                     "back": "/console/"})
    assert "simmer is enabled again (disabled since" in text(done.text)
    assert portal.call(store.disabled_destinations) == {}
    assert "Disabled by its endpoint" not in text(done.text)
    again = console.client.post("/console/destinations/enable",
                                data={"csrf": console.csrf(), "destination": "simmer"})
    assert "simmer was not disabled" in text(again.text)
    refused = console.client.post("/console/destinations/enable", data={"destination": "simmer"})
    assert refused.status_code == 403


def test_retry_all_enables_a_disabled_destination_first(console: Console, simmer: SimmerEmulator) -> None:
    simmer.fail_next(1, 400, body={"error": "email is invalid"})
    console.post_stripe(checkout_event())
    wait_until(lambda: statuses(console.db) == [FAILED], message="the failure")
    store = console.client.app.state.relay.store  # type: ignore[union-attr]
    portal = console.client.portal  # type: ignore[union-attr]
    portal.call(store.disable_destination, "simmer", "HTTP 410: gone", None, time.time())
    done = console.client.post("/console/deliveries/retry",
                               data={"csrf": console.csrf(), "destination": "simmer",
                                     "status": "failed"})
    shown = text(done.text)
    assert "simmer is enabled again" in shown and "Requeued 1 failed delivery to simmer" in shown
    wait_until(lambda: len(simmer.accepted) == 1, message="delivered once enabled")


def test_a_delivery_whose_buyer_was_forgotten_is_not_retried(
    console: Console, simmer: SimmerEmulator
) -> None:
    fail_once(console, simmer, email="gone@example.com")
    store = console.client.app.state.relay.store  # type: ignore[union-attr]
    portal = console.client.portal  # type: ignore[union-attr]
    portal.call(lambda: store.forget(email="gone@example.com", now=time.time()))
    listed = console.client.get("/console/deliveries?status=failed")
    assert "erased" in text(listed.text) and 'aria-label="Retry delivery' not in listed.text
    page = console.client.get("/console/conversions/1")
    assert "personal data was erased (by relay forget)" in text(page.text)
    assert "gone@example.com" not in page.text
    done = console.client.post("/console/deliveries/retry", data={"csrf": console.csrf(), "id": "1"})
    assert "was not requeued: its buyer's personal data was removed by relay forget" in text(done.text)
    assert statuses(console.db) == [FAILED] and simmer.accepted == []
