"""Log lines: every record is one line, whatever a payload or an exception holds."""

from __future__ import annotations

import io
import logging

from tests.helpers import fixture
from tests.sources.conftest import LS_SECRET
from tests.sources.util import dumps, ls_headers

FORGED = "2026-01-01 00:00:00,000 INFO relay.web: webhook source=stripe accepted (forged)"


def test_a_payload_id_with_cr_lf_cannot_forge_log_lines(tmp_path, relay_factory):
    relay = relay_factory({
        "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",
        "RELAY_LEMONSQUEEZY__SIGNING_SECRET": LS_SECRET,
    }, "--no-worker")
    doc = fixture("lemonsqueezy/order_created.pay-rails.json")
    doc["data"]["id"] = "1\r\n" + FORGED + "\n" * 20 + "x" * 5000
    body = dumps(doc)
    r = relay.post("lemonsqueezy", body, ls_headers(body))
    assert r.status_code < 500
    relay.stop()
    lines = relay.logs().splitlines()
    assert not any(line.startswith(FORGED[:24]) for line in lines), lines
    [line] = [line for line in lines if "(forged)" in line]  # the id stays on its record's line
    assert "\\r\\n" in line
    assert len(line) < 2000  # the 5,000-character id was cut


def _formatted(record_args: tuple, exc: BaseException | None = None) -> str:
    from relay.logs import Formatter, RedactingFilter

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("relay.test-logs")
    log.propagate = False
    log.handlers[:] = [handler]
    try:
        if exc is None:
            log.warning(*record_args)
        else:
            try:
                raise exc
            except type(exc):
                log.exception(*record_args)
    finally:
        log.handlers[:] = []
    return out.getvalue()


def test_control_and_line_break_characters_are_escaped():
    text = _formatted(("order %s for %s", "a\rb\nc\x1b[31m\u2028d\x85e", "buyer@example.com"))
    assert text.count("\n") == 1  # the record's own end of line
    assert "a\\rb\\nc\\x1b[31m\\u2028d\\x85e" in text
    assert "buyer@example.com" not in text  # redaction still applies


def test_traceback_lines_are_indented_under_their_record():
    text = _formatted(("enrich failed",), ValueError("bad id\n" + FORGED))
    first, *rest = text.rstrip("\n").split("\n")
    assert first == "ERROR relay.test-logs: enrich failed"
    assert rest and all(line.startswith("    | ") for line in rest), rest
    assert any(FORGED in line for line in rest)
