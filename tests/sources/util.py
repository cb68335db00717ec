"""Signing helpers for source tests (the processors' algorithms, written out)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from tests.sources.conftest import CB_PASSWORD, CB_USER, LS_SECRET, PADDLE_SECRET


def ls_headers(body: bytes, secret: str = LS_SECRET) -> dict[str, str]:
    sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Signature": sig, "Content-Type": "application/json"}


def paddle_headers(body: bytes, secret: str = PADDLE_SECRET, ts: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    sig = hmac.new(secret.encode(), f"{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"Paddle-Signature": f"ts={ts};h1={sig}", "Content-Type": "application/json"}


def basic(user: str = CB_USER, password: str = CB_PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}


def dumps(value: Any) -> bytes:
    return json.dumps(value, indent=2).encode()
