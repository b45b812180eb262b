"""Store-specific behaviour: signed cookies, key rotation, Redis round trips and clients."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

import flask
import pytest
import quart
import redis
import redis.asyncio
from redis.asyncio.cluster import ClusterNode

from asyncsessions import Session, SessionCookieTooLarge
from asyncsessions.backends.base import close_loop_clients
from asyncsessions.backends.redis import RedisBackend


def cookie_app(**config: Any) -> flask.Flask:
    app = flask.Flask(__name__)
    app.config.update(config)
    Session(app)

    @app.post("/set/<key>")
    def put(key: str) -> str:
        flask.session[key] = flask.request.get_data(as_text=True)
        return "ok"

    @app.get("/get/<key>")
    def get(key: str) -> str:
        return str(flask.session.get(key))

    return app


def quart_redis_app(url: str, prefix: str) -> Any:
    """A Quart app whose whole session lives in one redis store."""
    app = quart.Quart(__name__)
    app.secret_key = "k"
    app.config["SESSION_CONFIG"] = [{"cookie_name": "sid", "session_type": "redis",
                                     "url": url, "key_prefix": prefix}]
    Session(app)
    return app


def test_oversized_cookie_is_a_clear_error_naming_it() -> None:
    app = cookie_app(SECRET_KEY="k", SESSION_CONFIG=[{"cookie_name": "big"}])
    app.testing = True
    with pytest.raises(SessionCookieTooLarge, match=r"'big' would be .* bytes"):
        app.test_client().post("/set/x", data=secrets.token_urlsafe(4000))


def test_no_secret_key_is_a_clear_error_at_first_write() -> None:
    app = cookie_app()
    app.testing = True
    client = app.test_client()
    assert client.get("/get/x").data == b"None"  # reading needs no key
    with pytest.raises(RuntimeError, match="no secret key was set"):
        client.post("/set/x", data="1")


def test_tampered_cookie_reads_as_empty() -> None:
    app = cookie_app(SECRET_KEY="k")
    client = app.test_client()
    client.post("/set/x", data="1")
    value = client.get_cookie("session").value
    client.set_cookie("session", value[:-2] + ("AA" if not value.endswith("AA") else "BB"))
    assert client.get("/get/x").data == b"None"


def test_cookies_signed_with_a_fallback_key_still_read_and_are_resigned() -> None:
    old = cookie_app(SECRET_KEY="old", SESSION_CONFIG=[{"cookie_name": "c"},
                                                        {"cookie_name": "s", "use_signer": True,
                                                         "session_type": "filesystem",
                                                         "session_fields": ["sid_field"]}])
    client = old.test_client()
    client.post("/set/x", data="1")
    client.post("/set/sid_field", data="2")
    new = cookie_app(SECRET_KEY="new", SECRET_KEY_FALLBACKS=["old"],
                     SESSION_CONFIG=old.config["SESSION_CONFIG"])
    new.instance_path = old.instance_path
    new_client = new.test_client()
    for name in ("c", "s"):
        new_client.set_cookie(name, client.get_cookie(name).value)
    assert new_client.get("/get/x").data == b"1"
    assert new_client.get("/get/sid_field").data == b"2"
    new_client.post("/set/x", data="3")  # the next write signs with the current key
    rotated = cookie_app(SECRET_KEY="new", SESSION_CONFIG=[{"cookie_name": "c"}])
    only_new = rotated.test_client()
    only_new.set_cookie("c", new_client.get_cookie("c").value)
    assert only_new.get("/get/x").data == b"3"


def test_read_only_request_is_one_redis_round_trip_and_no_write(
    make_driver: Any, redis_server: Any
) -> None:
    d = make_driver({"SESSION_CONFIG": [{"cookie_name": "sid", "session_type": "redis",
                                         "url": redis_server.url, "key_prefix": "rt:"}]})
    d.post("set", {"a": 1, "b": [1, 2]})
    d.show()  # warm: the load script is now cached on the server
    probe = redis.Redis.from_url(redis_server.url)
    probe.config_resetstat()
    key = "rt:" + d.cookies()["sid"]
    ttl_before = probe.ttl(key)
    for _ in range(5):
        assert d.show() == {"a": "1", "b": "[1, 2]"}
    stats = probe.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): v["calls"] for name, v in stats.items()}
    calls.pop("info", None)
    calls.pop("config|resetstat", None)
    # One EVALSHA per request: HGETALL and the EXPIRE that slides the TTL run inside it.
    assert calls.get("evalsha") == 5
    assert not {"hset", "hdel", "del", "set"} & set(calls)
    assert probe.ttl(key) >= ttl_before


def test_write_is_one_round_trip_touching_only_changed_fields(
    make_driver: Any, redis_server: Any
) -> None:
    d = make_driver({"SESSION_CONFIG": [{"cookie_name": "sid", "session_type": "redis",
                                         "url": redis_server.url, "key_prefix": "w:"}]})
    d.post("set", {"a": 1, "b": 2, "c": 3})
    probe = redis.Redis.from_url(redis_server.url)
    key = "w:" + d.cookies()["sid"]
    probe.hset(key, "b", b"99")  # another request changed b meanwhile
    probe.config_resetstat()
    d.post("set", {"a": 10})
    d.post("del", {"c": 1})
    stats = probe.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 4  # 2 requests x (load + store)
    assert probe.hget(key, "b") == b"99"  # untouched fields survive: field-level writes
    assert probe.hget(key, "a") == b"10"
    assert probe.hget(key, "c") is None
    assert 0 < probe.ttl(key) <= 86400


def test_emptying_a_session_is_one_redis_round_trip_that_deletes_it(
    make_driver: Any, redis_server: Any
) -> None:
    d = make_driver({"SESSION_CONFIG": [{"cookie_name": "sid", "session_type": "redis",
                                         "url": redis_server.url, "key_prefix": "e:"}]})
    probe = redis.Redis.from_url(redis_server.url)
    for empty in ({"action": "del", "data": {"a": 1, "b": 1}}, {"action": "clear"}):
        d.post("set", {"a": 1, "b": 2})
        key = "e:" + d.cookies()["sid"]
        probe.config_resetstat()
        d.post(**empty)
        # The removal of what was loaded, in the store's script: no separate DEL.
        assert probe.info("commandstats")["cmdstat_evalsha"]["calls"] == 2, empty
        assert not probe.exists(key), empty
        assert "sid" not in d.cookies(), empty


def test_permanent_session_gets_the_permanent_ttl(make_driver: Any, redis_server: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [{"cookie_name": "sid", "session_type": "redis",
                                         "url": redis_server.url, "key_prefix": "p:",
                                         "session_lifetime": 100,
                                         "session_permanent_lifetime": 5000}]})
    d.post("set", {"a": 1})
    probe = redis.Redis.from_url(redis_server.url)
    key = "p:" + d.cookies()["sid"]
    assert probe.ttl(key) <= 100
    d.post("permanent")
    assert probe.ttl(key) > 100
    probe.expire(key, 200)
    d.show()  # the sliding refresh restores the permanent lifetime, not the short one
    assert probe.ttl(key) > 4000


@pytest.mark.parametrize("kind", ["async", "sync", "cluster"])
def test_client_instances(make_driver: Any, request: pytest.FixtureRequest, kind: str) -> None:
    if kind == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        host, port = cluster.nodes[0]
        client: Any = redis.asyncio.RedisCluster(host=host, port=port)
    else:
        server = request.getfixturevalue("redis_server")
        cls = redis.asyncio.Redis if kind == "async" else redis.Redis
        client = cls(host=server.host, port=server.port, decode_responses=True)
    d = make_driver({"SESSION_CONFIG": [{"cookie_name": "sid", "session_type": "redis",
                                         "client": client, "key_prefix": f"ci{kind}:"}]})
    d.post("set", {"a": "ünïcode survives decode_responses"})
    assert d.show() == {"a": repr("ünïcode survives decode_responses")}
    if kind == "cluster":
        asyncio.run(client.aclose())


@pytest.mark.parametrize(("options", "location"), [
    (dict, "redis://127.0.0.1:6379/0"),
    (lambda: {"url": "redis://alice:secret@h:7/3?client_name=x"}, "redis://h:7/3"),
    (lambda: {"url": "redis://h?db=4"}, "redis://h:6379/4"),
    (lambda: {"url": "rediss://:secret@h"}, "rediss://h:6379/0"),
    (lambda: {"url": "unix:///run/r.sock?db=2&password=secret"}, "unix:///run/r.sock?db=2"),
    (lambda: {"url": "redis://[::1]:6380"}, "redis://[::1]:6380/0"),
    (lambda: {"url": "redis://:secret@c:7000/0", "cluster": True}, "redis://c:7000"),
    (lambda: {"client": redis.Redis(host="a", port=2, db=5, password="secret")},
     "redis://a:2/5"),
    (lambda: {"client": redis.asyncio.Redis(host="b", ssl=True, password="secret")},
     "rediss://b:6379/0"),
    (lambda: {"client": redis.asyncio.Redis(unix_socket_path="/run/r.sock")},
     "unix:///run/r.sock?db=0"),
    (lambda: {"client": redis.asyncio.RedisCluster(
        startup_nodes=[ClusterNode("c1", 7000), ClusterNode("c2", 7001)], password="secret")},
     "redis://c1:7000,c2:7001"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_redis_location_names_server_and_db_never_credentials(
    options: Callable[[], dict[str, Any]], location: str
) -> None:
    # The clients are never used: nothing connects, nothing needs closing.
    assert RedisBackend(**options()).location == location


def test_two_redis_stores_on_one_db_need_their_own_key_prefixes() -> None:
    def entries(second: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"cookie_name": "a", "session_type": "redis", "session_fields": ["x"],
                 "url": "redis://:one@127.0.0.1:6379/0"},
                {"cookie_name": "b", "session_type": "redis", **second}]

    app = flask.Flask(__name__)
    # Another password, the same data: one store's id would load the other's record.
    app.config["SESSION_CONFIG"] = entries(
        {"client": redis.Redis(host="127.0.0.1", port=6379, password="two")}
    )
    with pytest.raises(ValueError, match=r"SESSION_CONFIG\[1\] 'key_prefix'.*redis://127"):
        Session(app)
    for apart in ({"url": "redis://127.0.0.1:6379/1"}, {"key_prefix": "other:"}):
        app = flask.Flask(__name__)
        app.config["SESSION_CONFIG"] = entries(apart)
        Session(app)


def test_quart_serving_lifecycle_and_websocket(redis_server: Any) -> None:
    app = quart_redis_app(redis_server.url, "q:")

    @app.post("/set")
    async def put() -> str:
        quart.session["who"] = "ws user"
        return "ok"

    @app.websocket("/ws")
    async def ws() -> None:
        await quart.websocket.send(str(quart.session.get("who")))

    async def scenario() -> str:
        async with app.test_app() as test_app:
            client = test_app.test_client()
            await client.post("/set")
            async with client.websocket("/ws") as socket:
                return str(await socket.receive())

    assert asyncio.run(scenario()) == "ws user"


def test_quart_loop_change_reuses_no_dead_connection(redis_server: Any) -> None:
    app = quart_redis_app(redis_server.url, "ql:")

    @app.route("/count")
    async def count() -> str:
        quart.session["n"] = quart.session.get("n", 0) + 1
        return str(quart.session["n"])

    client = app.test_client()

    async def hit() -> bytes:
        try:
            return await (await client.get("/count")).get_data()
        finally:
            await close_loop_clients()

    assert [asyncio.run(hit()) for _ in range(3)] == [b"1", b"2", b"3"]


def test_thousands_of_fields_fit_one_redis_write(make_driver: Any, redis_server: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [{"cookie_name": "sid", "session_type": "redis",
                                         "url": redis_server.url, "key_prefix": "many:"}]})
    many = {f"f{i}": i for i in range(5000)}
    assert d.post("set", many).status == 200
    assert len(d.show()) == 5000
    assert d.post("del", {f"f{i}": 1 for i in range(4000)}).status == 200
    assert len(d.show()) == 1000


def test_websocket_regenerate_keeps_the_session(redis_server: Any) -> None:
    app = quart_redis_app(redis_server.url, "wsr:")

    @app.post("/set")
    async def put() -> str:
        quart.session["user"] = "bob"
        return "ok"

    @app.get("/get")
    async def get() -> str:
        return str(quart.session.get("user"))

    @app.websocket("/ws")
    async def ws() -> None:
        quart.session.regenerate()  # no response to carry new ids: ignored, with a warning
        quart.session["x"] = 1
        await quart.websocket.send("done")

    async def scenario() -> bytes:
        async with app.test_app() as test_app:
            client = test_app.test_client()
            await client.post("/set")
            async with client.websocket("/ws") as socket:
                await socket.receive()
            return await (await client.get("/get")).get_data()

    assert asyncio.run(scenario()) == b"bob"
