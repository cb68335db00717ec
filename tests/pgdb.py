"""Throwaway PostgreSQL databases for tests (RELAY_TEST_POSTGRES_URL).

The schema is applied once per test session to a template database; each test
gets `CREATE DATABASE … TEMPLATE` (a file copy, milliseconds) and it is dropped
afterwards. Without RELAY_TEST_POSTGRES_URL the PostgreSQL tests are skipped;
CI sources ci-postgres.sh, which sets it, so CI never skips them.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import pytest

ENV = "RELAY_TEST_POSTGRES_URL"


def server_url() -> str | None:
    return os.environ.get(ENV) or None


def require_server() -> str:
    url = server_url()
    if url is None:
        pytest.skip(f"{ENV} is not set")
    return url


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at database `name`."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(url)
    user = params.get("user", "")
    password = params.get("password")
    host = params.get("host", "127.0.0.1")
    port = params.get("port", "5432")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    return f"postgresql://{auth}{host}:{port}/{name}"


def _admin(url: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


class Databases:
    def __init__(self, url: str) -> None:
        self.url = url
        self.template = f"relay_tmpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self._ready = False

    def _prepare(self) -> None:
        if self._ready:
            return
        from relay.store.postgres import PostgresStore

        _admin(self.url, f'CREATE DATABASE "{self.template}"')

        async def migrate() -> None:
            store = PostgresStore(with_database(self.url, self.template))
            await store.open()
            await store.close()

        asyncio.run(migrate())
        self._ready = True

    def create(self, empty: bool = False) -> tuple[str, str]:
        """(name, url) of a new database: with the schema, or `empty`."""
        name = f"relay_t_{uuid.uuid4().hex[:12]}"
        if empty:
            _admin(self.url, f'CREATE DATABASE "{name}"')
        else:
            self._prepare()
            _admin(self.url, f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return name, with_database(self.url, name)

    def drop(self, name: str) -> None:
        _admin(self.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        if self._ready:
            self.drop(self.template)


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[Databases]:
    dbs = Databases(require_server())
    yield dbs
    dbs.close()


@pytest.fixture
def pg_url(pg_databases: Databases) -> Iterator[str]:
    """URL of a fresh PostgreSQL database with relay's schema, dropped after the test."""
    name, url = pg_databases.create()
    yield url
    pg_databases.drop(name)
