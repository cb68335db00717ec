"""The console end to end in a real headless Chromium against a real `relay serve`, with
the Simmer and impact.com stand-ins on 127.0.0.1 and signed Stripe webhooks.

A merchant's Simmer key was rotated at Simmer: every purchase fails there (401). The
operator signs in (a wrong token first), sees the failing destination on the
overview and the failures with Simmer's answer, fixes the key at the stand-in, clicks
Retry and watches the purchase become delivered at Simmer; searches a buyer by email;
looks at the events. A page on another origin posting to the console without the
CSRF token is refused. On a phone-sized screen no page is wider than the screen; with
JavaScript turned off, sign-in and Retry still work.

Each main page is saved as a PNG (desktop and phone) in the directory printed at the
end of the test run (RELAY_TEST_SCREENSHOTS, or one under pytest's temporary directory).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.browser import Site, launch, screenshot
from tests.conftest import core_env
from tests.console.conftest import TOKEN
from tests.emulators.impact import ImpactEmulator
from tests.emulators.simmer import SimmerEmulator
from tests.helpers import (
    IMPACT_SID,
    IMPACT_TOKEN,
    SIMMER_KEY,
    SIMMER_PROJECT,
    RelayProcess,
    body_of,
    checkout_event,
    stripe_headers,
    wait_until,
)

BUYERS = ("ann.lee@example.com", "bob.stone@example.com", "chloe.martin@example.com")


@dataclass
class Stage:
    relay: RelayProcess
    simmer: SimmerEmulator
    impact: ImpactEmulator
    keys: dict[str, str]  # buyer email → order key

    def simmer_deliveries(self) -> list[dict[str, Any]]:
        return self.relay.deliveries(destination="simmer")


@pytest.fixture
def stage(tmp_path: Path, relay_factory) -> Iterator[Stage]:
    with SimmerEmulator(SIMMER_KEY, SIMMER_PROJECT) as simmer, \
            ImpactEmulator(IMPACT_SID, IMPACT_TOKEN) as impact:
        simmer.rate_limit_per_minute = None
        simmer.secret_key = "sk_rotated_at_simmer"  # relay's key no longer works: 401
        env = core_env(tmp_path / "relay.db", simmer.url, impact.url)
        env.update({"RELAY_ADMIN_TOKEN": TOKEN, "RELAY_SIMMER__MAX_ATTEMPTS": "3"})
        relay = relay_factory(env)
        keys: dict[str, str] = {}
        for n, email in enumerate(BUYERS):
            metadata = {"irclickid": f"clk{n}"} if n else {}
            answer = relay.post_stripe(checkout_event(email=email, metadata=metadata,
                                                      amount=4900 + n * 1000)).json()
            keys[email] = answer["conversions"][0]["order_key"]
        hostile = checkout_event(currency="jpy", amount=12000, email="dai@example.com",
                                 metadata={"note": "<script>alert(1)</script>", "irclickid": "c9"})
        assert relay.post_stripe(hostile).status_code == 200
        assert relay.post_stripe(hostile).json()["status"] == "duplicate"
        assert relay.post_stripe(checkout_event(livemode=False)).json()["status"] == "ignored"
        assert relay.post_stripe(checkout_event(currency="xyz")).json()["status"] == "quarantined"
        forged = body_of(checkout_event())
        assert relay.post("stripe", forged, stripe_headers(forged, secret="whsec_x")).status_code == 400
        stage = Stage(relay, simmer, impact, keys)
        wait_until(lambda: [d["status"] for d in stage.simmer_deliveries()] == ["failed"] * 4,
                   timeout=30, message="every purchase to fail at Simmer")
        yield stage


def follow(driver: Any, element: Any, submit: bool = False) -> None:
    """Click (or submit) and wait until the next page has replaced this one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    page = driver.find_element(By.TAG_NAME, "html")
    element.submit() if submit else element.click()
    WebDriverWait(driver, 30).until(expected_conditions.staleness_of(page))


def sign_in(driver: Any, url: str, token: str = TOKEN) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/console")
    field = driver.find_element(By.ID, "token")
    field.send_keys(token)
    follow(driver, field, submit=True)


def page_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return " ".join(driver.find_element(By.TAG_NAME, "body").text.split())


def reload_until(driver: Any, words: str, timeout: float = 30) -> None:
    def shown() -> bool:
        driver.refresh()
        return words in page_text(driver)

    wait_until(shown, timeout=timeout, interval=0.5, message=f"the page to show {words!r}")


def test_the_console_in_a_browser(stage: Stage, screenshots: Path) -> None:
    from selenium.webdriver.common.by import By

    relay = stage.relay
    with launch(window="1280,900") as driver:
        driver.get(relay.url + "/console")
        assert driver.current_url.startswith(relay.url + "/console/sign-in")
        screenshot(driver, screenshots / "desktop-sign-in.png")
        sign_in(driver, relay.url, "not-the-token")
        assert "That is not the admin token" in page_text(driver)
        assert "relay_console" not in {c["name"] for c in driver.get_cookies()}

        sign_in(driver, relay.url)
        assert driver.current_url == relay.url + "/console/"
        [cookie] = [c for c in driver.get_cookies() if c["name"] == "relay_console"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]
        reload_until(driver, "Failing repeatedly")  # the tallies reach the ledger every 5 s
        reload_until(driver, "1 quarantined")
        overview = page_text(driver)
        assert "Failing repeatedly: 4 of 4 attempts in the last 24 h failed" in overview
        assert "HTTP 401" in overview and "Invalid secret key" in overview
        assert "1 rejected" in overview
        screenshot(driver, screenshots / "desktop-overview.png")

        card = driver.find_element(By.CSS_SELECTOR, "article[aria-labelledby='d-simmer']")
        follow(driver, card.find_element(By.LINK_TEXT, "See them first"))
        listed = page_text(driver)
        assert "HTTP 401" in listed and "Invalid secret key" in listed
        assert all(stage.keys[email] in listed for email in BUYERS)
        assert not any(email in listed for email in BUYERS)  # no buyer's email on a list
        screenshot(driver, screenshots / "desktop-deliveries.png")

        stage.simmer.secret_key = SIMMER_KEY  # the key is put back at Simmer
        ann = stage.keys[BUYERS[0]]
        row = driver.find_element(By.XPATH, f"//tr[.//code[text()='{ann}']]")
        follow(driver, row.find_element(By.CSS_SELECTOR, "button[aria-label^='Retry delivery']"))
        assert "is pending again: the worker sends it now" in page_text(driver)
        wait_until(lambda: [s.parsed["order_id"] for s in stage.simmer.accepted] == [ann],
                   timeout=30, message="Simmer to accept the retried purchase")
        follow(driver, driver.find_element(By.LINK_TEXT, "Open it"))  # from the note
        reload_until(driver, "simmer delivered")
        detail = page_text(driver)
        assert "Invalid secret key" in detail  # the failed attempt stays in the history
        driver.find_element(By.CSS_SELECTOR, "#delivery-1 summary").click()
        assert "Authorization: Bearer ********" in page_text(driver)
        assert SIMMER_KEY not in driver.page_source and TOKEN not in driver.page_source
        screenshot(driver, screenshots / "desktop-conversion.png")

        search = driver.find_element(By.NAME, "q")
        search.send_keys(BUYERS[1].upper())
        follow(driver, search, submit=True)
        found = page_text(driver)
        assert stage.keys[BUYERS[1]] in found and stage.keys[BUYERS[0]] not in found
        screenshot(driver, screenshots / "desktop-search.png")

        follow(driver, driver.find_element(By.LINK_TEXT, "Events"))
        assert "unknown currency code 'xyz'" in page_text(driver)
        screenshot(driver, screenshots / "desktop-events.png")

        # A page elsewhere posting to the console without the CSRF token: refused.
        bob_delivery = next(d["id"] for d in stage.simmer_deliveries()
                            if d["order_key"] == stage.keys[BUYERS[1]])
        attack = (f'<form method="post" action="{relay.url}/console/deliveries/retry">'
                  f'<input type="hidden" name="id" value="{bob_delivery}">'
                  '<button id="go">Win a prize</button></form>')
        with Site({"/": attack}) as site:
            driver.get(site.url + "/")
            follow(driver, driver.find_element(By.ID, "go"))
            assert "nothing was changed" in page_text(driver)
        statuses = {d["id"]: d["status"] for d in stage.simmer_deliveries()}
        assert statuses[bob_delivery] == "failed"

        driver.get(relay.url + "/console/")
        follow(driver, driver.find_element(By.CSS_SELECTOR, "form.sign-out button"))
        assert driver.current_url.startswith(relay.url + "/console/sign-in")
        driver.get(relay.url + "/console/deliveries")
        assert driver.current_url.startswith(relay.url + "/console/sign-in")


def test_on_a_phone_no_page_is_wider_than_the_screen(stage: Stage, screenshots: Path) -> None:
    from selenium.webdriver.common.by import By

    relay = stage.relay
    with launch(phone=(390, 844)) as driver:
        driver.get(relay.url + "/console/")
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 390
        screenshot(driver, screenshots / "phone-sign-in.png")
        sign_in(driver, relay.url)
        reload_until(driver, "Failing repeatedly")
        ann = stage.keys[BUYERS[0]]
        conversion = next(d["conversion_id"] for d in stage.simmer_deliveries()
                          if d["order_key"] == ann)
        pages = {
            "overview": "/console/",
            "deliveries": "/console/deliveries?status=failed&destination=simmer",
            "conversion": f"/console/conversions/{conversion}",
            "search": f"/console/search?q={BUYERS[0]}",
            "events": "/console/events",
        }
        for name, path in pages.items():
            driver.get(relay.url + path)
            if name == "conversion":
                for summary in driver.find_elements(By.CSS_SELECTOR, "details summary"):
                    summary.click()
            width = driver.execute_script("return document.documentElement.scrollWidth")
            assert width <= 390, (name, width)
            screenshot(driver, screenshots / f"phone-{name}.png")
            driver.save_screenshot(str(screenshots / f"phone-{name}-screen.png"))  # as first seen


def test_without_javascript_sign_in_and_retry_work(stage: Stage) -> None:
    from selenium.webdriver.common.by import By

    relay = stage.relay
    stage.simmer.secret_key = SIMMER_KEY
    with launch(javascript=False) as driver:
        with Site({"/": "<title>off</title><script>document.title = 'ran'</script>"}) as site:
            driver.get(site.url + "/")
            assert driver.title == "off"  # scripts really are off in this browser
        sign_in(driver, relay.url)
        assert driver.current_url == relay.url + "/console/"
        chloe = stage.keys[BUYERS[2]]
        driver.get(relay.url + "/console/deliveries?status=failed&destination=simmer")
        row = driver.find_element(By.XPATH, f"//tr[.//code[text()='{chloe}']]")
        follow(driver, row.find_element(By.CSS_SELECTOR, "button[aria-label^='Retry delivery']"))
        assert "is pending again" in page_text(driver)
        wait_until(lambda: chloe in [s.parsed["order_id"] for s in stage.simmer.accepted],
                   timeout=30, message="Simmer to accept the purchase retried without JavaScript")
        follow(driver, driver.find_element(By.CSS_SELECTOR, "button.primary"))  # Retry all failed
        assert "Requeued 3 failed deliveries to simmer" in page_text(driver)
        wait_until(lambda: len(stage.simmer.accepted) == 4, timeout=30, message="all delivered")
    assert json.dumps(sorted(d["status"] for d in stage.simmer_deliveries())) == json.dumps(
        ["delivered"] * 4)
