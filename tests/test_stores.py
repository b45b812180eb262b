"""Store-specific behaviour: signed cookies, key rotation, Redis round trips and clients."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import flask
import pytest
import quart
import redis
import redis.asyncio

from asyncsessions import Session, SessionCookieTooLarge
from asyncsessions.backends.base import close_loop_clients


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
