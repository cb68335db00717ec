"""The HTTP server: uvicorn (uvloop + httptools), plus a deadline for request headers.

uvicorn has no header timeout: its keep-alive timer runs only between requests and is
cancelled by the first byte received, so a client that opens a connection and sends
nothing, or one header line every few seconds, holds it for as long as it likes
(`timeout_keep_alive`, `h11_max_incomplete_event_size` and `limit_concurrency` do not
cover that). `HeaderDeadline` is uvicorn's own httptools protocol with one timer more:
armed when a connection opens and when a request's first byte arrives, cancelled when
its headers are complete; when it fires the connection is closed. The body's own
deadline (408) is the app's (`relay.app.read_body`), since only the app can answer.

The cost is one timer per request, armed and cancelled within the same read in the
usual case where the headers arrive in one packet.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from relay.settings import Settings

log = logging.getLogger("relay.server")


class HeaderDeadline(HttpToolsProtocol):
    """uvicorn's httptools protocol; headers must be complete within `header_timeout` s."""

    header_timeout: float = 5.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            log.debug("closed a connection: headers took over %s s", self.header_timeout)
            self.transport.close()


def protocol(header_timeout: float) -> type[HeaderDeadline]:
    """The HeaderDeadline protocol class with this deadline, for uvicorn's `http=`."""
    return type("HeaderDeadline", (HeaderDeadline,), {"header_timeout": header_timeout})


def options(settings: Settings) -> dict[str, Any]:
    """uvicorn.run's options for relay's limits and proxy trust (README "Limits")."""
    trusted = list(settings.trusted_proxies)
    return {
        "http": protocol(settings.header_timeout_seconds),
        "limit_concurrency": settings.max_connections,
        # X-Forwarded-For is believed only from the proxies in RELAY_TRUSTED_PROXIES
        # (uvicorn would otherwise trust 127.0.0.1, or $FORWARDED_ALLOW_IPS).
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted,
    }
