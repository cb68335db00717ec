"""Run every destination stand-in on 127.0.0.1 for trying relay by hand.

    python -m tests.emulators            # prints the RELAY_* settings that point relay at them
    eval "$(python -m tests.emulators --env-only)"   # (in another shell, while the first runs)

Each stand-in enforces its API's documented rules and prints every request it
accepts or rejects, so `relay serve` + `relay simulate stripe …` shows what each
destination would have received. Ctrl-C stops them.
"""

from __future__ import annotations

import argparse
import json
import time
from urllib.parse import unquote_plus

from relay.destinations import redact
from tests.emulators.converge import ConvergeEmulator
from tests.emulators.ga4 import GA4Emulator
from tests.emulators.impact import ImpactEmulator
from tests.emulators.meta import MetaEmulator
from tests.emulators.pagent import PagentEmulator
from tests.emulators.simmer import SimmerEmulator
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
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.emulators")
    parser.add_argument("--base-port", type=int, default=9101)
    parser.add_argument("--env-only", action="store_true", help="print the settings and exit")
    args = parser.parse_args()
    p = args.base_port
    emus = {
        "simmer": SimmerEmulator(KEYS["simmer"], "proj_local", port=p),
        "impact": ImpactEmulator(KEYS["impact_sid"], KEYS["impact_token"], port=p + 1),
        "pagent": PagentEmulator(KEYS["pagent"], port=p + 2),
        "topmail": TopmailEmulator(KEYS["topmail"], port=p + 3),
        "converge": ConvergeEmulator(port=p + 4),
        "webhook": WebhookReceiver(KEYS["webhook"], port=p + 5),
        "meta": MetaEmulator(KEYS["meta_pixel"], KEYS["meta_token"], port=p + 6),
        "ga4": GA4Emulator(KEYS["ga4_id"], KEYS["ga4_secret"], port=p + 7),
    }
    env = {
        "RELAY_SIMMER__SECRET_KEY": KEYS["simmer"],
        "RELAY_SIMMER__PROJECT_ID": "proj_local",
        "RELAY_SIMMER__URL": f"{emus['simmer'].url}/api/conversion",
        "RELAY_IMPACT__ACCOUNT_SID": KEYS["impact_sid"],
        "RELAY_IMPACT__AUTH_TOKEN": KEYS["impact_token"],
        "RELAY_IMPACT__CAMPAIGN_ID": "1000",
        "RELAY_IMPACT__EVENT_TYPE_ID": "9876",
        "RELAY_IMPACT__URL": emus["impact"].url,
        "RELAY_PAGENT__API_KEY": KEYS["pagent"],
        "RELAY_PAGENT__CURRENCY": "USD",
        "RELAY_PAGENT__URL": emus["pagent"].url,
        "RELAY_TOPMAIL__API_KEY": KEYS["topmail"],
        "RELAY_TOPMAIL__URL": emus["topmail"].url,
        "RELAY_CONVERGE__POSTBACK_URL": emus["converge"].postback_url,
        "RELAY_WEBHOOK__URL": f"{emus['webhook'].url}/hooks/relay",
        "RELAY_WEBHOOK__SECRET": KEYS["webhook"],
        "RELAY_META__PIXEL_ID": KEYS["meta_pixel"],
        "RELAY_META__ACCESS_TOKEN": KEYS["meta_token"],
        "RELAY_META__URL": emus["meta"].url,
        "RELAY_GA4__MEASUREMENT_ID": KEYS["ga4_id"],
        "RELAY_GA4__API_SECRET": KEYS["ga4_secret"],
        "RELAY_GA4__URL": emus["ga4"].url,
    }
    exports = "\n".join(f"export {k}='{v}'" for k, v in env.items())
    if args.env_only:
        print(exports)
        return
    for emu in emus.values():
        emu.start()
    print(exports, flush=True)
    print("# stand-ins running; Ctrl-C to stop", flush=True)
    seen = {name: 0 for name in emus}
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
    except KeyboardInterrupt:
        pass
    finally:
        for emu in emus.values():
            emu.stop()


if __name__ == "__main__":
    main()
