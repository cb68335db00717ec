"""PostgreSQL going away: webhooks and /healthz answer 503; when it is back, relay
resumes without a restart (the pool and the LISTEN connection reconnect).

The relay talks to PostgreSQL through a TCP proxy on 127.0.0.1 that the test can cut
(close every connection and stop listening) and restore.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import httpx
import pytest

from tests.conftest import core_env
from tests.emulators.base import reserve_port
from tests.helpers import checkout_event, wait_until
from tests.pgdb import pg_databases, pg_url  # noqa: F401 - fixtures

pytestmark = pytest.mark.postgres


class CuttableProxy:
    """A loopback TCP proxy in its own thread; `cut()` drops everything, `restore()` reopens."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._sock: socket.socket | None = reserve_port()  # held until the first start
        self.port = int(self._sock.getsockname()[1])
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self.writers.discard(writer)
        self.writers.discard(up_writer)

    async def _start(self) -> None:
        if self._sock is not None:  # the first start: the reserved socket
            sock, self._sock = self._sock, None
            self.server = await asyncio.start_server(self._handle, sock=sock)
        else:  # after a cut: the same port again, just released by us
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for w in list(self.writers):
            w.transport.abort()
        self.writers.clear()

    def restore(self) -> None:
        self._call(self._start())

    def cut(self) -> None:
        self._call(self._stop())

    def close(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_outage_answers_503_and_recovers(tmp_path, simmer, impact, relay_factory, pg_url):  # noqa: F811
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(pg_url)
    proxy = CuttableProxy(params.get("host", "127.0.0.1"), int(params.get("port", 5432)))
    proxy.restore()
    try:
        proxied = pg_url.replace(f":{params.get('port', 5432)}/", f":{proxy.port}/")
        env = core_env(tmp_path / "unused.db", simmer.url, impact.url)
        env["RELAY_DATABASE_URL"] = proxied
        relay = relay_factory(env)
        meta = {"simmer_anonymous_id": "anon", "irclickid": "click"}

        assert relay.post_stripe(checkout_event(metadata=meta)).status_code == 200
        wait_until(lambda: len(simmer.conversions) == 1 and len(impact.actions) == 1)

        proxy.cut()
        health = httpx.get(relay.url + "/healthz", timeout=10)
        assert health.status_code == 503
        password = params.get("password")
        if password:
            assert password not in health.text
        lost = checkout_event(metadata=meta)
        r = relay.post_stripe(lost)  # answered within the client's 30 s: no hang
        assert r.status_code == 503, r.text

        proxy.restore()
        wait_until(lambda: httpx.get(relay.url + "/healthz", timeout=10).status_code == 200,
                   timeout=30, interval=0.2, message="/healthz 200 after PostgreSQL is back")
        # the processor retries the webhook that got a 503; a new one arrives too
        assert relay.post_stripe(lost).status_code == 200
        assert relay.post_stripe(checkout_event(metadata=meta)).status_code == 200
        wait_until(lambda: len(simmer.conversions) == 3 and len(impact.actions) == 3, timeout=30,
                   message="deliveries resume without a restart")
        assert relay.proc is not None and relay.proc.poll() is None
    finally:
        proxy.close()
