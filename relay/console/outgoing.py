"""The request a destination is sent for a conversion, rebuilt and fit to show.

The console shows, per destination, the request as the worker sends it: the
destination's own `build` (pure, no I/O) on the recorded conversion, with the
current settings. Everything secret is masked before it leaves this module:

- every secret value of the destination's settings (API keys, tokens, Meta's
  access token, GA4's api_secret, the Standard Webhooks key, the Converge postback
  URL, which is a secret as a whole: its host stays visible), wherever it appears —
  URL, headers or body — also URL- or JSON-escaped;
- the credentials of Authorization headers (the scheme stays: "Basic ********"),
  and every header whose name says token, secret, signature, key, password or cookie
  (so a Standard Webhooks signature, which is made with the key, is not shown);
- query and form parameters whose names say the same (api_secret=…, access_token=…).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit

import httpx
import orjson
from pydantic import SecretStr

from relay.conversion import Conversion
from relay.destinations import Destination, Skip

MASK = "********"
SECRET_NAME = re.compile(
    r"token|secret|signature|password|passwd|cookie|api[-_]?key|apikey|^key$|^sig$|credential",
    re.IGNORECASE,
)
AUTH_HEADERS = frozenset({"authorization", "proxy-authorization"})


@dataclass(slots=True)
class Outgoing:
    """A request as shown: method, URL, headers and body, secrets masked."""

    method: str
    url: str
    headers: list[tuple[str, str]]
    body: str  # pretty-printed when JSON; a form as one `name = value` line per field
    body_kind: str  # "json", "form", "text" or "" (no body)
    batch: int = 1  # the destination sends up to this many conversions in one request
    notes: list[str] = field(default_factory=list)


def secrets_of(dest: Destination) -> list[str]:
    """Every secret value in the destination's settings, longest first."""
    found: set[str] = set()

    def take(value: Any) -> None:
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
            if len(text) >= 3:
                found.add(text)
                if text.startswith("whsec_"):  # Standard Webhooks: the key is the base64 part
                    found.add(text[len("whsec_") :])
        elif isinstance(value, list | tuple):
            for item in value:
                take(item)

    for name in type(dest.settings).model_fields:
        take(getattr(dest.settings, name))
    return sorted(found, key=len, reverse=True)


def _replacement(secret: str) -> str:
    """What a secret becomes: MASK, or for a secret URL its scheme and host and MASK."""
    parts = urlsplit(secret)
    if parts.scheme in ("http", "https") and parts.hostname:
        host = parts.netloc.rsplit("@", 1)[-1]  # never a user or password
        return f"{parts.scheme}://{host}/{MASK}"
    return MASK


def scrub(text: str, secrets: list[str]) -> str:
    """`text` with every secret (also URL- and JSON-escaped) replaced."""
    for secret in secrets:
        masked = _replacement(secret)
        forms = {secret, quote(secret, safe=""), quote_plus(secret)}
        forms.add(orjson.dumps(secret)[1:-1].decode())
        if masked != MASK:  # a URL: also as httpx writes it out
            forms.add(str(httpx.URL(secret)))
        for form in sorted(forms, key=len, reverse=True):
            if form:
                text = text.replace(form, masked)
    return text


def _mask_query(url: str) -> str:
    parts = urlsplit(url)
    if not parts.query:
        return url
    pairs = [
        f"{name}={MASK}" if SECRET_NAME.search(name.split("=")[0]) else pair
        for pair in parts.query.split("&")
        for name in [pair.split("=", 1)[0]]
    ]
    return parts._replace(query="&".join(pairs)).geturl()


def _header(name: str, value: str) -> str:
    lower = name.lower()
    if lower in AUTH_HEADERS:
        scheme = value.split(" ", 1)[0] if " " in value else ""
        return f"{scheme} {MASK}".strip()
    if SECRET_NAME.search(lower):
        return MASK
    return value


def _body(request: httpx.Request, secrets: list[str]) -> tuple[str, str]:
    raw = request.content
    if not raw:
        return "", ""
    text = scrub(raw.decode("utf-8", errors="replace"), secrets)
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        lines = []
        for name, value in parse_qsl(text, keep_blank_values=True):
            shown = MASK if SECRET_NAME.search(name) else (_json(value) or value)
            lines.append(f"{name} = {scrub(shown, secrets)}")
        return "\n".join(lines), "form"
    pretty = _json(text)
    return (pretty, "json") if pretty is not None else (text, "text")


def _json(text: str) -> str | None:
    """`text` pretty-printed when it is a JSON object or array, else None."""
    return pretty_json(text) if text[:1] in ("{", "[") else None


def _number(text: str) -> orjson.Fragment:
    return orjson.Fragment(text.encode())


def pretty_json(raw: str | bytes) -> str | None:
    """JSON indented for reading, every number exactly as written (49.00 stays 49.00, a
    big integer stays whole); None when it is not JSON."""
    try:
        data = json.loads(raw, parse_float=_number, parse_int=_number, parse_constant=_number)
        return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
    except (ValueError, TypeError, orjson.JSONEncodeError, RecursionError):
        return None


def rebuild(dest: Destination, conversion: Conversion, now: datetime) -> Outgoing | Skip:
    """The request `dest` would send for `conversion` now, masked; or why it is skipped."""
    built = dest.build(conversion, now)
    if isinstance(built, Skip):
        return built
    secrets = secrets_of(dest)
    url = _mask_query(scrub(str(built.url), secrets))
    headers = [  # as written on the wire, names in their own case
        (name.decode("latin-1"), scrub(_header(name.decode("latin-1"), value.decode()), secrets))
        for name, value in built.headers.raw
    ]
    body, body_kind = _body(built, secrets)
    return Outgoing(built.method, url, headers, body, body_kind, batch=dest.max_batch)
