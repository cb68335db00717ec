"""relay.js in a real headless Chromium: a merchant page on one 127.0.0.1 origin loads
/relay.js from a real `relay serve` on another; the landing URL's click ids survive
navigation in the first-party cookie, and Relay.metadata() returns what the
checkout passes to the processor. Also: how /relay.js is served."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx

from tests.browser import Site, browser  # noqa: F401 - the fixture

FBCLID = "IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDGrc"
PAGENT = {"session_id": "sess-js", "user_id": "user-js", "visit_id": "visit-js",
          "conversion_id": "goal-js"}


def pages(relay_url: str) -> dict[str, str]:
    trackers = """
<script>
  // what Meta's pixel, gtag.js and pagent's SDK would have left on the page
  document.cookie = "_fbp=fb.1.1596403881668.1116446470; path=/";
  document.cookie = "_ga=GA1.1.1187654321.1700000000; path=/";
  document.cookie = "_ga_ABC123=GS1.1.1700000100.3.1.1700000200.0.0.0; path=/";
  window._pgnt = {variables: function (label) {
    return label === "purchase" ? PAGENT_JSON : {conversion_id: null}; }};
</script>""".replace("PAGENT_JSON", json.dumps(PAGENT))
    script = f'<script src="{relay_url}/relay.js" data-cookie-days="30"></script>'
    return {
        "/landing": f"<!doctype html><title>Landing</title>{trackers}{script}"
                    '<h1>Spring sale</h1><a id="buy" href="/checkout">Buy</a>',
        "/checkout": f"<!doctype html><title>Checkout</title>{trackers}{script}"
                     "<h1>Checkout</h1><p>Relay.metadata() for Stripe Checkout:</p>"
                     '<pre id="out" style="font-size:13px;white-space:pre-wrap"></pre>'
                     "<script>document.getElementById('out').textContent = "
                     "JSON.stringify(Relay.metadata({ga4MeasurementId: 'G-ABC123'}), null, 2);</script>",
    }


def test_relay_js_served(relay_factory, tmp_path: Path):
    relay = relay_factory({"RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}"})
    r = httpx.get(relay.url + "/relay.js")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/javascript; charset=utf-8"
    assert r.headers["cache-control"] == "public, max-age=3600"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert 2_000 < len(r.content) < 10_000  # a few kB
    assert b"window.Relay" in r.content
    again = httpx.get(relay.url + "/relay.js", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert httpx.head(relay.url + "/relay.js").status_code == 200


def test_click_ids_survive_navigation_and_reach_metadata(browser, relay_factory, tmp_path: Path):  # noqa: F811
    relay = relay_factory({"RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}"})
    with Site(pages(relay.url)) as site:
        before = int(time.time() * 1000)
        browser.get(f"{site.url}/landing?irclickid=click-js-1&fbclid={FBCLID}&gclid=Cj0-js&utm_source=x")
        after = int(time.time() * 1000)
        browser.find_element("id", "buy").click()  # navigate: the ids are no longer in the URL
        assert browser.current_url == f"{site.url}/checkout"
        meta = browser.execute_script("return Relay.metadata({ga4MeasurementId: 'G-ABC123'})")
        shot = tmp_path / "checkout.png"
        browser.save_screenshot(str(shot))
        if os.environ.get("RELAY_SCREENSHOT_DIR"):
            browser.save_screenshot(os.path.join(os.environ["RELAY_SCREENSHOT_DIR"], "relay-js-checkout.png"))
        assert shot.stat().st_size > 1000

        fbc = meta.pop("fbc")
        prefix, sub, created, clid = fbc.split(".", 3)
        assert (prefix, sub, clid) == ("fb", "1", FBCLID)
        assert before <= int(created) <= after  # the landing time, not the checkout's
        assert json.loads(meta.pop("pagent")) == PAGENT
        assert meta == {
            "irclickid": "click-js-1",
            "fbclid": FBCLID,
            "gclid": "Cj0-js",
            "fbp": "fb.1.1596403881668.1116446470",
            "ga_client_id": "1187654321.1700000000",
            "ga_session_id": "1700000100",
        }
        assert "Cj0-js" in browser.find_element("id", "out").text

        cookie = browser.get_cookie("relay_ids")
        assert cookie["path"] == "/" and cookie["sameSite"] == "Lax" and not cookie["httpOnly"]
        assert abs(cookie["expiry"] - (time.time() + 30 * 86400)) < 120
        names = {c["name"] for c in browser.get_cookies()}
        assert names == {"relay_ids", "_fbp", "_ga", "_ga_ABC123"}  # relay.js sets one cookie

        # a new click replaces the old one of its kind; the others keep theirs
        browser.get(f"{site.url}/landing?irclickid=click-js-2&gclid={'g' * 600}")
        browser.get(f"{site.url}/checkout")
        meta2 = browser.execute_script("return Relay.metadata()")
        assert meta2["irclickid"] == "click-js-2" and meta2["fbc"] == fbc
        assert meta2["gclid"] == "Cj0-js"  # a 600-character value is never stored or sent


def test_processor_formats_and_limits(browser, relay_factory, tmp_path: Path):  # noqa: F811
    relay = relay_factory({"RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}"})
    with Site(pages(relay.url)) as site:
        browser.get(f"{site.url}/landing?irclickid=click-f&fbclid={FBCLID}")
        extra = {f"k{n}": "v" for n in range(60)}
        extra["x" * 41] = "too long a key"
        extra["long"] = "v" * 501
        stripe = browser.execute_script("return Relay.metadata({extra: arguments[0]})", extra)
        assert len(stripe) == 50  # Stripe: at most 50 keys…
        assert all(len(k) <= 40 and len(v) <= 500 for k, v in stripe.items())  # …40-char keys, 500-char values
        assert stripe["irclickid"] == "click-f"
        chargebee = browser.execute_script("return Relay.metadata({prefix: 'cf_'})")
        assert chargebee["cf_irclickid"] == "click-f" and "irclickid" not in chargebee
        url = browser.execute_script(
            "return Relay.lemonSqueezyUrl('https://shop.lemonsqueezy.com/buy/abc?embed=1')")
        parsed = httpx.URL(url)
        assert parsed.params["checkout[custom][irclickid]"] == "click-f"
        assert parsed.params["embed"] == "1"
        assert browser.execute_script("return Relay.cookieName + ':' + Relay.cookieDays") == "relay_ids:30"
        page = browser.execute_script("return Relay.metadata({page: true})")
        assert page["event_source_url"] == f"{site.url}/landing"  # no query string: no ids twice
        assert page["client_user_agent"] == browser.execute_script("return navigator.userAgent")
        assert "client_user_agent" not in stripe
