"""Who gets in, and what a signed-in page answers with: the console exists only with
RELAY_ADMIN_TOKEN; the token once, then a session cookie with its flags; wrong tokens
are 401 and then throttled; every POST needs the session's CSRF token; a new token ends
every session; sign-out ends this one; security headers on every answer. The last test
runs a real `relay serve` behind a pretend proxy, for the Secure flag."""

from __future__ import annotations

import re
import time
from http.cookies import SimpleCookie

import httpx
import pytest

from relay.console.auth import SESSION_SECONDS
from tests.console.conftest import TOKEN, Console
from tests.emulators.simmer import SimmerEmulator
from tests.helpers import STRIPE_SECRET, checkout_event, wait_until

PAGES = ("/console/", "/console/deliveries", "/console/events", "/console/search?q=x",
         "/console/conversions/1", "/console/events/1")


def cookie_of(response: httpx.Response, name: str = "relay_console") -> SimpleCookie:
    jar = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        jar.load(header)
    assert name in jar, response.headers
    return jar


@pytest.mark.parametrize("token", [None, ""])
def test_without_a_token_every_console_path_is_404(make_console, token: str | None) -> None:
    console = make_console(None, run_worker=False, admin_token=token)
    for path in ("/console", "/console/", "/console/sign-in", "/console/static/console.css",
                 *PAGES):
        assert console.client.get(path).status_code == 404, path
    assert console.client.post("/console/sign-in", data={"token": ""}).status_code == 404
    assert console.client.post("/console/deliveries/retry", data={}).status_code == 404
    assert console.client.get("/healthz").status_code == 200  # the rest of relay is there


def test_pages_ask_to_sign_in_first(make_console) -> None:
    console = make_console(None, run_worker=False)
    first = console.client.get("/console", follow_redirects=False)
    assert first.status_code == 307 and first.headers["location"].endswith("/console/")
    for path in PAGES:
        answer = console.client.get(path, follow_redirects=False)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/console/sign-in?next=%2Fconsole%2F")
    form = console.client.get("/console/sign-in")
    assert form.status_code == 200 and 'type="password"' in form.text
    assert "not arrive over HTTPS" in form.text  # said plainly on a plain-HTTP sign-in


def test_sign_in_sets_a_strict_http_only_session_cookie(make_console) -> None:
    console = make_console(None, run_worker=False)
    wrong = console.sign_in("not-the-token")
    assert wrong.status_code == 401 and "not the admin token" in wrong.text
    assert "set-cookie" not in wrong.headers
    right = console.client.post("/console/sign-in",
                                data={"token": TOKEN, "next": "/console/events?status=ignored"},
                                follow_redirects=False)
    assert right.status_code == 303 and right.headers["location"] == "/console/events?status=ignored"
    morsel = cookie_of(right)["relay_console"]
    assert morsel["httponly"] and morsel["samesite"].lower() == "strict"
    assert morsel["path"] == "/console/" and not morsel["secure"]  # plain HTTP here
    assert int(morsel["max-age"]) == SESSION_SECONDS
    assert TOKEN not in morsel.value  # the cookie is a signature, not the token
    assert console.client.get("/console/").status_code == 200
    elsewhere = console.client.post("/console/sign-in",
                                    data={"token": TOKEN, "next": "https://evil.example/"},
                                    follow_redirects=False)
    assert elsewhere.headers["location"] == "/console/"  # never sent off-site


def test_over_https_the_cookie_is_secure(make_console) -> None:
    console = make_console(None, run_worker=False, base_url="https://relay.example")
    answer = console.sign_in()
    assert answer.status_code == 303 and cookie_of(answer)["relay_console"]["secure"]
    assert "not arrive over HTTPS" not in console.client.get("/console/sign-in?next=/").text


def test_wrong_tokens_are_throttled(make_console) -> None:
    console = make_console(None, run_worker=False)
    answers = [console.sign_in(f"guess-{n}").status_code for n in range(6)]
    assert answers[:4] == [401] * 4 and answers[5] == 429
    locked = console.sign_in()  # even the right one waits out the lock-out
    assert locked.status_code == 429 and "Too many wrong tokens" in locked.text
    wait = int(locked.headers["retry-after"])
    assert 1 <= wait <= 60
    time.sleep(wait + 0.1)
    assert console.sign_in().status_code == 303


def test_a_post_without_the_sessions_csrf_token_changes_nothing(
    make_console, simmer: SimmerEmulator
) -> None:
    console = make_console(simmer.url)
    assert console.sign_in().status_code == 303
    simmer.fail_next(1, 400, body={"error": "email is invalid"})
    console.post_stripe(checkout_event())
    wait_until(lambda: "failed" in console.client.get("/console/deliveries").text, message="failed")

    other = make_console(None, run_worker=False, db=console.db)  # another session, same token
    assert other.sign_in().status_code == 303
    for data in ({"id": "1"}, {"id": "1", "csrf": ""}, {"id": "1", "csrf": "0" * 64},
                 {"id": "1", "csrf": other.csrf()}):
        refused = console.client.post("/console/deliveries/retry", data=data)
        assert refused.status_code == 403, data
        assert "nothing was changed" in refused.text
    signed_out = make_console(None, run_worker=False, db=console.db)
    assert signed_out.client.post("/console/deliveries/retry",
                                  data={"id": "1", "csrf": console.csrf()}).status_code == 403
    as_json = console.client.post("/console/deliveries/retry", json={"id": 1, "csrf": console.csrf()})
    assert as_json.status_code == 415
    time.sleep(0.5)  # the worker would have sent a requeued delivery by now
    assert len(simmer.accepted) == 0
    assert "failed" in console.client.get("/console/deliveries?status=failed").text
    done = console.client.post("/console/deliveries/retry", data={"id": "1", "csrf": console.csrf()})
    assert done.status_code == 200 and "is pending again" in done.text
    wait_until(lambda: len(simmer.accepted) == 1, message="the real retry")


def test_sign_out_ends_the_session(make_console) -> None:
    console = make_console(None, run_worker=False)
    cookie = cookie_of(console.sign_in())["relay_console"].value
    out = console.client.post("/console/sign-out", data={"csrf": console.csrf()},
                              follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/console/sign-in"
    cleared = cookie_of(out)["relay_console"]
    assert cleared.value == "" and int(cleared["max-age"]) == 0
    console.client.cookies.set("relay_console", cookie, path="/console/")  # replayed by hand
    assert console.client.get("/console/", follow_redirects=False).status_code == 303


def test_a_new_token_ends_every_session(make_console, tmp_path) -> None:
    db = tmp_path / "one.db"
    before = make_console(None, run_worker=False, db=db)
    cookie = cookie_of(before.sign_in())["relay_console"].value
    after = make_console(None, run_worker=False, db=db, admin_token="a-brand-new-token-98765")
    after.client.cookies.set("relay_console", cookie, path="/console/")
    assert after.client.get("/console/", follow_redirects=False).status_code == 303
    same = make_console(None, run_worker=False, db=db)  # another process, the same token
    same.client.cookies.set("relay_console", cookie, path="/console/")
    assert same.client.get("/console/").status_code == 200


def test_every_answer_carries_the_security_headers(console: Console) -> None:
    console.post_stripe(checkout_event())
    answers = [console.client.get(path) for path in PAGES]
    answers += [
        console.client.get("/console/static/console.css"),
        console.client.get("/console/nowhere"),
        console.client.get("/console/sign-in", follow_redirects=False),
        console.client.post("/console/deliveries/retry", data={}),
    ]
    for answer in answers:
        csp = answer.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "script-src" not in csp and "unsafe" not in csp  # no script runs at all
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.headers["x-content-type-options"] == "nosniff"
        if "text/html" in answer.headers.get("content-type", ""):
            assert answer.headers["cache-control"] == "no-store"
            assert "<script" not in answer.text.lower()
            assert not re.search(r'(src|href)="(https?:)?//', answer.text)  # nothing from elsewhere
    css = answers[len(PAGES)]
    assert css.headers["content-type"].startswith("text/css") and "url(" not in css.text


def test_behind_a_trusted_proxy_the_cookie_is_secure(relay_factory, tmp_path) -> None:
    """A real relay serve: X-Forwarded-Proto is believed from RELAY_TRUSTED_PROXIES only."""
    env = {"RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",
           "RELAY_ADMIN_TOKEN": TOKEN, "RELAY_STRIPE__WEBHOOK_SECRETS": STRIPE_SECRET}
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    form = {"token": TOKEN, "next": "/console/"}
    untrusted = relay_factory(env)
    answer = httpx.post(untrusted.url + "/console/sign-in", data=form, headers=forwarded)
    assert answer.status_code == 303 and not cookie_of(answer)["relay_console"]["secure"]
    untrusted.stop()
    trusted = relay_factory({**env, "RELAY_TRUSTED_PROXIES": "127.0.0.1"})
    answer = httpx.post(trusted.url + "/console/sign-in", data=form, headers=forwarded)
    assert answer.status_code == 303 and cookie_of(answer)["relay_console"]["secure"]
    plain = httpx.post(trusted.url + "/console/sign-in", data=form)  # the proxy said http
    assert not cookie_of(plain)["relay_console"]["secure"]
    assert "https://" not in answer.headers["location"]


def test_a_short_admin_token_is_refused_at_start(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from relay.errors import ConfigError
    from relay.settings import load_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RELAY_ADMIN_TOKEN", "hunter2")
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert "RELAY_ADMIN_TOKEN must be at least 16 characters" in str(refused.value)
    assert "hunter2" not in str(refused.value)  # the value itself is never echoed
    monkeypatch.setenv("RELAY_ADMIN_TOKEN", "x" * 16)
    assert load_settings().admin_token is not None
