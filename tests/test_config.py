"""SESSION_CONFIG validation: a clear ValueError naming the entry and key, and no mutation."""

from __future__ import annotations

import copy
from typing import Any

import flask
import pytest
import quart
import redis

from asyncsessions import ClientSideBackend, Session
from asyncsessions.config import parse_config


def init(config: Any, **more: Any) -> flask.Flask:
    app = flask.Flask(__name__)
    app.config["SESSION_CONFIG"] = config
    app.config.update(more)
    Session(app)
    return app


@pytest.mark.parametrize(("config", "message"), [
    ([{"cookie_name": "a", "session_type": "redsi"}],
     r"SESSION_CONFIG\[0\] 'session_type': unknown store 'redsi'; did you mean 'redis'"),
    ([{"session_type": "redis"}], r"SESSION_CONFIG\[0\] 'cookie_name': required"),
    ([{"cookie_name": "a"}, {"cookie_name": "a"}],
     r"SESSION_CONFIG\[1\] 'cookie_name': 'a' is already used by SESSION_CONFIG\[0\]"),
    ([{"cookie_name": "a", "session_fields": "auto"},
      {"cookie_name": "b", "session_fields": "auto"}],
     r"SESSION_CONFIG\[1\] 'session_fields': only one store may be 'auto'"),
    ([{"cookie_name": "a", "cookie_secrue": True}],
     r"SESSION_CONFIG\[0\] 'cookie_secrue': unknown key; did you mean 'cookie_secure'"),
    ([{"cookie_name": "a", "session_type": "redis", "clinet": None}],
     r"SESSION_CONFIG\[0\] 'clinet': unknown key; did you mean 'client'"),
    ([{"cookie_name": "a", "cookie_httponly": "yes"}],
     r"SESSION_CONFIG\[0\] 'cookie_httponly': expected bool, got str"),
    ([{"cookie_name": "a", "session_lifetime": True}],
     r"SESSION_CONFIG\[0\] 'session_lifetime': expected"),
    ([{"cookie_name": "a", "session_lifetime": -5}],
     r"SESSION_CONFIG\[0\] 'session_lifetime': expected a positive duration"),
    ([{"cookie_name": "a", "session_fields": "all"}],
     r"SESSION_CONFIG\[0\] 'session_fields'"),
    ([{"cookie_name": "a", "session_fields": {"include": ["x"], "exclude": ["y"]}}],
     r"SESSION_CONFIG\[0\] 'session_fields': a dict must have exactly one key"),
    ([{"cookie_name": "a", "cookie_samesite": "sometimes"}],
     r"SESSION_CONFIG\[0\] 'cookie_samesite'"),
    ([{"cookie_name": "a", "on_error": "ignore"}], r"SESSION_CONFIG\[0\] 'on_error'"),
    ([{"cookie_name": "a"}, {"cookie_name": "b", "session_type": "redis", "url": 5}],
     r"SESSION_CONFIG\[1\] 'url'"),
    ([{"cookie_name": "a", "session_type": "filesystem", "cleanup_every": "often"}],
     r"SESSION_CONFIG\[0\] 'cleanup_every'"),
    ([{"cookie_name": "a", "session_type": 42}], r"SESSION_CONFIG\[0\] 'session_type'"),
    (["a"], r"SESSION_CONFIG\[0\] must be a dict"),
    ({"cookie_name": "a"}, r"SESSION_CONFIG must be a list"),
    ([], r"SESSION_CONFIG is empty"),
])
def test_bad_config_is_a_clear_error(config: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        init(config)


def test_app_config_is_never_mutated() -> None:
    config = [
        {"cookie_name": "csrf", "session_fields": ["csrf_token"]},
        {"cookie_name": "session", "session_type": "redis", "url": "redis://127.0.0.1:1/0",
         "session_fields": {"include": ["user_id"]}},
        {"cookie_name": "data", "session_fields": "auto"},
    ]
    before = copy.deepcopy(config)
    app = init(config)
    assert app.config["SESSION_CONFIG"] == before


def test_default_is_one_signed_cookie_with_flask_settings() -> None:
    app = flask.Flask(__name__)
    app.config.update(SESSION_COOKIE_NAME="mine", SESSION_COOKIE_SECURE=True)
    Session(app)
    (store,) = app.extensions["asyncsessions"].stores
    assert store.name == "mine"
    assert isinstance(store.backend, ClientSideBackend)
    assert store.fields.mode == "all"
    assert store.cookie.secure is True


def test_quart_app_gets_the_native_interface() -> None:
    from asyncsessions.adapters.quart import QuartSessionInterface

    app = quart.Quart(__name__)
    Session().init_app(app)
    assert isinstance(app.session_interface, QuartSessionInterface)


def test_sync_redis_client_is_adapted() -> None:
    app = init([{"cookie_name": "s", "session_type": "redis",
                 "client": redis.Redis(host="127.0.0.1", port=1)}])
    assert app.extensions["asyncsessions"].stores[0].backend is not None


def test_sync_redis_cluster_is_refused_with_the_async_call() -> None:
    from redis.cluster import ClusterNode, RedisCluster

    class Offline(RedisCluster):
        def __init__(self) -> None:  # a sync cluster object without connecting
            self.nodes_manager = type("M", (), {
                "startup_nodes": {"n": ClusterNode("127.0.0.1", 7000)}})()

    with pytest.raises(ValueError, match=r"redis\.asyncio\.RedisCluster\(startup_nodes="):
        init([{"cookie_name": "s", "session_type": "redis", "client": Offline()}])


def test_wrong_client_type_shows_the_async_call() -> None:
    with pytest.raises(ValueError, match=r"'client'.*redis\.asyncio\.Redis\(host="):
        init([{"cookie_name": "s", "session_type": "redis", "client": object()}])


def test_read_flask_session_on_a_store_that_cannot_is_refused(tmp_path: Any) -> None:
    config = {"SESSION_CONFIG": [{"cookie_name": "s", "session_type": "filesystem",
                                  "directory": str(tmp_path), "read_flask_session": True}]}
    with pytest.raises(ValueError, match=r"SESSION_CONFIG\[0\] 'read_flask_session'.*cannot "
                                         r"read Flask-Session's records"):
        parse_config(config, instance_path=str(tmp_path))
