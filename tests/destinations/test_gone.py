"""Standard Webhooks 410 Gone, and redirects, at every destination.

A 410 from the generic webhook's endpoint means the endpoint is gone: relay stops
sending there (the destination is disabled in the ledger, with since when), every
pending delivery waits, including the one that got the 410, and nothing is lost:
`relay retry --destination webhook` or a new `RELAY_WEBHOOK__URL` enables it and
they all go out. Shown by `relay check`, `/metrics` and the store (for the console).

A redirect is never followed (the request carries the destination's credentials or
the signed payload): the delivery fails, or for the generic webhook is retried as
the spec's "failure", with where it pointed shown (no credentials, no query).
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest

from relay.destinations.converge import Converge
from relay.destinations.webhook import Webhook
from relay.settings import ConvergeSettings, WebhookSettings, WorkerSettings
from tests.conftest import core_env
from tests.destinations.conftest import (
    CONVERGE_PATH,
    CONVERGE_TOKEN,
    WEBHOOK_SECRET,
    WorkerRun,
    sample,
)
from tests.destinations.test_amounts import WIRE
from tests.emulators.webhook import WebhookReceiver
from tests.helpers import checkout_event, wait_until

QUICK = WorkerSettings(retry_base_seconds=30, retry_max_seconds=60, poll_seconds=0.2, lease_seconds=30)


def hook(url: str) -> Webhook:
    return Webhook(WebhookSettings(url=url, secret=WEBHOOK_SECRET))


def test_410_disables_the_webhook_and_its_deliveries_wait(tmp_path: Path, webhook_emu, converge_emu):
    webhook_emu.fail_next(1, 410, body={"error": "endpoint removed"})
    dests = {"webhook": hook(webhook_emu.url + "/hooks/relay"),
             "converge": Converge(ConvergeSettings(postback_url=converge_emu.postback_url,
                                                   webhook_token=CONVERGE_TOKEN))}

    async def go():
        async with WorkerRun(tmp_path / "g.db", dests, QUICK) as run:
            first = sample()
            await run.record(first)
            await run.until(lambda rows: all(r.last_status_code for r in rows), "the 410 and converge")
            [state] = (await run.store.disabled_destinations()).values()
            # Recorded together: one claim would take both if webhook were still being sent to.
            second = sample()
            await run.record(second)
            rows = await run.until(lambda rows: len(rows) == 4 and rows[3].status == "delivered",
                                   "the second converge delivery")
            waiting = {r.order_key: r for r in rows if r.destination == "webhook"}
            requests_while_disabled = len(webhook_emu.requests)
            enabled = await run.store.enable_destination("webhook")  # what relay retry --destination does
            done = await run.until(lambda rows: all(r.status == "delivered" for r in rows), "all delivered")
            return first, second, state, waiting, requests_while_disabled, enabled, done

    first, second, state, waiting, during, enabled, done = asyncio.run(go())
    assert state.destination == "webhook" and state.reason.startswith("HTTP 410: endpoint gone")
    assert state.fingerprint  # of the URL that said it is gone
    gone = waiting[first.order_key]
    assert (gone.status, gone.attempts, gone.last_status_code) == ("pending", 1, 410)
    assert "relay retry --destination webhook" in gone.last_error and "endpoint removed" in gone.last_error
    assert (waiting[second.order_key].status, waiting[second.order_key].attempts) == ("pending", 0)
    assert during == 1  # nothing sent after the 410
    assert enabled is not None and enabled.since == state.since
    assert {r.order_key: r.attempts for r in done if r.destination == "webhook"} == {
        first.order_key: 2, second.order_key: 1}
    assert len(webhook_emu.messages) == 2 and webhook_emu.duplicates == []


@pytest.mark.parametrize("changed", [False, True])
def test_a_new_url_enables_it_at_the_next_start(changed: bool, tmp_path: Path, webhook_emu, converge_emu):
    webhook_emu.fail_next(1, 410)
    old = webhook_emu.url + "/hooks/relay"
    new = webhook_emu.url + "/hooks/relay?endpoint=v2" if changed else old
    converge = Converge(ConvergeSettings(postback_url=converge_emu.postback_url, webhook_token=CONVERGE_TOKEN))

    async def go():
        async with WorkerRun(tmp_path / "u.db", {"webhook": hook(old), "converge": converge}, QUICK) as run:
            await run.record(sample())
            await run.until(lambda rows: all(r.last_status_code for r in rows), "the 410")
            await run.stop()
            # The operator changed RELAY_WEBHOOK__URL, or not, and restarted.
            run.destinations = {"webhook": hook(new), "converge": converge}
            run.start()
            # One claim takes every due delivery of the destinations it sends to: once the
            # converge one recorded now is delivered, the webhook one had its chance too.
            await run.record(sample())
            rows = await run.until(lambda rows: rows[-1].status == "delivered", "the new converge delivery")
            if changed:
                rows = await run.until(lambda rows: all(r.status == "delivered" for r in rows), "all delivered")
            return [r for r in rows if r.destination == "webhook"], await run.store.disabled_destinations()

    (row, _), disabled = asyncio.run(go())
    if changed:
        assert row.attempts == 2 and len(webhook_emu.accepted) == 2 and disabled == {}
    else:
        assert (row.status, row.attempts) == ("pending", 1) and len(webhook_emu.requests) == 1
        assert list(disabled) == ["webhook"]


def metric(text: str, name: str, destination: str) -> float | None:
    found = re.search(rf'^{name}{{destination="{destination}"}} (\S+)$', text, re.MULTILINE)
    return None if found is None else float(found.group(1))


def test_disabled_as_the_operator_sees_it(tmp_path: Path, relay_factory, simmer, impact, webhook_emu):
    """relay serve + the CLI: the 410, `relay check`, /metrics, `relay deliveries`,
    `relay retry --destination webhook`, and later a new RELAY_WEBHOOK__URL."""
    env = core_env(tmp_path / "relay.db", simmer.url, impact.url) | {
        "RELAY_WEBHOOK__URL": webhook_emu.url + "/hooks/relay", "RELAY_WEBHOOK__SECRET": WEBHOOK_SECRET}
    relay = relay_factory(env)
    webhook_emu.fail_next(1, 410, body={"error": "this endpoint was deleted"})
    relay.post_stripe(checkout_event(metadata={"irclickid": "c"}))
    wait_until(lambda: relay.deliveries(destination="webhook")[0]["last_status_code"] == 410, message="410")
    [row] = relay.deliveries(destination="webhook")
    assert row["status"] == "pending" and "endpoint gone" in row["last_error"]

    check = relay.cli("check")
    assert "destination webhook is disabled since" in check.stderr
    assert "relay retry --destination webhook" in check.stderr
    described = json.loads(check.stdout)["destinations"]
    assert described["webhook"]["disabled"]["url_changed"] is False
    assert described["webhook"]["disabled"]["reason"].startswith("HTTP 410: endpoint gone")
    assert "disabled" not in described["simmer"]

    text = httpx.get(relay.url + "/metrics").text
    assert metric(text, "relay_destination_disabled", "webhook") == 1
    assert metric(text, "relay_destination_disabled", "simmer") == 0
    assert metric(text, "relay_destination_disabled_since_seconds", "webhook") > 1.7e9
    assert metric(text, "relay_destination_disabled_since_seconds", "simmer") is None

    relay.post_stripe(checkout_event(metadata={"irclickid": "c"}))  # waits with the first
    wait_until(lambda: len(simmer.accepted) == 2, message="simmer still delivered")
    assert len(webhook_emu.requests) == 1

    retried = relay.cli("retry", "--destination", "webhook")
    assert retried.stdout.startswith("destination webhook enabled again (disabled since")
    wait_until(lambda: len(webhook_emu.accepted) == 2, message="both webhook deliveries after retry")
    text = httpx.get(relay.url + "/metrics").text
    assert metric(text, "relay_destination_disabled", "webhook") == 0
    again = relay.cli("retry", "--destination", "webhook", check=False)
    assert again.returncode == 1 and "is not disabled" in again.stderr

    # Gone again; the operator moves the endpoint and restarts relay with the new URL.
    webhook_emu.fail_next(1, 410)
    relay.post_stripe(checkout_event(metadata={"irclickid": "c"}))
    wait_until(lambda: "disabled since" in relay.cli("check").stderr, message="disabled again")
    relay.stop()
    relay.env["RELAY_WEBHOOK__URL"] = webhook_emu.url + "/hooks/relay?moved=1"
    check = relay.cli("check")
    assert "its URL has changed since" in check.stderr
    assert json.loads(check.stdout)["destinations"]["webhook"]["disabled"]["url_changed"] is True
    relay.start()
    wait_until(lambda: len(webhook_emu.accepted) == 3, message="delivered at the new URL")
    assert "disabled" not in relay.cli("check").stderr
    assert "enabled again: its URL changed" in relay.logs()


def test_check_does_not_create_a_ledger(tmp_path: Path, relay_factory):
    relay = relay_factory({"RELAY_DATABASE_URL": f"sqlite:///{tmp_path}/none.db",
                           "RELAY_WEBHOOK__URL": "http://127.0.0.1:1/h", "RELAY_WEBHOOK__SECRET": WEBHOOK_SECRET},
                          start=False)
    assert relay.cli("check").returncode == 0
    assert not (tmp_path / "none.db").exists()


# ------------------------------------------------------------------ redirects


REDIRECTS = (301, 302, 307, 308)


@pytest.mark.parametrize("code", REDIRECTS)
@pytest.mark.parametrize("name", ["simmer", "impact", "pagent", "topmail", "converge", "webhook"])
def test_redirects_are_not_followed(name, code, tmp_path: Path, simmer, impact, pagent_emu, topmail_emu,
                                    converge_emu, webhook_emu):
    emus = {"simmer": simmer, "impact": impact, "pagent": pagent_emu, "topmail": topmail_emu,
            "converge": converge_emu, "webhook": webhook_emu}
    emu = emus[name]
    with WebhookReceiver(WEBHOOK_SECRET) as trap:  # where the redirect points: must see nothing
        location = f"http://user:hunter2@127.0.0.1:{trap.port}/moved/here?token=s3cret"
        emu.fail_next(1, code, {"Location": location}, {"error": "moved"})
        dest = next(w for w in WIRE if w.destination == name).make(emu, "USD")

        async def go():
            async with WorkerRun(tmp_path / "r.db", {name: dest}, QUICK) as run:
                await run.record(sample())
                [row] = await run.until(lambda rows: rows[0].last_status_code == code, f"the {code}")
                return row

        row = asyncio.run(go())
        assert trap.requests == []
    assert len(emu.requests) == 1
    error = row.last_error
    shown = f"http://127.0.0.1:{trap.port}" + ("" if name == "converge" else "/moved/here")
    assert f"HTTP {code}: redirected to {shown};" in error, error
    assert "relay does not follow redirects" in error
    for secret in ("hunter2", "user:", "s3cret", "token"):
        assert secret not in error
    if name == "webhook":  # Standard Webhooks: a 3xx is a failed attempt, retried later
        assert row.status == "pending" and row.attempts == 1
    else:
        assert row.status == "failed"


def test_converge_redirect_does_not_show_the_secret_path(converge_emu, tmp_path: Path):
    converge_emu.fail_next(1, 308, {"Location": converge_emu.url + "/api/webhooks/src_NEWSECRET"})
    dest = Converge(ConvergeSettings(postback_url=converge_emu.url + CONVERGE_PATH, webhook_token=CONVERGE_TOKEN))

    async def go():
        async with WorkerRun(tmp_path / "c.db", {"converge": dest}, QUICK) as run:
            await run.record(sample())
            return await run.until(lambda rows: rows[0].status == "failed", "failed")

    [row] = asyncio.run(go())
    assert "NEWSECRET" not in row.last_error and f"redirected to {converge_emu.url};" in row.last_error


def test_the_fingerprint_is_a_hash_of_the_url_only():
    """What is stored with the disabled state: 32 hex digits of SHA-256 of the URL (never the
    URL, which may hold a token); None for a destination configured without a `url`."""
    a = hook("https://example.org/hook")
    assert a.fingerprint() == "554ec998c37b96dab60f37327773c9c5"
    assert hook("https://example.org/hook?v=2").fingerprint() != a.fingerprint()
    converge = Converge(ConvergeSettings(postback_url="https://app.runconverge.com/api/webhooks/secret"))
    assert converge.fingerprint() is None
