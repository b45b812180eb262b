"""Redis store: one hash per session, written field by field, expiry refreshed on the read."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Collection, Mapping
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import NoScriptError

from .base import ClientBackend, Record

__all__ = ["RedisBackend"]

AsyncClient = redis.asyncio.Redis | redis.asyncio.RedisCluster

# Hash fields beside the session's own; session keys can never start with NUL.
_TTL = b"\0ttl"
_PERMANENT = b"\0p"

# Read and slide the expiry in one round trip, with the TTL the record was written with
# (a permanent session's lifetime differs from a browser session's, and only the record knows).
_LOAD_TOUCH = b"""
local data = redis.call('HGETALL', KEYS[1])
local ttl = redis.call('HGET', KEYS[1], ARGV[1])
if ttl then redis.call('EXPIRE', KEYS[1], ttl) end
return data
"""
# Field-level write: set what changed, drop what was removed, restart the expiry. A script
# is atomic and single-key, so it behaves the same on a Redis Cluster.
_STORE = b"""
local n = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3, 2 + 2 * n))
if #ARGV > 2 + 2 * n then redis.call('HDEL', KEYS[1], unpack(ARGV, 3 + 2 * n)) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


class _Script:
    def __init__(self, source: bytes) -> None:
        self.source = source
        self.sha = hashlib.sha1(source, usedforsecurity=False).hexdigest()

    async def __call__(self, client: AsyncClient, key: str, *args: bytes | str | int) -> Any:
        try:
            return await client.evalsha(self.sha, 1, key, *args)
        except NoScriptError:
            return await client.eval(self.source.decode(), 1, key, *args)


_load_touch = _Script(_LOAD_TOUCH)
_store = _Script(_STORE)


class RedisBackend(ClientBackend[AsyncClient]):
    """Sessions in Redis or a Redis Cluster, through ``redis.asyncio``.

    ``client`` may be a ``redis.asyncio.Redis`` or ``RedisCluster`` (its settings are reused
    for a connection pool per event loop), or a sync ``redis.Redis``, adapted the same way;
    otherwise ``url`` (``cluster=True`` for a cluster), default ``redis://127.0.0.1:6379/0``.
    """

    def __init__(
        self, *, client: Any = None, url: str | None = None, cluster: bool = False
    ) -> None:
        super().__init__()
        if client is not None and url is not None:
            raise ValueError("give client or url, not both")
        if url is not None and not isinstance(url, str):
            raise TypeError("url must be a str like 'redis://127.0.0.1:6379/0'")
        if not isinstance(cluster, bool):
            raise TypeError("cluster must be True or False")
        if client is None:
            target = url or "redis://127.0.0.1:6379/0"
            factory = redis.asyncio.RedisCluster if cluster else redis.asyncio.Redis
            self._make: Callable[[], AsyncClient] = lambda: factory.from_url(target)
        elif isinstance(client, redis.asyncio.RedisCluster):
            self._make = _cluster_cloner(client)
        elif isinstance(client, (redis.asyncio.Redis, redis.Redis)):
            self._make = _pool_cloner(client)
        elif isinstance(client, redis.RedisCluster):
            known = client.nodes_manager.startup_nodes if hasattr(client, "nodes_manager") else {}
            nodes = ", ".join(f"ClusterNode({n.host!r}, {n.port})" for n in known.values())
            raise TypeError(
                "client: a sync redis.RedisCluster cannot be used; pass "
                f"redis.asyncio.RedisCluster(startup_nodes=[{nodes}]) instead"
            )
        else:
            raise TypeError(
                "client must be redis.asyncio.Redis or redis.asyncio.RedisCluster, e.g. "
                "redis.asyncio.Redis(host='127.0.0.1', port=6379), "
                f"not {type(client).__qualname__}"
            )

    def _new_client(self) -> AsyncClient:
        return self._make()

    async def load(self, key: str, *, touch: bool) -> Record | None:
        client = self.client
        if touch:
            flat = await _load_touch(client, key, _TTL)
            raw = dict(zip(flat[::2], flat[1::2], strict=True))
        else:
            raw = await client.hgetall(key)
        if not raw:
            return None
        permanent = raw.pop(_PERMANENT, b"0") == b"1"
        raw.pop(_TTL, None)
        return Record({k.decode("utf-8"): v for k, v in raw.items()}, permanent)

    async def store(
        self,
        key: str,
        changed: Mapping[str, bytes],
        removed: Collection[str],
        *,
        permanent: bool,
        ttl: int,
    ) -> None:
        args: list[bytes | str | int] = [len(changed) + 2, ttl, _TTL, ttl,
                                         _PERMANENT, b"1" if permanent else b"0"]
        for name, value in changed.items():
            args += (name, value)
        args += removed
        await _store(self.client, key, *args)

    async def delete(self, key: str) -> None:
        await self.client.delete(key)


def _pool_cloner(client: redis.asyncio.Redis | redis.Redis) -> Callable[[], AsyncClient]:
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "decode_responses": False}
    # The sync and async connection classes share their names (Connection, SSLConnection, …).
    connection_class = getattr(redis.asyncio.connection, pool.connection_class.__name__)
    max_connections = pool.max_connections

    def clone() -> redis.asyncio.Redis:
        # from_pool: the client owns its pool, so aclose() closes the connections too.
        return redis.asyncio.Redis.from_pool(
            redis.asyncio.ConnectionPool(
                connection_class=connection_class, max_connections=max_connections, **kwargs
            )
        )

    return clone


def _cluster_cloner(client: redis.asyncio.RedisCluster) -> Callable[[], AsyncClient]:
    accepted = inspect.signature(redis.asyncio.RedisCluster.__init__).parameters
    kwargs = {k: v for k, v in client.connection_kwargs.items()
              if k in accepted and k not in ("host", "port", "startup_nodes")}
    kwargs["decode_responses"] = False
    nodes = [(n.host, n.port) for n in client.startup_nodes]

    def clone() -> redis.asyncio.RedisCluster:
        return redis.asyncio.RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in nodes], **kwargs
        )

    return clone
