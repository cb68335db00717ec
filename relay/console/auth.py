"""Signing in to the console: the admin token once, then a session cookie.

Everything the console signs is keyed from RELAY_ADMIN_TOKEN (an HMAC key derived
from it), so changing the token ends every session and voids every CSRF token at
once, in every process, with nothing stored:

    session cookie   "<expires>.<nonce>.<hmac(key, 'session', expires.nonce)>"
    CSRF token       hmac(key, 'csrf', nonce): one per session, in every form
    note cookie      a message for the page after a POST (post-redirect-get), signed
                     for the session it was made in

The token is compared in constant time (digests of equal length). Sessions last
SESSION_SECONDS; signing out drops the cookie and remembers the nonce in this process
until it would have expired anyway (another process behind the same proxy still
honours the cookie until then — change the token to end every session everywhere).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import orjson

SESSION_COOKIE = "relay_console"
NOTE_COOKIE = "relay_console_note"
SESSION_SECONDS = 12 * 3600
NOTE_SECONDS = 120
NOTE_MAX_BYTES = 3000  # a cookie holds about 4 KB; longer notes are cut


@dataclass(frozen=True, slots=True)
class Session:
    nonce: str
    expires: int


class Keys:
    def __init__(self, token: str) -> None:
        self._digest = hashlib.sha256(token.encode()).digest()
        self._key = hmac.new(token.encode(), b"relay console v1", hashlib.sha256).digest()
        self._revoked: dict[str, int] = {}  # nonce → when it would have expired

    def token_matches(self, given: str) -> bool:
        return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), self._digest)

    def _sign(self, purpose: str, text: str) -> str:
        message = f"{purpose}\0{text}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    # -- sessions

    def new_session(self, now: float | None = None) -> tuple[Session, str]:
        """A new session and its cookie value."""
        expires = int(now if now is not None else time.time()) + SESSION_SECONDS
        nonce = secrets.token_urlsafe(18)
        body = f"{expires}.{nonce}"
        return Session(nonce, expires), f"{body}.{self._sign('session', body)}"

    def session(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session of a cookie value, or None: malformed, forged, expired, signed out,
        or made with another token."""
        if not cookie or len(cookie) > 200:
            return None
        parts = cookie.split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            return None
        expires, nonce, signature = int(parts[0]), parts[1], parts[2]
        expected = self._sign("session", f"{parts[0]}.{nonce}")
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            return None
        moment = now if now is not None else time.time()
        if expires <= moment or nonce in self._revoked:
            return None
        return Session(nonce, expires)

    def sign_out(self, session: Session, now: float | None = None) -> None:
        moment = now if now is not None else time.time()
        self._revoked = {n: e for n, e in self._revoked.items() if e > moment}
        self._revoked[session.nonce] = session.expires

    # -- CSRF

    def csrf(self, session: Session) -> str:
        return self._sign("csrf", session.nonce)

    def csrf_ok(self, session: Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given).encode(), self.csrf(session).encode())

    # -- notes (the message shown after a POST's redirect)

    def note(self, session: Session, lines: list[tuple[str, str]]) -> str:
        """A signed note: (text, link or "") lines, cut to fit in a cookie."""
        kept: list[tuple[str, str]] = []
        size = 0
        for text, link in lines:
            text = text[:500]
            size += len(text.encode()) + len(link) + 8
            if size > NOTE_MAX_BYTES:
                kept.append((f"… and {len(lines) - len(kept)} more", ""))
                break
            kept.append((text, link))
        payload = base64.urlsafe_b64encode(orjson.dumps(kept)).decode().rstrip("=")
        return f"{payload}.{self._sign('note:' + session.nonce, payload)}"

    def read_note(self, session: Session, value: str | None) -> list[tuple[str, str]]:
        if not value or "." not in value:
            return []
        payload, signature = value.rsplit(".", 1)
        expected = self._sign("note:" + session.nonce, payload)
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            return []
        try:
            lines = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (ValueError, orjson.JSONDecodeError):
            return []
        if not isinstance(lines, list):
            return []
        return [(str(line[0]), str(line[1])) for line in lines if isinstance(line, list | tuple)]
