"""Look-ups with ids and answers a payload or an API controls.

An id from a webhook goes into an API path as one encoded segment, never as path,
query or dot segments of its own (the Paddle API stand-in records the path it got);
a Retry-After the API answers with is read defensively.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from urllib.parse import unquote

import pytest

from relay.destinations import path_segment
from relay.errors import EnrichmentUnavailable
from tests.emulators.paddle_api import PaddleAPIEmulator
from tests.sources.conftest import PADDLE_API_KEY
from tests.sources.test_paddle import _enrich_with, _run, entity


class RawPathPaddleAPI(PaddleAPIEmulator):
    """The Paddle API stand-in, also keeping each request's path exactly as it came."""

    def __init__(self, api_key: str) -> None:
        super().__init__(api_key)
        self.raw_paths: list[bytes] = []

    async def _endpoint(self, request):  # type: ignore[no-untyped-def]
        self.raw_paths.append(request.scope["raw_path"])
        return await super()._endpoint(request)


@pytest.fixture
def raw_paddle_api() -> Iterator[RawPathPaddleAPI]:
    with RawPathPaddleAPI(PADDLE_API_KEY) as emu:
        yield emu  # type: ignore[misc]


@pytest.mark.parametrize("customer_id", ["../../notifications?x=1", "..", ".", "a/b#c", "ctm_ü %2F"])
def test_a_customer_id_is_one_path_segment(app, raw_paddle_api, tmp_path, customer_id):
    conv, enricher = _enrich_with(app, raw_paddle_api.url, tmp_path)
    conv = conv.replace(customer=dataclasses.replace(conv.customer, id=customer_id, email=None))
    [result] = _run(enricher, lambda e: e(conv, "simmer"))
    assert result == conv  # unknown customer: delivered without an email
    [raw] = raw_paddle_api.raw_paths
    prefix, _, segment = raw.decode().partition("/customers/")
    assert prefix == "" and "/" not in segment and "?" not in segment, raw
    assert unquote(segment) == customer_id


def test_path_segment_encodes_everything_reserved():
    assert path_segment("../../notifications?x=1") == "..%2F..%2Fnotifications%3Fx%3D1"
    assert path_segment("..") == "%2E%2E" and path_segment(".") == "%2E"
    assert path_segment("ctm_01hv6y1jedq4p1n0yqn5ba3ky4") == "ctm_01hv6y1jedq4p1n0yqn5ba3ky4"


@pytest.mark.parametrize(("value", "expected"), [("²", None), ("-3", None), ("9" * 400, 86400.0), ("5", 5.0)])
def test_a_hostile_retry_after_from_paddle_is_read_defensively(app, paddle_api, tmp_path, value, expected):
    customer = entity("customer.created")
    paddle_api.customers[customer["id"]] = customer
    paddle_api.fail_next(1, 429, {"Retry-After": value})
    conv, enricher = _enrich_with(app, paddle_api.url, tmp_path)
    [failed] = _run(enricher, lambda e: e(conv, "simmer"))
    assert isinstance(failed, EnrichmentUnavailable), failed
    assert failed.retry_after == expected
