"""Flask-Session, Flask-Session2 and flask-beaker-session configs work as their users wrote them."""

from __future__ import annotations

import warnings
from datetime import timedelta
from typing import Any

import pytest
import redis

from asyncsessions import SessionConfigWarning
from asyncsessions.config import parse_settings
from asyncsessions.dialects import LEGACY_TYPES


def settings(**config: Any) -> Any:
    return parse_settings(config, instance_path="/nonexistent")


def test_flask_session_redis_config_puts_the_session_in_redis(
    make_driver: Any, redis_server: Any
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    d = make_driver({"SESSION_TYPE": "redis", "SESSION_REDIS": client,
                     "PERMANENT_SESSION_LIFETIME": timedelta(hours=2)})
    reply = d.post("set", {"user_id": 42})
    cookie = reply.cookie("session")
    assert cookie is not None
    assert cookie["session"]["expires"]  # SESSION_PERMANENT defaults to True, as there
    sid = cookie["session"].value
    assert client.hget(f"session:{sid}", "user_id") == b"42"
    assert 7000 < client.ttl(f"session:{sid}") <= 7200
    assert d.show() == {"user_id": "42"}


def test_their_defaults_and_keys_become_the_store_options() -> None:
    stores = settings(SESSION_TYPE="mongodb", SESSION_MONGODB_COLLECT="web",
                      SESSION_KEY_PREFIX="app:", SESSION_USE_SIGNER=True,
                      SESSION_COOKIE_NAME="sid").stores
    (store,) = stores
    assert (store.name, store.key_prefix, store.use_signer) == ("sid", "app:", True)
    assert store.backend.location is not None
    assert store.backend.location.endswith("/flask_session.web")
    assert settings(SESSION_TYPE="redis").permanent is True
    assert settings(SESSION_TYPE="redis", SESSION_PERMANENT=False).permanent is False
    assert settings().permanent is False  # Flask's own default without their config


def test_flask_beaker_session_file_config(tmp_path: Any) -> None:
    result = settings(SESSION_TYPE="file", SESSION_DATA_DIR=str(tmp_path),
                      SESSION_TIMEOUT=60, SESSION_TESTING=True)
    (store,) = result.stores
    assert store.backend.location == str(tmp_path)
    assert (store.lifetime, store.permanent_lifetime, result.permanent) == (60, 60, False)
    forever = settings(SESSION_TYPE="file", SESSION_DATA_DIR=str(tmp_path),
                       SESSION_EXPIRES=False).stores[0]
    assert forever.lifetime == 400 * 86400


def test_every_session_type_of_theirs_maps_to_a_store_here() -> None:
    from asyncsessions.config import BACKENDS

    assert {legacy.store for legacy in LEGACY_TYPES.values()} <= set(BACKENDS)
    assert set(LEGACY_TYPES) >= {"null", "redis", "memcached", "filesystem", "mongodb",
                                 "sqlalchemy", "dynamodb", "cachelib", "elasticsearch",
                                 "datastore", "firestore", "peewee", "file"}


@pytest.mark.parametrize(("config", "message"), [
    ({"SESSION_TYPE": "no-such-type"}, r"SESSION_TYPE 'no-such-type' is not a session type"),
    ({"SESSION_TYPE": "redsi"}, r"did you mean 'redis'\?"),
    ({"SESSION_TYPE": "redis", "SESSION_CONFIG": [{"cookie_name": "s"}]},
     r"SESSION_TYPE cannot be combined with SESSION_CONFIG"),
    ({"SESSION_REDIS": object(), "SESSION_CONFIG": [{"cookie_name": "s"}]},
     r"SESSION_REDIS cannot be combined with SESSION_CONFIG"),
    ({"SESSION_TYPE": "mongodb", "SESSION_REDIS": object()},
     r"SESSION_REDIS belongs to another SESSION_TYPE"),
    ({"SESSION_TYPE": "redis", "SESSION_ID_LENGTH": 16}, r"SESSION_ID_LENGTH: ids here"),
    ({"SESSION_TYPE": "filesystem", "SESSION_FILE_THRESHOLD": 500},
     r"SESSION_FILE_THRESHOLD: session files here expire by their lifetime"),
    ({"SESSION_TYPE": "redis", "SESSION_PERMANENT": "yes"}, r"SESSION_PERMANENT: expected"),
    ({"SESSION_TYPE": "redis", "SESSION_REDIS": "redis://x"}, r"'client'"),
])
def test_what_cannot_be_honoured_is_refused_naming_the_key(
    config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        settings(**config)


def test_unknown_session_keys_are_warned_about_with_a_guess() -> None:
    with pytest.warns(SessionConfigWarning, match="SESSION_PERMANANT .*did you mean "
                                                  "SESSION_PERMANENT"):
        settings(SESSION_PERMANANT=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        settings(SESSION_TYPE="redis", SESSION_PROTECTION="strong",  # Flask-Login's
                 SESSION_COOKIE_SAMESITE="Lax", SESSION_REFRESH_EACH_REQUEST=False)


def test_fields_no_store_takes_are_warned_about() -> None:
    with pytest.warns(SessionConfigWarning, match="_flashes, _user_id, _fresh"):
        settings(SESSION_CONFIG=[{"cookie_name": "a", "session_fields": ["user"]}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        settings(SESSION_CONFIG=[{"cookie_name": "a", "session_fields": ["user"]},
                                 {"cookie_name": "b", "session_fields": "auto"}])


def test_app_wide_keys_are_defaults_of_every_entry() -> None:
    stores = settings(SESSION_KEY_PREFIX="x:", SESSION_USE_SIGNER=True, SESSION_CONFIG=[
        {"cookie_name": "a"}, {"cookie_name": "b", "key_prefix": "y:"}]).stores
    assert [(s.key_prefix, s.use_signer) for s in stores] == [("x:", True), ("y:", True)]


def test_their_session_api(make_driver: Any, redis_server: Any) -> None:
    proxy = make_driver.session_proxy

    def sid() -> str:
        proxy["n"] = 1
        return f"{proxy.sid} {proxy.sids}"

    def delete() -> str:
        proxy.delete()
        return "deleted"

    d = make_driver({"SESSION_CONFIG": [
        {"cookie_name": "c", "session_fields": ["theme"]},
        {"cookie_name": "r", "session_type": "redis", "url": redis_server.url,
         "session_fields": "auto"},
    ]}, sid=make_driver.view(sid), delete=make_driver.view(delete))
    reply = d.post("sid")
    shown, ids = reply.body.decode().split(" ", 1)
    assert shown == reply.cookie("r")["r"].value  # the id the new session was saved under
    assert ids == repr({"r": shown})
    assert d.post("sid").body.decode().split(" ")[0] == shown
    d.post("set", {"theme": "dark"})
    reply = d.post("delete")
    assert {h.split("=")[0] for h in reply.set_cookies} == {"c", "r"}
    assert d.show() == {}


def test_the_readme_migration_table_is_this_table() -> None:
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name, legacy in LEGACY_TYPES.items():
        keys = ", ".join(f"`{k}` → `{v}`" for k, v in legacy.keys.items()) or "—"
        defaults = ", ".join(f"`{k}={v!r}`" for k, v in legacy.defaults.items())
        row = f"| `{name}` | {legacy.libraries} | `{legacy.store}` | {keys} | {defaults} |"
        assert row in readme, row


@pytest.mark.parametrize("url", ["127.0.0.1:6379", "localhost", "http://127.0.0.1:6379/0"])
def test_a_redis_url_without_its_scheme_is_refused_at_init_app(url: str) -> None:
    with pytest.raises(ValueError, match=r"SESSION_CONFIG\[0\] 'url': url must start with redis"):
        settings(SESSION_CONFIG=[{"cookie_name": "s", "session_type": "redis", "url": url}])
