"""Recovering what relay kept but did not deliver, as a user does it: real `relay serve`
processes on a real SQLite file, signed Stripe webhooks, the Simmer / impact.com /
pagent stand-ins, and the `relay events`, `replay`, `backfill --destination` and
`resend` commands run as processes."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import core_env
from tests.destinations.conftest import PAGENT_KEY
from tests.emulators.pagent import PagentEmulator
from tests.helpers import REPO, checkout_event, fixture, sqlite_count, wait_until

# A relay release that knows one more currency code than this one: the "parser fix" a
# user upgrades to. XAD (the Arab Accounting Dinar) is a recent ISO 4217 code that relay
# does not know yet. Run as the real CLI, with only that table changed.
UPGRADED = (
    "import relay.money as m; m.ISO_4217 = m.ISO_4217 | {'XAD'};"
    " from relay.cli import main; main()"
)


def upgraded_cli(relay, *args: str) -> subprocess.CompletedProcess[str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "DATABASE_URL"))}
    env.update(relay.env)
    env.setdefault("PYTHONPATH", str(REPO))
    result = subprocess.run([sys.executable, "-c", UPGRADED, *args], cwd=relay.workdir, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result


def events(relay, *args: str) -> list[dict]:
    out = relay.cli("events", "--json", *args).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def restart(relay, relay_factory, **changes: str):
    """The same ledger, a changed configuration: stop relay and start it again."""
    relay.stop()
    return relay_factory({**relay.env, **changes}, port=relay.port)


def impact_count(impact, event: dict) -> int:
    """impact.com requests for this checkout (its OrderId is the payment intent: session ids
    are longer than impact's 64 characters)."""
    return sum(r.parsed["OrderId"] == event["data"]["object"]["payment_intent"]
               for r in impact.accepted)


def simmer_writes(simmer, order_key: str) -> int:
    return simmer.writes.get(f"order:{simmer.project_id}:{order_key}", 0)


def test_test_events_are_kept_and_replayed_after_turning_on_deliver_test_events(
        relay, relay_factory, simmer, impact, tmp_path):
    test_event = checkout_event(livemode=False, email="tess@example.com",
                                metadata={"irclickid": "click-test"})
    order = test_event["data"]["object"]["id"]
    answer = relay.post_stripe(test_event).json()
    assert answer["status"] == "ignored" and "RELAY_DELIVER_TEST_EVENTS" in answer["reason"]
    assert relay.post_stripe(checkout_event()).json()["status"] == "accepted"
    wait_until(lambda: len(relay.deliveries(status="delivered")) == 2, message="live purchase")

    [kept] = events(relay, "--status", "ignored")
    assert (kept["event_id"], kept["source"], kept["event_type"]) == (
        test_event["id"], "stripe", "checkout.session.completed")
    assert [e["event_id"] for e in events(relay, "--since", "1h", "--source", "stripe")][-1] == (
        test_event["id"])
    assert events(relay, "--since", "2099-01-01") == []
    bad = relay.cli("events", "--since", "last tuesday", check=False)
    assert bad.returncode != 0 and "--since" in bad.stderr and "ISO 8601" in bad.stderr
    listing = relay.cli("events").stdout
    assert test_event["id"] in listing and "test-mode event" in listing
    assert "tess@example.com" not in listing  # the list never shows bodies
    shown = relay.cli("events", "--id", str(kept["id"])).stdout
    assert "status:    ignored" in shown and '"email": "tess@example.com"' in shown

    still = relay.cli("replay").stdout  # nothing changed in the configuration yet
    assert f"{test_event['id']} (checkout.session.completed): still ignored: test-mode" in still

    relay = restart(relay, relay_factory, RELAY_DELIVER_TEST_EVENTS="true")
    dry = relay.cli("replay", "--dry-run").stdout
    assert re.search(rf"\(dry run\) #\d+ stripe {test_event['id']} .*: ignored → accepted, would record"
                     rf" 1 new conversion \(purchase:{order}\), 2 deliveries", dry), dry
    assert "nothing was changed" in dry
    assert events(relay, "--status", "ignored")[0]["status"] == "ignored"
    assert len(relay.deliveries()) == 2 and sqlite_count(tmp_path / "relay.db", "conversions") == 1

    done = relay.cli("replay").stdout
    assert (f"{test_event['id']} (checkout.session.completed): ignored → accepted,"
            f" 1 new conversion (purchase:{order}), 2 deliveries") in done, done
    wait_until(lambda: simmer_writes(simmer, order) == 1 and impact_count(impact, test_event) == 1,
               message="the replayed test purchase")
    assert events(relay, "--status", "ignored") == []
    [replayed] = [e for e in events(relay) if e["event_id"] == test_event["id"]]
    assert replayed["status"] == "accepted" and replayed["replayed_at"] is not None

    again = relay.cli("replay").stdout  # the default selection no longer finds it
    assert "no stored event matches" in again
    by_id = relay.cli("replay", str(replayed["id"])).stdout
    assert "still accepted, nothing new" in by_id and f"already recorded: purchase:{order}" in by_id
    assert len(relay.deliveries()) == 4
    time.sleep(1.0)  # give a wrongly planned second delivery the chance to go out
    assert simmer_writes(simmer, order) == 1
    assert impact_count(impact, test_event) == 1


def test_renamed_attribution_key_is_reported_and_never_records_twice(
        relay, relay_factory, simmer, impact):
    live = checkout_event(customer=None, metadata={"ir_click": "click-renamed"})
    order = live["data"]["object"]["id"]
    assert relay.post_stripe(live).json()["deliveries"] == 2
    sandboxed = checkout_event(customer=None, livemode=False, metadata={"ir_click": "click-test"})
    assert relay.post_stripe(sandboxed).json()["status"] == "ignored"
    wait_until(lambda: len(relay.deliveries(status="delivered")) == 1
               and len(relay.deliveries(status="skipped")) == 1, message="simmer sent, impact skipped")
    [skipped] = relay.deliveries(status="skipped")
    assert skipped["destination"] == "impact" and "irclickid" in skipped["last_error"]

    relay = restart(relay, relay_factory, RELAY_ATTRIBUTION__KEYS__IRCLICKID="ir_click",
                    RELAY_DELIVER_TEST_EVENTS="true")
    ids = {e["event_id"]: e["id"] for e in events(relay)}
    out = relay.cli("replay", str(ids[live["id"]]), str(ids[sandboxed["id"]])).stdout
    # The recorded conversion is kept as it was, and the command says so.
    assert f"already recorded: purchase:{order} (kept as recorded)" in out, out
    assert (f"purchase:{order} was recorded with other attribution ids than it would get today"
            " (irclickid); replay never changes a recorded conversion") in out
    # The ignored test event had no conversion yet: it is recorded with today's attribution.
    test_order = sandboxed["data"]["object"]["id"]
    assert f"ignored → accepted, 1 new conversion (purchase:{test_order}), 2 deliveries" in out
    wait_until(lambda: impact_count(impact, sandboxed) == 1,
               message="impact gets the newly attributed conversion")
    assert [r.parsed["ClickId"] for r in impact.accepted] == ["click-test"]
    rows = [d for d in relay.deliveries() if d["order_key"] == order]
    assert sorted((d["destination"], d["status"]) for d in rows) == [
        ("impact", "skipped"), ("simmer", "delivered")]
    assert simmer_writes(simmer, order) == 1


def test_quarantined_event_becomes_a_conversion_after_an_upgrade_that_reads_it(relay, simmer, impact):
    event = checkout_event(currency="xad", amount=1200, metadata={"irclickid": "click-xts"})
    order = event["data"]["object"]["id"]
    answer = relay.post_stripe(event).json()
    assert answer == {"status": "quarantined", "event_id": event["id"],
                      "reason": "unknown currency code 'xad'"}
    shape = {"id": "evt_1UnknownShape00000000000", "object": "event", "type": "checkout.session.completed"}
    assert relay.post_stripe(shape).json()["status"] == "quarantined"
    assert relay.post_stripe(event).json()["status"] == "duplicate"  # Stripe's retry
    assert [e["event_id"] for e in events(relay, "--status", "quarantined")] == [shape["id"], event["id"]]

    today = relay.cli("replay", "--status", "quarantined").stdout
    assert "still quarantined: unknown currency code 'xad'" in today

    upgraded = upgraded_cli(relay, "replay", "--dry-run")
    assert "(dry run) #" in upgraded.stdout and "would record 1 new conversion" in upgraded.stdout
    assert relay.deliveries() == []
    upgraded = upgraded_cli(relay, "replay").stdout
    assert (f"{event['id']} (checkout.session.completed): quarantined → accepted,"
            f" 1 new conversion (purchase:{order}), 2 deliveries") in upgraded, upgraded
    assert "still quarantined: not a Stripe event" in upgraded  # the other one stays put
    wait_until(lambda: simmer_writes(simmer, order) == 1 and len(impact.accepted) == 1,
               message="the recovered purchase delivered")
    assert simmer.conversions[f"order:{simmer.project_id}:{order}"]["currency"] == "XAD"
    assert impact.accepted[0].parsed["ClickId"] == "click-xts"
    assert [e["event_id"] for e in events(relay, "--status", "quarantined")] == [shape["id"]]
    assert "no stored event matches" not in upgraded_cli(relay, "replay").stdout
    assert len(relay.deliveries()) == 2  # a second run changes nothing


def test_backfill_to_a_destination_added_after_the_fact(tmp_path, relay_factory, simmer, impact):
    without_simmer = {k: v for k, v in core_env(tmp_path / "relay.db", simmer.url, impact.url).items()
                      if not k.startswith("RELAY_SIMMER__")}
    relay = relay_factory(without_simmer)
    recent = checkout_event(metadata={"irclickid": "click-recent"})
    old = checkout_event(created=int(time.time()) - 8 * 86400, metadata={"irclickid": "click-old"})
    charge = fixture("stripe/charge.refunded.data-fragment.pay-rails.json")
    refund = copy.deepcopy(charge["object"]["refunds"]["data"][0])
    refund_event = {"id": "evt_1RefundForBackfill0000", "object": "event", "type": "refund.created",
                    "created": int(time.time()) - 60, "livemode": True, "data": {"object": refund}}
    for event in (recent, old, refund_event):
        assert relay.post_stripe(event).json()["status"] == "accepted"
    wait_until(lambda: len(relay.deliveries(status="delivered")) == 2, message="impact deliveries")

    relay = restart(relay, relay_factory, **core_env(tmp_path / "relay.db", simmer.url, impact.url))
    dry = relay.cli("backfill", "--destination", "simmer", "--dry-run").stdout
    assert "dry run: would plan 1 delivery to simmer" in dry, dry
    assert ("left out 2: 1 older than simmer's 7-day window; 1 refund is not a kind simmer takes"
            in dry), dry
    assert f"purchase:{recent['data']['object']['id']}" in dry  # the sample
    time.sleep(0.5)
    assert simmer.accepted == [] and relay.deliveries(destination="simmer") == []

    done = relay.cli("backfill", "--destination", "simmer").stdout
    assert "planned 1 delivery to simmer" in done
    wait_until(lambda: simmer_writes(simmer, recent["data"]["object"]["id"]) == 1,
               message="the backfilled simmer delivery")
    assert "planned 0 deliveries to simmer" in relay.cli("backfill", "--destination", "simmer").stdout
    assert len(relay.deliveries(destination="simmer")) == 1

    no_window = relay.cli("backfill", "--destination", "impact", check=False)
    assert no_window.returncode != 0 and "give --since" in no_window.stderr
    assert "planned 0 deliveries to impact" in relay.cli(
        "backfill", "--destination", "impact", "--since", "1d").stdout
    for args, words in ((["backfill", "stripe", "--since", "2h"], "RELAY_STRIPE__API_KEY is not set"),
                        (["backfill", "stripe", "--destination", "simmer"], "not both"),
                        (["backfill", "--destination", "meta"], "not configured"),
                        (["backfill", "--destination", "simmer", "--since", "yesterday"], "--since"),
                        (["backfill", "--destination", "simmer", "--since", "1h", "--until", "2h"],
                         "--since must be before --until")):
        result = relay.cli(*args, check=False)
        assert result.returncode != 0 and words in result.stderr, (args, result.stderr)
    time.sleep(0.5)
    assert len(simmer.accepted) == 1


@pytest.fixture
def pagent():
    with PagentEmulator(PAGENT_KEY) as emu:
        yield emu


def test_resend_sends_a_delivered_delivery_again_with_the_same_key(
        tmp_path, relay_factory, simmer, impact, pagent):
    env = core_env(tmp_path / "relay.db", simmer.url, impact.url)
    env.update(RELAY_PAGENT__API_KEY=PAGENT_KEY, RELAY_PAGENT__CURRENCY="USD",
               RELAY_PAGENT__URL=pagent.url)
    relay = relay_factory(env)
    ids = {"session_id": "sess-r", "user_id": "user-r", "conversion_id": "goal-r"}
    event = checkout_event(customer=None, metadata={"pagent": json.dumps(ids)})
    order = event["data"]["object"]["id"]
    assert relay.post_stripe(event).json()["deliveries"] == 3
    wait_until(lambda: len(relay.deliveries(status="delivered")) == 2
               and len(relay.deliveries(status="skipped")) == 1, message="settled")
    by_dest = {d["destination"]: d for d in relay.deliveries()}
    simmer_id, pagent_id, impact_id = (str(by_dest[n]["id"]) for n in ("simmer", "pagent", "impact"))

    refused = [
        ([pagent_id], "cannot deduplicate"),
        ([simmer_id, pagent_id], "cannot deduplicate"),  # one bad id: nothing is resent
        ([impact_id], "is skipped, not delivered: `relay retry"),
        (["999999"], "no such delivery"),
    ]
    for args, words in refused:
        result = relay.cli("resend", *args, check=False)
        assert result.returncode != 0 and words in result.stderr, (args, result.stderr)
        assert "nothing was resent" in result.stderr
    time.sleep(0.5)
    assert simmer_writes(simmer, order) == 1 and len(pagent.events) == 1

    out = relay.cli("resend", simmer_id).stdout
    assert f"resending delivery {simmer_id} to simmer (purchase:{order})" in out
    wait_until(lambda: simmer_writes(simmer, order) == 2, message="simmer gets it again")
    first, second = [r.parsed["order_id"] for r in simmer.accepted]
    assert first == second == order  # the same idempotency key
    wait_until(lambda: relay.deliveries(destination="simmer")[0]["status"] == "delivered",
               message="the resend settled")
    history = relay.cli("deliveries", "--id", simmer_id).stdout
    assert "manual resend (relay resend)" in history
    assert history.count("delivered") >= 3  # the row, and two delivered attempts around the resend

    forced = relay.cli("resend", pagent_id, "--force")
    assert f"resending delivery {pagent_id} to pagent" in forced.stdout
    wait_until(lambda: len(pagent.events) == 2, message="pagent gets it again, on purpose")
    time.sleep(0.5)
    assert simmer_writes(simmer, order) == 2 and len(impact.accepted) == 0
