"""Shared pytest fixtures."""

from typing import Any

import pytest

# server fixtures: redis_server, redis_cluster, memcached_server, mongo_server, firestore_emulator,
# postgres_server, mariadb_server (tests/servers.py); dynamodb_server, datastore_emulator and
# opensearch_server each in a module of its own. tests/ is not a package, so pytest's default
# "prepend" import mode puts this directory on sys.path and the modules import by name.
pytest_plugins = [
    "servers", "app_fixtures", "server_dynamodb", "server_datastore", "server_opensearch",
]

#: The ASGI adapter is one adapter whatever the store: Starlette and FastAPI run the behaviour
#: suite on these stores (the cross product with every store would repeat Quart's coverage).
ASGI_STORES = {"secure_cookie", "filesystem", "redis", "sqlalchemy_sqlite"}


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    kept, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        asgi = params.get("framework") in ("starlette", "fastapi")
        store = params.get("store_entry")
        (dropped if asgi and store is not None and store not in ASGI_STORES else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, the loop every supported server (and the bridge) uses."""
    return "asyncio"
