"""The store fixtures of test_store.py (a store on each backend, an opener for several on
one database) for every test module here."""

from tests.pgdb import pg_databases  # noqa: F401 - fixture
from tests.store.test_store import anyio_backend, opener, store, store_url  # noqa: F401 - fixtures
