"""Run every destination stand-in on 127.0.0.1 for trying relay by hand.

    python -m tests.emulators            # prints the RELAY_* settings that point relay at them
    eval "$(python -m tests.emulators --env-only)"   # (in another shell, while the first runs)

Each stand-in enforces its API's documented rules and prints every request it
accepts or rejects, so `relay serve` + `relay simulate stripe …` shows what each
destination would have received. Ctrl-C stops them.

`--processors` also runs the four processor API stand-ins (Stripe, Paddle, Lemon
Squeezy, Chargebee: what `relay backfill <source>` and reconcile read) and exports
their keys and base URLs. Each of them takes `POST /webhooks/<source>` too: the
event is kept in the processor's API and never reaches relay, as if relay had been
down. So `relay simulate stripe --url <the Stripe API stand-in's URL>` makes a
missed purchase for `relay backfill stripe --since 1h` to find.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from urllib.parse import unquote_plus

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from relay.destinations import redact
from tests.emulators.chargebee_api import ChargebeeAPIEmulator
from tests.emulators.converge import ConvergeEmulator
from tests.emulators.ga4 import GA4Emulator
from tests.emulators.impact import ImpactEmulator
from tests.emulators.lemonsqueezy_api import LemonSqueezyAPIEmulator
from tests.emulators.meta import MetaEmulator
from tests.emulators.paddle_api import PaddleAPIEmulator
from tests.emulators.pagent import PagentEmulator
from tests.emulators.simmer import SimmerEmulator
from tests.emulators.stripe_api import StripeAPIEmulator
from tests.emulators.topmail import TopmailEmulator
from tests.emulators.webhook import WebhookReceiver

KEYS = {
    "simmer": "simmer_sk_local",
    "impact_sid": "IRlocalSID",
    "impact_token": "impact-local-token",
    "pagent": "pagent-local-key",
    "topmail": "tm_test_local",
    "webhook": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "meta_pixel": "1234567890",
    "meta_token": "EAAlocaltoken",
    "ga4_id": "G-LOCAL12345",
    "ga4_secret": "ga4-local-secret",
    "stripe_api": "sk_test_local_stand_in",
    "paddle_api": "pdl_sdbx_apikey_local_stand_in",
    "lemonsqueezy_api": "ls-local-stand-in-key",
    "chargebee_api": "test_local_stand_in_key",
}
CONVERGE_PATH = "/api/webhooks/src_secret123"


class _Missed:
    """A processor API stand-in that also takes `POST /webhooks/<source>`: the event is
    kept where the processor's API lists it, and relay never hears of it (missed)."""

    source = ""
    missed: list[str]

    async def _endpoint(self, request: Request) -> Response:
        if request.method != "POST" or request.url.path != f"/webhooks/{self.source}":
            return await super()._endpoint(request)  # type: ignore[misc]
        try:
            event = json.loads(await request.body())
            what = self.take(event)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return JSONResponse({"error": f"not a {self.source} webhook body: {exc!r}"}, status_code=400)
        self.missed.append(what)
        return JSONResponse({"status": "missed", "kept_at": f"the {self.source} API stand-in",
                             "event": what})

    def take(self, event: dict) -> str:
        raise NotImplementedError


class StripeAPI(_Missed, StripeAPIEmulator):
    source = "stripe"

    def take(self, event: dict) -> str:
        self.add_event(event)
        return f"{event['type']} {event['id']}"


class PaddleAPI(_Missed, PaddleAPIEmulator):
    source = "paddle"

    def take(self, event: dict) -> str:
        # A fresh, time-ordered event id, as Paddle's are (the sample's is random)
        at = datetime.fromisoformat(event["occurred_at"].replace("Z", "+00:00")).timestamp()
        made = self.add_event(event["event_type"], event["data"], at)
        made.update({k: v for k, v in event.items() if k not in made})  # relay_simulated
        return f"{made['event_type']} {made['event_id']}"


class LemonSqueezyAPI(_Missed, LemonSqueezyAPIEmulator):
    source = "lemonsqueezy"

    def take(self, event: dict) -> str:
        # Lemon Squeezy has no events API: the object the webhook carried is what is listed
        data = event["data"]
        kind, oid = data["type"], str(data["id"])
        self.objects[kind] = [o for o in self.objects[kind] if o["id"] != oid]
        self.add(kind, data["attributes"], int(oid))
        return f"{event['meta']['event_name']} {kind}/{oid}"


class ChargebeeAPI(_Missed, ChargebeeAPIEmulator):
    source = "chargebee"

    def take(self, event: dict) -> str:
        self.add_event(event)
        return f"{event['event_type']} {event['id']}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.emulators")
    parser.add_argument("--base-port", type=int, default=9101)
    parser.add_argument("--env-only", action="store_true", help="print the settings and exit")
    parser.add_argument("--processors", action="store_true",
                        help="also the processor API stand-ins (relay backfill, reconcile)")
    args = parser.parse_args()
    p = args.base_port

    def url(offset: int) -> str:
        return f"http://127.0.0.1:{p + offset}"

    env = {
        "RELAY_SIMMER__SECRET_KEY": KEYS["simmer"],
        "RELAY_SIMMER__PROJECT_ID": "proj_local",
        "RELAY_SIMMER__URL": f"{url(0)}/api/conversion",
        "RELAY_IMPACT__ACCOUNT_SID": KEYS["impact_sid"],
        "RELAY_IMPACT__AUTH_TOKEN": KEYS["impact_token"],
        "RELAY_IMPACT__CAMPAIGN_ID": "1000",
        "RELAY_IMPACT__EVENT_TYPE_ID": "9876",
        "RELAY_IMPACT__URL": url(1),
        "RELAY_PAGENT__API_KEY": KEYS["pagent"],
        "RELAY_PAGENT__CURRENCY": "USD",
        "RELAY_PAGENT__URL": url(2),
        "RELAY_TOPMAIL__API_KEY": KEYS["topmail"],
        "RELAY_TOPMAIL__URL": url(3),
        "RELAY_CONVERGE__POSTBACK_URL": url(4) + CONVERGE_PATH,
        "RELAY_WEBHOOK__URL": f"{url(5)}/hooks/relay",
        "RELAY_WEBHOOK__SECRET": KEYS["webhook"],
        "RELAY_META__PIXEL_ID": KEYS["meta_pixel"],
        "RELAY_META__ACCESS_TOKEN": KEYS["meta_token"],
        "RELAY_META__URL": url(6),
        "RELAY_GA4__MEASUREMENT_ID": KEYS["ga4_id"],
        "RELAY_GA4__API_SECRET": KEYS["ga4_secret"],
        "RELAY_GA4__URL": url(7),
    }
    if args.processors:
        env.update({
            "RELAY_STRIPE__API_KEY": KEYS["stripe_api"],
            "RELAY_STRIPE__API_BASE": url(8),
            "RELAY_PADDLE__API_KEY": KEYS["paddle_api"],
            "RELAY_PADDLE__API_BASE": url(9),
            "RELAY_LEMONSQUEEZY__API_KEY": KEYS["lemonsqueezy_api"],
            "RELAY_LEMONSQUEEZY__API_BASE": url(10),
            "RELAY_CHARGEBEE__SITE": "local-test",
            "RELAY_CHARGEBEE__API_KEY": KEYS["chargebee_api"],
            "RELAY_CHARGEBEE__API_BASE": url(11),
        })
    exports = "\n".join(f"export {k}='{v}'" for k, v in env.items())
    if args.env_only:  # no port is taken: the stand-ins may be running already
        print(exports)
        return
    emus = {
        "simmer": SimmerEmulator(KEYS["simmer"], "proj_local", port=p),
        "impact": ImpactEmulator(KEYS["impact_sid"], KEYS["impact_token"], port=p + 1),
        "pagent": PagentEmulator(KEYS["pagent"], port=p + 2),
        "topmail": TopmailEmulator(KEYS["topmail"], port=p + 3),
        "converge": ConvergeEmulator(CONVERGE_PATH, port=p + 4),
        "webhook": WebhookReceiver(KEYS["webhook"], port=p + 5),
        "meta": MetaEmulator(KEYS["meta_pixel"], KEYS["meta_token"], port=p + 6),
        "ga4": GA4Emulator(KEYS["ga4_id"], KEYS["ga4_secret"], port=p + 7),
    }
    if args.processors:
        apis: dict[str, _Missed] = {
            "stripe_api": StripeAPI(KEYS["stripe_api"], port=p + 8),
            "paddle_api": PaddleAPI(KEYS["paddle_api"], port=p + 9),
            "lemonsqueezy_api": LemonSqueezyAPI(KEYS["lemonsqueezy_api"], port=p + 10),
            "chargebee_api": ChargebeeAPI(KEYS["chargebee_api"], port=p + 11),
        }
        for api in apis.values():
            api.missed = []
        emus.update(apis)  # type: ignore[arg-type]
    for emu in emus.values():
        emu.start()
    print(exports, flush=True)
    if args.processors:
        print("# a missed event (kept at the processor's API, never sent to relay):\n"
              f"#   relay simulate stripe --url {url(8)}", flush=True)
    print("# stand-ins running; Ctrl-C to stop", flush=True)
    seen = {name: 0 for name in emus}
    missed = {name: 0 for name in emus}
    try:
        while True:
            time.sleep(0.2)
            for name, emu in emus.items():
                for request in emu.requests[seen[name]:]:
                    verdict = next(
                        (f"REJECTED {code} {json.dumps(body)}" for s, code, body in emu.rejected if s is request),
                        "accepted",
                    )
                    print(f"[{name}] {request.method} {request.path} {verdict}\n    {redact(unquote_plus(request.body.decode(errors='replace')))[:600]}",
                          flush=True)
                seen[name] = len(emu.requests)
                for what in getattr(emu, "missed", [])[missed[name]:]:
                    print(f"[{name}] kept {what} (missed by relay)", flush=True)
                missed[name] = len(getattr(emu, "missed", []))
    except KeyboardInterrupt:
        pass
    finally:
        for emu in emus.values():
            emu.stop()


if __name__ == "__main__":
    main()
