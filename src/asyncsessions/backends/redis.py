"""Redis store: one hash per session, written field by field by a script that updates only a
record still there, expiry refreshed on the read."""

from __future__ import annotations

import hashlib
import inspect
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.connection
import redis.sentinel
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import parse_url
from redis.exceptions import NoScriptError

from . import flask_session, resp
from .base import ClientBackend, Record, Write

__all__ = ["RedisBackend"]


class _FastClient(resp.RespClient):
    """The few redis-py calls the store makes, over one pipelined connection per loop."""

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: bytes | str | int) -> Any:
        return await self.execute("EVALSHA", sha, numkeys, *keys_and_args)

    async def eval(self, script: str, numkeys: int, *keys_and_args: bytes | str | int) -> Any:
        return await self.execute("EVAL", script, numkeys, *keys_and_args)

    async def delete(self, key: str) -> int:
        deleted: int = await self.execute("DEL", key)
        return deleted

    async def script_then_hgetall(self, sha: str, source: str, key: str,
                                  *args: bytes | str | int) -> tuple[Any, Any]:
        """The script's reply and the key's HGETALL, sent together: one round trip."""
        first, data = await self.execute_all(("EVALSHA", sha, 1, key, *args), ("HGETALL", key))
        if isinstance(first, NoScriptError):
            first, data = await self.execute_all(("EVAL", source, 1, key, *args),
                                                 ("HGETALL", key))
        return first, data

    async def pttl(self, key: str) -> int:
        left: int = await self.execute("PTTL", key)
        return left


AsyncClient = redis.asyncio.Redis | redis.asyncio.RedisCluster | _FastClient

# Hash fields beside the session's own; session keys can never start with NUL.
_TTL = b"\0ttl"
_PERMANENT = b"\0p"
_TTL_NAME, _PERMANENT_NAME = _TTL.decode(), _PERMANENT.decode()
# A TTL as the store writes it, short enough for EXPIRE's range (the load script checks the
# same): EXPIRE with 0 or a negative number would delete the record, with garbage fail.
_TTL_SHAPE = re.compile(rb"[1-9][0-9]{0,14}")

# With ARGV[2] == '1' slide the expiry with the TTL the record was written with (a permanent
# session's lifetime differs from a browser session's, and only the record knows); 1 for a
# hash. Any other type at the key is reported by its type name instead of failing with
# WRONGTYPE, and left alone; except that with ARGV[3] == '1' a string (what Flask-Session
# keeps under the same name) is returned as a list of one, its value. A string's own TTL is
# left as it is. The hash itself is read by an HGETALL sent in the same round trip, not by
# the script: copying a 200 KB hash through Lua cost redis ~0.6 ms a load (8x HGETALL's).
_LOAD = b"""
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'string' and ARGV[3] == '1' then return {redis.call('GET', KEYS[1])} end
if kind ~= 'hash' then return kind end
if ARGV[2] == '1' then
  local ttl = redis.call('HGET', KEYS[1], ARGV[1])
  if ttl and #ttl <= 15 and string.match(ttl, '^[1-9]%d*$') then
    redis.call('EXPIRE', KEYS[1], ttl)
  end
end
return 1
"""
# One request's write, atomic and single-key (so the same on a Redis Cluster). ARGV: the two
# metadata names, '1' to create, the TTL to restart the expiry with ('' for the record's
# own), the number of field/value pairs to set (metadata included when the flag is set),
# the pairs, then the names to drop. Returns 1, or 0 when there was no record to update.
_STORE = b"""
local key, ttl = KEYS[1], ARGV[4]
if ARGV[3] == '1' then
  -- A new id: anything under it is another program's, replaced and never merged with.
  redis.call('DEL', key)
else
  -- Only a record that is still there and ours: one that a concurrent logout or
  -- regenerate() deleted (or that expired) stays gone, and a foreign value stays as it is.
  if redis.call('TYPE', key).ok ~= 'hash' then return 0 end
  local meta = redis.call('HMGET', key, ARGV[1], ARGV[2])
  local stored, flag = meta[1], meta[2]
  if not (stored and #stored <= 15 and string.match(stored, '^[1-9]%d*$')
          and (flag == '0' or flag == '1')) then
    return 0
  end
  -- The request left the flag alone: keep the lifetime that goes with the stored flag,
  -- which a concurrent request may have changed.
  if ttl == '' then ttl = stored end
end
local last = 5 + 2 * tonumber(ARGV[5])
-- In chunks: unpack() of thousands of arguments overflows Lua's stack.
for i = 6, last, 1000 do
  redis.call('HSET', key, unpack(ARGV, i, math.min(i + 999, last)))
end
for i = last + 1, #ARGV, 1000 do
  redis.call('HDEL', key, unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
-- Only the two metadata fields left: the session is empty. Deciding here, after the
-- write, lets a field another request added in the meantime keep the record alive.
if redis.call('HLEN', key) <= 2 then
  redis.call('DEL', key)
else
  redis.call('EXPIRE', key, ttl)
end
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


_load = _Script(_LOAD)
_store = _Script(_STORE)


async def _load_and_read(client: AsyncClient, key: str, *args: bytes | str | int
                         ) -> tuple[Any, Any]:
    """The load script's reply and the key's HGETALL reply (a flat list, or an error
    object), in one round trip."""
    if isinstance(client, _FastClient):
        return await client.script_then_hgetall(_load.sha, _load.source.decode(), key, *args)
    for script in (("EVALSHA", _load.sha), ("EVAL", _load.source.decode())):
        async with client.pipeline(transaction=False) as pipe:
            pipe.execute_command(*script, 1, key, *args)
            pipe.execute_command("HGETALL", key)
            first, data = await pipe.execute(raise_on_error=False)
        if not isinstance(first, NoScriptError):
            break
    if isinstance(data, dict):  # redis-py's reply callback made it one
        data = [item for pair in data.items() for item in pair]
    return first, data


class RedisBackend(flask_session.ReadsFlaskSession, ClientBackend[AsyncClient]):
    """Sessions in Redis or a Redis Cluster.

    ``client`` may be a ``redis.asyncio.Redis`` or ``RedisCluster`` (its settings are reused
    for a client per event loop), or a sync ``redis.Redis``, adapted the same way; otherwise
    ``url`` (``cluster=True`` for a cluster), default ``redis://127.0.0.1:6379/0``.

    A plain TCP connection to one server (host, port, db, username/password, client name,
    timeouts) goes through :mod:`.resp`: one pipelined connection per loop costs about half
    of ``redis.asyncio``'s pool and command machinery per op, which at loopback latency is
    most of a request's session cost; and such a store ``runs_without_loop``, so a Flask
    request whose plan is one op on it makes a blocking round trip, no event loop involved.
    TLS, unix sockets, credential providers, custom connection classes or hooks, RESP3 and
    clusters keep ``redis.asyncio``.

    With ``sentinel`` (a list of ``(host, port)`` Redis Sentinel addresses) and
    ``service_name``, the master is found through the sentinels by redis-py's
    ``redis.asyncio.Sentinel(...).master_for(service_name)``, a client per event loop, and
    found again after a failover. ``sentinel_kwargs`` are the sentinels' own connection
    settings (``password``, ``ssl``, …); ``db``, ``username``, ``password``, ``ssl`` and
    ``connection_kwargs`` (any other redis-py connection setting, e.g. ``ssl_ca_certs`` or
    ``socket_timeout``) are the master's. A ``client`` made by ``Sentinel.master_for``
    (async or sync) is cloned the same way. Sentinel clients never take the RESP fast path.

    With ``reads_flask_session``, a string under the key (Flask-Session's msgpack or JSON)
    is read in the same round trip as a foreign record; it keeps its own TTL until the
    session's first write replaces it with a hash.
    """

    def __init__(
        self,
        *,
        client: Any = None,
        url: str | None = None,
        cluster: bool = False,
        sentinel: Any = None,
        service_name: str | None = None,
        sentinel_kwargs: Mapping[str, Any] | None = None,
        db: int | None = None,
        username: str | None = None,
        password: str | None = None,
        ssl: bool | None = None,
        connection_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._make: Callable[[], AsyncClient]
        master = {"db": db, "username": username, "password": password, "ssl": ssl,
                  "connection_kwargs": connection_kwargs}
        given = [name for name, value in master.items() if value is not None]
        if sentinel is None:
            for name, value in (("service_name", service_name),
                                ("sentinel_kwargs", sentinel_kwargs)):
                if value is not None:
                    raise ValueError(f"{name} goes with sentinel=[(host, port), ...]")
            if given:
                raise ValueError(
                    f"{given[0]} goes with sentinel=[(host, port), ...]; give it in the url "
                    "(redis://user:password@host:port/db, rediss:// for TLS) or the client"
                )
        else:
            if client is not None or url is not None or cluster:
                other = "client" if client is not None else "url" if url is not None else "cluster"
                raise ValueError(f"sentinel: give sentinel or {other}, not both")
            addresses = _sentinel_addresses(sentinel)
            if not isinstance(service_name, str) or not service_name:
                raise ValueError(
                    "service_name: sentinel needs the monitored master's name, "
                    "e.g. service_name='mymaster'"
                )
            sentinel_settings = _sentinel_settings(sentinel_kwargs)
            kwargs = _master_settings(db, username, password, ssl, connection_kwargs)
            self._make = _sentinel_factory(addresses, service_name, sentinel_settings, kwargs)
            self.location = _sentinel_location(
                addresses, service_name, int(kwargs.get("db") or 0), bool(kwargs.get("ssl"))
            )
            return
        if client is not None and url is not None:
            raise ValueError("give client or url, not both")
        if url is not None and not isinstance(url, str):
            raise TypeError("url must be a str like 'redis://127.0.0.1:6379/0'")
        if url is not None and url.partition("://")[0] not in ("redis", "rediss", "unix"):
            # Checked here: redis-py would only fail at the first request.
            raise ValueError(
                f"url must start with redis://, rediss:// or unix://, not {url.split('@')[-1]!r}"
            )
        if not isinstance(cluster, bool):
            raise TypeError("cluster must be True or False")
        if client is None:
            target = url or "redis://127.0.0.1:6379/0"
            factory = redis.asyncio.RedisCluster if cluster else redis.asyncio.Redis
            fast = None if cluster else _fast_cloner_for_url(target)
            self._make = fast or (lambda: factory.from_url(target))
            self.runs_without_loop = fast is not None
            self.location = _url_location(target, cluster=cluster)
        elif isinstance(client, redis.asyncio.RedisCluster):
            self._make = _cluster_cloner(client)
            self.location = _cluster_location(
                client.connection_kwargs.get("connection_class"),
                [(n.host, n.port) for n in client.startup_nodes],
            )
        elif isinstance(client, (redis.asyncio.Redis, redis.Redis)) and isinstance(
            client.connection_pool,
            (redis.asyncio.sentinel.SentinelConnectionPool, redis.sentinel.SentinelConnectionPool),
        ):
            self._make, self.location = _sentinel_cloner(client.connection_pool)
        elif isinstance(client, (redis.asyncio.Redis, redis.Redis)):
            pool = client.connection_pool
            fast = _fast_cloner(pool.connection_class, pool.connection_kwargs)
            self._make = fast or _pool_cloner(client)
            self.runs_without_loop = fast is not None
            self.location = _server_location(pool.connection_class, pool.connection_kwargs)
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

    async def _close_client(self, client: AsyncClient) -> None:
        await super()._close_client(client)
        pool = getattr(client, "connection_pool", None)
        if isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool):
            # The per-loop Sentinel is ours too: its connections to the sentinels.
            for sentinel in pool.sentinel_manager.sentinels:
                await sentinel.aclose()

    async def load(self, key: str, *, touch: bool) -> Record | None:
        reply, data = await _load_and_read(
            self.client, key, _TTL, int(touch), int(self.reads_flask_session))
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, bytes):  # the key's type: not a hash
            if reply != b"none":
                self.unreadable(key, f"a redis {reply.decode()}, not a hash")
            return None
        if isinstance(reply, list):  # a string, asked for: Flask-Session's
            return flask_session.read(self, key, reply[0])
        if isinstance(data, redis.exceptions.ResponseError) or not data:
            return None  # replaced or deleted between the script and HGETALL: no session now
        if isinstance(data, Exception):
            raise data
        try:
            return _record(data)
        except ValueError as exc:
            self.unreadable(key, str(exc))
            return None

    async def store(self, key: str, write: Write) -> bool:
        changed = write.changed
        args: list[bytes | str | int] = [_TTL, _PERMANENT, b"1" if write.create else b"0"]
        if write.permanent is None or write.ttl is None:  # (both or neither: see Write)
            args += (b"", len(changed))
        else:
            args += (write.ttl, len(changed) + 2, _TTL, write.ttl,
                     _PERMANENT, b"1" if write.permanent else b"0")
        for name, value in changed.items():
            args += (name, value)
        args += write.removed
        written: int = await _store(self.client, key, *args)
        return written == 1

    async def delete(self, key: str) -> None:
        await self.client.delete(key)

    async def expires_at(self, key: str) -> float | None:
        left = await self.client.pttl(key)
        # -2: no key; -1: no expiry, which no record of this store has.
        return None if left < 0 else time.time() + left / 1000


def _record(reply: list[bytes]) -> Record:
    """The record in a session hash's HGETALL reply; ``ValueError`` if this store did not
    write it so."""
    # No Python-level loop per field (a 200-field load spent ~130 µs in one): names are
    # decoded by map, paired by zip, and the NUL-led check is a min().
    try:
        names = list(map(bytes.decode, reply[::2]))
    except UnicodeDecodeError:
        raise ValueError("a field name is not UTF-8") from None
    fields = dict(zip(names, reply[1::2], strict=True))
    ttl, permanent = fields.pop(_TTL_NAME, None), fields.pop(_PERMANENT_NAME, None)
    if ttl is None or not _TTL_SHAPE.fullmatch(ttl):
        raise ValueError(r"its \0ttl field is missing or no positive number of seconds")
    if permanent not in (b"0", b"1"):
        raise ValueError(r"its \0p field is missing or neither 0 nor 1")
    # A NUL-led name is metadata of another program (or version): nothing to guess at. Such
    # a name sorts before every other but the empty one, so the least one tells.
    least = min(fields, default="")
    if least == "" and len(fields) > 1:
        least = min(name for name in fields if name)
    if least.startswith("\0"):
        raise ValueError("it has an unknown NUL-led field")
    return Record(fields, permanent == b"1")


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


# Connection settings a plain TCP connection either honours or can do without (retries,
# health checks and driver bookkeeping are redis-py's own). Any other setting, such as TLS,
# a unix socket path, or one a later redis-py adds, keeps redis-py's client.
_PLAIN_SETTINGS = frozenset({
    "host", "port", "db", "username", "password", "client_name",
    "socket_timeout", "socket_connect_timeout", "socket_keepalive", "socket_keepalive_options",
    "socket_read_size", "socket_type", "decode_responses", "encoding", "encoding_errors",
    "health_check_interval", "retry", "retry_on_timeout", "retry_on_error",
    "credential_provider", "redis_connect_func", "protocol",
    "driver_info", "lib_name", "lib_version", "legacy_responses", "event_dispatcher",
    "himport_registry", "maint_notifications_config", "maint_notifications_pool_handler",
    "orig_host_address", "orig_socket_timeout", "orig_socket_connect_timeout",
})
_PLAIN_CLASSES = (redis.asyncio.connection.Connection, redis.connection.Connection)


def _fast_cloner(
    connection_class: type[Any], kwargs: Mapping[str, Any]
) -> Callable[[], AsyncClient] | None:
    """A factory of :class:`_FastClient` if the settings are a plain TCP connection."""
    keepalive_options = kwargs.get("socket_keepalive_options")
    if (
        not resp.AVAILABLE
        or connection_class not in _PLAIN_CLASSES
        or not kwargs.keys() <= _PLAIN_SETTINGS
        or kwargs.get("credential_provider") is not None
        or kwargs.get("redis_connect_func") is not None
        or kwargs.get("protocol") not in (None, 2, "2")
        or kwargs.get("socket_type") not in (None, 0)
        # hiredis packs str arguments as UTF-8, as redis-py does by default.
        or str(kwargs.get("encoding") or "utf-8").lower().replace("-", "") != "utf8"
        or (isinstance(keepalive_options, Mapping) and keepalive_options)
    ):
        return None
    host = str(kwargs.get("host") or "localhost")
    port = int(kwargs.get("port") or 6379)
    settings: dict[str, Any] = {
        "db": int(kwargs.get("db") or 0),
        "username": kwargs.get("username"),
        "password": kwargs.get("password"),
        "client_name": kwargs.get("client_name"),
        # Bounded even when redis-py's is not: the store's timeout bounds each op anyway.
        "connect_timeout": float(
            kwargs.get("socket_connect_timeout") or kwargs.get("socket_timeout") or 5.0
        ),
    }
    return lambda: _FastClient(host, port, **settings)


# Where the records live, for errors and for telling two stores apart: a URL naming the
# server (or a cluster's startup nodes) and the db, never credentials or client options.
_SSL_CLASSES = (redis.asyncio.connection.SSLConnection, redis.connection.SSLConnection)


def _address(host: Any, port: Any) -> str:
    host, port = str(host or "localhost"), int(port or 6379)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _scheme(connection_class: Any) -> str:
    ssl = isinstance(connection_class, type) and issubclass(connection_class, _SSL_CLASSES)
    return "rediss" if ssl else "redis"


def _server_location(connection_class: Any, kwargs: Mapping[str, Any]) -> str:
    db = int(kwargs.get("db") or 0)
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={db}"
    return f"{_scheme(connection_class)}://{_address(kwargs.get('host'), kwargs.get('port'))}/{db}"


def _cluster_location(connection_class: Any, nodes: list[tuple[Any, Any]]) -> str:
    return f"{_scheme(connection_class)}://" + ",".join(_address(h, p) for h, p in nodes)


def _url_location(url: str, *, cluster: bool) -> str:
    try:
        kwargs = parse_url(url)
    except ValueError:
        # redis-py reports the URL at first use; its credentials stay out of the location.
        return re.sub(r"//[^/]*@", "//", url, count=1)
    connection_class = kwargs.pop("connection_class", None)
    if cluster:
        return _cluster_location(connection_class, [(kwargs.get("host"), kwargs.get("port"))])
    return _server_location(connection_class, kwargs)


def _fast_cloner_for_url(url: str) -> Callable[[], AsyncClient] | None:
    try:
        kwargs = parse_url(url)
    except ValueError:
        return None  # redis-py's from_url reports it, at first use as before
    connection_class = kwargs.pop("connection_class", redis.asyncio.connection.Connection)
    return _fast_cloner(connection_class, kwargs)



# Redis Sentinel: redis-py's own client, which asks the sentinels for the master and asks again
# when its connection fails or the old master answers READONLY (a failover).

#: The master's connection settings redis-py accepts (TCP and TLS), less its bookkeeping.
_CONNECTION_BOOKKEEPING = frozenset({
    "connection_pool", "himport_registry", "maint_notifications_pool_handler",
    "maintenance_state", "maintenance_notification_hash", "orig_host_address",
    "orig_socket_timeout", "orig_socket_connect_timeout",
    "oss_cluster_maint_notifications_handler", "event_dispatcher", "host", "port",
})
_MASTER_SETTINGS = frozenset(
    name
    for cls in (redis.asyncio.connection.AbstractConnection, redis.asyncio.connection.Connection,
                redis.asyncio.connection.SSLConnection)
    for name, p in inspect.signature(cls.__init__).parameters.items()
    if name != "self" and p.kind is not p.VAR_KEYWORD
) - _CONNECTION_BOOKKEEPING | {"ssl"}
_SENTINEL_SETTINGS = frozenset(
    name for name in inspect.signature(redis.asyncio.Redis.__init__).parameters
    if name not in ("self", "host", "port", "connection_pool", "single_connection_client")
)


def _sentinel_addresses(sentinel: Any) -> list[tuple[str, int]]:
    example = "e.g. sentinel=[('127.0.0.1', 26379), ('127.0.0.1', 26380)]"
    if isinstance(sentinel, (str, bytes, Mapping)) or not isinstance(sentinel, (list, tuple)):
        raise ValueError(f"sentinel must be a list of (host, port) pairs, {example}")
    if not sentinel:
        raise ValueError(f"sentinel: the list of sentinel addresses is empty, {example}")
    addresses = []
    for item in sentinel:
        if (
            not isinstance(item, (list, tuple)) or len(item) != 2
            or not isinstance(item[0], str) or not item[0]
            or isinstance(item[1], bool) or not isinstance(item[1], int)
            or not 0 < item[1] < 65536
        ):
            raise ValueError(
                f"sentinel: {item!r} is not a (host, port) pair of a str and a port number, "
                f"{example}"
            )
        addresses.append((item[0], item[1]))
    return addresses


def _sentinel_settings(sentinel_kwargs: Any) -> dict[str, Any] | None:
    if sentinel_kwargs is None:
        return None  # redis-py's default: the master's socket_* settings
    if not isinstance(sentinel_kwargs, Mapping):
        raise TypeError("sentinel_kwargs must be a dict, e.g. {'password': '…', 'ssl': True}")
    unknown = sorted(set(sentinel_kwargs) - _SENTINEL_SETTINGS)
    if unknown:
        raise ValueError(f"sentinel_kwargs: unknown redis.asyncio.Redis setting {unknown[0]!r}")
    return dict(sentinel_kwargs)


def _master_settings(
    db: Any, username: Any, password: Any, ssl: Any, connection_kwargs: Any
) -> dict[str, Any]:
    if connection_kwargs is not None and not isinstance(connection_kwargs, Mapping):
        raise TypeError("connection_kwargs must be a dict, e.g. {'ssl_ca_certs': '/path/ca.pem'}")
    kwargs = dict(connection_kwargs or {})
    unknown = sorted(set(kwargs) - _MASTER_SETTINGS)
    if unknown:
        raise ValueError(f"connection_kwargs: unknown redis connection setting {unknown[0]!r}")
    for name, value in (("db", db), ("username", username), ("password", password),
                        ("ssl", ssl)):
        if value is None:
            continue
        if name in kwargs:
            raise ValueError(f"{name}: given both on its own and in connection_kwargs")
        kwargs[name] = value
    db = kwargs.get("db")
    if db is not None and (isinstance(db, bool) or not isinstance(db, int) or db < 0):
        raise ValueError("db must be a database number, 0 or more")
    for name in ("username", "password"):
        if kwargs.get(name) is not None and not isinstance(kwargs[name], str):
            raise TypeError(f"{name} must be a str")
    if not isinstance(kwargs.get("ssl", False), bool):
        raise TypeError("ssl must be True or False")
    kwargs["decode_responses"] = False
    return kwargs


def _sentinel_factory(
    addresses: list[tuple[str, int]],
    service_name: str,
    sentinel_kwargs: dict[str, Any] | None,
    kwargs: dict[str, Any],
    *,
    min_other_sentinels: int = 0,
    force_master_ip: str | None = None,
    pool_kwargs: Mapping[str, Any] | None = None,
) -> Callable[[], AsyncClient]:
    def make() -> redis.asyncio.Redis:
        # A Sentinel per loop: its connections to the sentinels are bound to the loop too.
        manager = redis.asyncio.Sentinel(  # type: ignore[no-untyped-call]
            addresses, min_other_sentinels=min_other_sentinels,
            sentinel_kwargs=None if sentinel_kwargs is None else dict(sentinel_kwargs),
            force_master_ip=force_master_ip, **kwargs,
        )
        master: redis.asyncio.Redis = manager.master_for(service_name, **(pool_kwargs or {}))
        return master

    return make


def _sentinel_location(
    addresses: list[tuple[str, int]], service_name: str, db: int, ssl: bool
) -> str:
    scheme = "rediss+sentinel" if ssl else "redis+sentinel"
    return f"{scheme}://{','.join(_address(h, p) for h, p in addresses)}/{service_name}/{db}"


def _sentinel_cloner(pool: Any) -> tuple[Callable[[], AsyncClient], str]:
    """The factory and location for a client a (sync or async) ``Sentinel.master_for`` made."""
    if not pool.is_master:
        raise TypeError(
            "client: a Sentinel.slave_for client only reads; pass Sentinel.master_for(...)"
        )
    manager = pool.sentinel_manager
    addresses = []
    for sentinel in manager.sentinels:
        settings = sentinel.connection_pool.connection_kwargs
        host, port = settings.get("host") or "localhost", settings.get("port") or 26379
        addresses.append((str(host), int(port)))
    is_async = isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool)
    # A sync client's retry policy and notification handlers are sync objects.
    dropped = _CONNECTION_BOOKKEEPING
    if not is_async:
        dropped |= {"retry", "maint_notifications_config"}
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k not in dropped}
    ssl_classes = (redis.asyncio.sentinel.SentinelManagedSSLConnection,
                   redis.sentinel.SentinelManagedSSLConnection)
    ssl = isinstance(pool.connection_class, type) and issubclass(pool.connection_class, ssl_classes)
    plain = (redis.asyncio.sentinel.SentinelManagedConnection,
             redis.sentinel.SentinelManagedConnection)
    pool_kwargs: dict[str, Any] = {
        "max_connections": pool.max_connections, "check_connection": pool.check_connection,
    }
    if ssl:
        pool_kwargs["ssl"] = True
    elif pool.connection_class not in plain:
        if not is_async:
            raise TypeError(
                "client: a sync Sentinel client with a custom connection class cannot be "
                "adapted; pass one made by redis.asyncio.Sentinel(...).master_for(...)"
            )
        pool_kwargs["connection_class"] = pool.connection_class
    kwargs["decode_responses"] = False
    sentinel_kwargs = dict(manager.sentinel_kwargs)
    if not is_async:
        sentinel_kwargs = {k: v for k, v in sentinel_kwargs.items() if k != "retry"}
    make = _sentinel_factory(
        addresses, pool.service_name, sentinel_kwargs, kwargs,
        min_other_sentinels=manager.min_other_sentinels,
        force_master_ip=getattr(manager, "_force_master_ip", None), pool_kwargs=pool_kwargs,
    )
    return make, _sentinel_location(addresses, pool.service_name, int(kwargs.get("db") or 0), ssl)
