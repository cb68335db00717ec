"""Nothing a client sends makes the webhook endpoint answer 5xx.

A real `relay serve` (every source enabled, a real SQLite ledger) gets hostile
signature headers, arbitrary bytes and headers (sent as raw bytes: latin-1 characters
such as "²" arrive as the app sees them from a real client, which Starlette's
TestClient cannot do), and correctly signed but arbitrary JSON — both random documents
and real processor payloads with random parts replaced or removed. Without a store
outage, every answer must be a 2xx or 4xx (what exactly is accepted, ignored,
quarantined or refused is other tests' business).
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.emulators.base import free_port
from tests.helpers import (
    FIXTURES,
    STRIPE_SECRET,
    RelayProcess,
    checkout_event,
    fixture,
    stripe_headers,
)
from tests.sources.conftest import CB_PASSWORD, CB_USER, LS_SECRET, PADDLE_SECRET
from tests.sources.test_paddle import entity, envelope
from tests.sources.util import basic, ls_headers, paddle_headers

SIGNATURE_HEADERS = {
    "stripe": "Stripe-Signature",
    "lemonsqueezy": "X-Signature",
    "paddle": "Paddle-Signature",
    "chargebee": "Authorization",
}
SIGNERS: dict[str, Callable[[bytes], dict[str, str]]] = {
    "stripe": stripe_headers,
    "lemonsqueezy": ls_headers,
    "paddle": paddle_headers,
    "chargebee": lambda body: basic(),
}
PROPERTY = settings(
    max_examples=120,
    deadline=None,  # a loaded 2-core machine
    suppress_health_check=[HealthCheck.too_slow],
)


@functools.cache
def base_documents(source: str) -> list[dict[str, Any]]:
    """Real payloads of this source, as the processor sends them."""
    if source == "stripe":
        return [checkout_event(), fixture("stripe/invoice.paid.api-2023-10-16.alimehndi.json"),
                fixture("stripe/customer.subscription.created.api-2023-10-16.alimehndi.json")]
    if source == "paddle":
        return [envelope(name, entity(name)) for name in (
            "transaction.completed", "transaction.paid", "subscription.created",
            "subscription.canceled", "adjustment.created", "customer.created")]
    return [orjson.loads(p.read_bytes()) for p in sorted((FIXTURES / source).glob("*.json"))]


class Relay:
    """One `relay serve` for the module, and one keep-alive client to it."""

    def __init__(self, proc: RelayProcess) -> None:
        self.proc = proc
        self.client = httpx.Client(base_url=proc.url, timeout=30)

    def post(self, source: str, body: bytes, headers: dict[str, Any]) -> httpx.Response:
        return self.client.post(f"/webhooks/{source}", content=body, headers=headers)


@pytest.fixture(scope="module")
def relay(tmp_path_factory) -> Iterator[Relay]:
    workdir = tmp_path_factory.mktemp("hostile")
    env = {
        "RELAY_DATABASE_URL": f"sqlite:///{workdir / 'relay.db'}",
        "RELAY_STRIPE__WEBHOOK_SECRETS": STRIPE_SECRET,
        "RELAY_LEMONSQUEEZY__SIGNING_SECRET": LS_SECRET,
        "RELAY_PADDLE__WEBHOOK_SECRETS": PADDLE_SECRET,
        "RELAY_CHARGEBEE__USERNAME": CB_USER,
        "RELAY_CHARGEBEE__PASSWORD": CB_PASSWORD,
        # Every wrong Basic credential comes from this one client: a high threshold
        # keeps the credentials check itself under test rather than the lock-out.
        "RELAY_CHARGEBEE__MAX_AUTH_FAILURES": "1000",
        "RELAY_LOG_LEVEL": "WARNING",
    }
    proc = RelayProcess(env, workdir, free_port(), ("--no-worker",)).start()
    relay = Relay(proc)
    yield relay
    relay.client.close()
    proc.stop()
    assert "Traceback" not in proc.logs()


def assert_no_5xx(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])


# ------------------------------------------------------------------ the reported cases


def test_non_ascii_stripe_signature_is_400(relay):
    body = orjson.dumps(checkout_event())
    header = f"t={int(time.time())},v1=é".encode()
    r = relay.post("stripe", body, {"Stripe-Signature": header})
    assert r.status_code == 400, r.text
    assert "Stripe-Signature" in r.json()["error"]


def test_superscript_paddle_timestamp_is_400(relay):
    body = orjson.dumps(envelope("transaction.completed", entity("transaction.completed")))
    r = relay.post("paddle", body, {"Paddle-Signature": "ts=²;h1=aa".encode("latin-1")})
    assert r.status_code == 400, r.text
    assert "Paddle-Signature" in r.json()["error"]


def test_stripe_signature_dated_beyond_the_tolerance_in_the_future_is_refused(relay):
    body = orjson.dumps(checkout_event())
    ahead = stripe_headers(body, timestamp=int(time.time()) + 3600)  # tolerance: 300 s
    r = relay.post("stripe", body, ahead)
    assert r.status_code == 400
    assert "future" in r.json()["error"]
    assert relay.post("stripe", body, stripe_headers(body, timestamp=int(time.time()) + 60)).status_code == 200


# ------------------------------------------------------------------ properties

# What a client can put into a header value: any byte but controls (tab allowed), as
# raw bytes (latin-1 to the app) or as encoded text, and values shaped like each scheme
# with arbitrary parts (numbers include Unicode digits such as "²", which str.isdigit
# accepts and int() does not).
field_bytes = st.binary(max_size=120).map(lambda b: bytes(c for c in b if c == 9 or 32 <= c != 127))
field_text = st.text(max_size=40).map(lambda t: "".join(c for c in t if c == "\t" or " " <= c != "\x7f"))
numbers = st.one_of(
    st.integers(0, 2**41).map(str),
    st.integers().map(str),
    st.text("0123456789¹²³", min_size=1, max_size=12),  # the digits latin-1 has
    st.text(st.characters(categories=("Nd", "No")), min_size=1, max_size=12),
    field_text,
)


def encoded(text: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    return st.tuples(text, st.sampled_from(["utf-8", "latin-1"])).map(lambda p: p[0].encode(p[1], "ignore"))


def stripped(value: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return value.map(lambda v: v.strip(b" \t"))  # servers drop surrounding whitespace; h11 will not send it


SHAPED = {  # values shaped like each source's scheme, with arbitrary parts
    "stripe": encoded(st.builds(lambda t, v: f"t={t},v1={v}", numbers, field_text)),
    "paddle": encoded(st.builds(lambda t, v: f"ts={t};h1={v}", numbers, field_text)),
    "lemonsqueezy": encoded(st.text("0123456789abcdefABCDEF²é ", min_size=60, max_size=68)),
    "chargebee": st.builds(
        lambda user, password: b"Basic " + base64.b64encode(user + b":" + password),
        st.sampled_from([CB_USER.encode(), b""]) | st.binary(max_size=20), st.binary(max_size=40)),
}
header_value = stripped(st.one_of(field_bytes, encoded(field_text), *SHAPED.values(),
                                  st.builds(lambda v: b"Basic " + v, field_bytes)))
extra_headers = st.dictionaries(
    st.sampled_from(["content-type", "content-encoding", "x-forwarded-for", "user-agent", "accept",
                     "stripe-signature", "paddle-signature", "x-signature", "authorization", "x-event-name"]),
    header_value,
    max_size=4,
)


@pytest.mark.parametrize("source", list(SIGNATURE_HEADERS))
@PROPERTY
@given(body=st.binary(max_size=2048), headers=extra_headers, data=st.data())
def test_arbitrary_bytes_and_headers_never_5xx(relay, source, body, headers, data):
    signature = data.draw(stripped(SHAPED[source]) | header_value, label="signature")
    sent = {**headers, SIGNATURE_HEADERS[source]: signature}
    assert_no_5xx(relay.post(source, body, sent))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@pytest.mark.parametrize("source", list(SIGNATURE_HEADERS))
@PROPERTY
@given(doc=json_values)
def test_signed_arbitrary_json_never_5xx(relay, source, doc):
    body = json.dumps(doc).encode()
    assert_no_5xx(relay.post(source, body, SIGNERS[source](body)))


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON document (keys and list indexes), the root excluded."""
    out: list[tuple[Any, ...]] = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        out.append((*prefix, key))
        out.extend(paths(value, (*prefix, key)))
    return out


def mutate(doc: Any, path: tuple[Any, ...], value: Any, delete: bool) -> None:
    for key in path[:-1]:
        doc = doc[key]
    if delete and isinstance(doc, dict):
        del doc[path[-1]]
    else:
        doc[path[-1]] = value


@pytest.mark.parametrize("source", list(SIGNATURE_HEADERS))
@PROPERTY
@given(data=st.data())
def test_signed_real_payloads_with_arbitrary_parts_never_5xx(relay, source, data):
    doc = copy.deepcopy(data.draw(st.sampled_from(base_documents(source))))
    for _ in range(data.draw(st.integers(1, 4))):
        where = paths(doc)
        if not where:
            break
        path = data.draw(st.sampled_from(where))
        mutate(doc, path, data.draw(json_values), data.draw(st.booleans()))
    body = json.dumps(doc).encode()
    assert_no_5xx(relay.post(source, body, SIGNERS[source](body)))
