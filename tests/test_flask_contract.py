"""Flask's own session promises, kept under Flask and Quart for every store type."""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import pytest
from itsdangerous import Signer

from app_fixtures import unreachable
from asyncsessions import SessionConfigWarning
from asyncsessions.ids import new_id
from asyncsessions.serialization import MAX_DEPTH
from asyncsessions.signing import SIGNER_KWARGS

NEEDS_KEY = "no secret key was set"


def entry(store: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"cookie_name": "sid", **store, **more}


def signed(store: dict[str, Any]) -> dict[str, Any]:
    """The store with a signed cookie: its data (secure_cookie) or its id (use_signer)."""
    return entry(store) if store["session_type"] == "secure_cookie" else entry(
        store, use_signer=True)


# Every way of reading a session that Flask's session interface must answer with Vary.
READS: dict[str, Any] = {
    "contains": lambda s: "member" in s,
    "len": lambda s: len(s),
    "bool": lambda s: bool(s),
    "iter": lambda s: list(iter(s)),
    "keys": lambda s: list(s.keys()),
    "values": lambda s: list(s.values()),
    "items": lambda s: list(s.items()),
    "dict": lambda s: dict(s),
    "eq": lambda s: s == {"a": 1},
    "copy": lambda s: s.copy(),
    "get": lambda s: s.get("a"),
    "pop_missing": lambda s: s.pop("nothing", None),
    "read_permanent": lambda s: s.permanent,
    "set_permanent": lambda s: setattr(s, "permanent", False),
}


def test_every_read_varies_by_cookie(make_driver: Any, store_entry: Any) -> None:
    proxy = make_driver.session_proxy
    views = {
        f"read_{name}": make_driver.view(
            lambda read=read: (read(proxy), "ok")[1])
        for name, read in READS.items()
    }
    for name, view in views.items():
        view.__name__ = name
    d = make_driver({"SESSION_CONFIG": [entry(store_entry)]}, **views)
    d.post("set", {"a": 1})
    missing = [name for name in READS if "Cookie" not in (d.get(f"/read_{name}").headers.get(
        "Vary") or "")]
    assert missing == []
    # A view that never looks at the session does not vary...
    assert "Cookie" not in (d.get("/none").headers.get("Vary") or "")


def test_responses_that_set_or_clear_the_cookie_vary(make_driver: Any, store_entry: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [entry(store_entry)]})
    d.post("set", {"a": 1})
    d.post("permanent")
    # The permanent session's refreshed cookie, on a view that never reads the session.
    refreshed = d.get("/none")
    assert refreshed.cookie("sid") is not None
    assert "Cookie" in refreshed.headers.get("Vary", "")
    cleared = d.post("clear")
    assert any(h.startswith("sid=;") for h in cleared.set_cookies)
    assert "Cookie" in cleared.headers.get("Vary", "")


def test_no_secret_key_is_flasks_null_session(make_driver: Any, store_entry: Any) -> None:
    proxy = make_driver.session_proxy

    def write() -> str:
        try:
            proxy["a"] = 1
        except RuntimeError as exc:
            return f"raised here: {exc}"
        return "no error"

    def read() -> str:
        return repr((proxy.get("a"), "a" in proxy, len(proxy)))

    d = make_driver({"SESSION_CONFIG": [signed(store_entry)]},
                    write=make_driver.view(write), read=make_driver.view(read))
    d.app.secret_key = None
    reply = d.get("/read")
    assert (reply.status, reply.body, reply.set_cookies) == (200, b"(None, False, 0)", [])
    reply = d.post("write")
    assert reply.status == 200
    assert reply.body.decode().startswith("raised here: The session is unavailable because "
                                          "no secret key was set.")
    assert reply.set_cookies == []


def test_cookie_this_server_cannot_read_is_left_alone(make_driver: Any, store_entry: Any) -> None:
    # A rolling deploy: the new servers sign with a key the old ones do not have yet.
    new = make_driver({"SESSION_CONFIG": [signed(store_entry)]})
    new.app.secret_key = "the new key"
    new.post("set", {"user": "ada"})
    cookie = new.cookies()["sid"]
    old = make_driver({"SESSION_CONFIG": [signed(store_entry)]})
    old.app.secret_key = "the old key"
    old.set_cookie("sid", cookie)
    for reply in (old.get(), old.get("/none"), old.post("set", {})):
        assert reply.status == 200
        assert reply.set_cookies == []
    assert old.show() == {}
    assert new.show() == {"user": "'ada'"}
    # A write on the old server replaces the cookie: the user chose to act there.
    assert old.post("set", {"x": 1}).cookie("sid") is not None


def test_garbage_and_expired_cookies_are_left_alone(make_driver: Any, store_entry: Any) -> None:
    d = make_driver({"SESSION_REFRESH_EACH_REQUEST": False,
                     "SESSION_CONFIG": [signed(store_entry)]})
    for value in ("garbage", "a.b.c", new_id()):
        d.set_cookie("sid", value)
        reply = d.get()
        assert (reply.status, reply.set_cookies) == (200, [])


def test_a_failed_write_runs_once(make_driver: Any, store_entry: Any,
                                  caplog: pytest.LogCaptureFixture) -> None:
    broken = unreachable(store_entry)
    if broken is None:
        pytest.skip("no server to lose")
    d = make_driver({"SESSION_CONFIG": [entry(broken, timeout=1)]})
    with caplog.at_level(logging.DEBUG):
        reply = d.post("set", {"a": 1})  # no cookie: nothing to load, the write fails
    assert reply.status == 500
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]


def test_a_failed_degraded_write_is_logged_once(make_driver: Any, store_entry: Any,
                                                caplog: pytest.LogCaptureFixture) -> None:
    broken = unreachable(store_entry)
    if broken is None:
        pytest.skip("no server to lose")
    d = make_driver({"SESSION_CONFIG": [entry(broken, timeout=1, on_error="degrade")]})
    with caplog.at_level(logging.WARNING, logger="asyncsessions"):
        reply = d.post("set", {"a": 1})
    assert reply.status == 200
    assert reply.set_cookies == []
    assert caplog.text.count("degraded") == 1


def test_modified_forces_the_save_and_resends_the_cookie(
    make_driver: Any, store_entry: Any
) -> None:
    proxy = make_driver.session_proxy

    def force() -> str:
        proxy.modified = True
        return "ok"

    d = make_driver({"SESSION_REFRESH_EACH_REQUEST": False,
                     "SESSION_CONFIG": [entry(store_entry)]}, force=make_driver.view(force))
    d.post("set", {"a": 1})
    assert d.get("/none").set_cookies == []
    reply = d.post("force")
    assert reply.cookie("sid") is not None
    assert "Cookie" in reply.headers.get("Vary", "")
    assert d.show() == {"a": "1"}


def test_what_saves_loads_and_too_deep_is_refused(make_driver: Any, store_entry: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [entry(store_entry)]})
    deepest: Any = "bottom"
    for _ in range(MAX_DEPTH):
        deepest = {"k": deepest}
    assert d.post("set", {"deep": deepest}).status == 200
    assert "bottom" in d.show()["deep"]
    assert d.post("set", {"deeper": {"k": deepest}}).status == 500
    assert d.post("set", {"list": [[[]]]}).status == 200
    assert "deep" in d.show()  # the refused write changed nothing


def test_lone_surrogate_key_is_a_serialization_error(
    make_driver: Any, store_entry: Any, caplog: pytest.LogCaptureFixture
) -> None:
    d = make_driver({"SESSION_CONFIG": [entry(store_entry)]})
    d.post("set", {"a": 1})
    with caplog.at_level(logging.ERROR):
        reply = d.post("set", {"\ud800": 1})
    assert reply.status == 500
    assert "SerializationError" in caplog.text
    assert d.show() == {"a": "1"}


def test_signed_values_have_one_spelling(make_driver: Any, store_entry: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [signed(store_entry)]})
    d.post("set", {"a": 1})
    good = d.cookies()["sid"]
    head, _, signature = good.rpartition(".")
    spellings = {signature + "=", signature.replace("-", "+").replace("_", "/") + "=="}
    # The last character carries unused bits: three other characters decode the same.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    spellings |= {signature[:-1] + alphabet[(last & ~3) | low] for low in range(4)}
    spellings.discard(signature)
    for spelling in spellings:
        d.set_cookie("sid", f"{head}.{spelling}")
        assert d.show() == {}, spelling
    d.set_cookie("sid", good)
    assert d.show() == {"a": "1"}


def test_signed_ids_are_hmac_sha256(make_driver: Any, store_entry: Any) -> None:
    if store_entry["session_type"] == "secure_cookie":
        pytest.skip("use_signer signs session ids")
    d = make_driver({"SESSION_CONFIG": [entry(store_entry, use_signer=True)]})
    d.post("set", {"a": 1})
    value = d.cookies()["sid"]
    sha256 = Signer("test secret", salt="asyncsessions.id.sid", **SIGNER_KWARGS)
    assert sha256.validate(value)
    assert not Signer("test secret", salt="asyncsessions.id.sid").validate(value)


@pytest.mark.parametrize("kind", ["secure_cookie", "redis"])
def test_data_lives_as_long_as_its_cookie(make_driver: Any, request: Any, tmp_path: Any,
                                          kind: str) -> None:
    from app_fixtures import store_config

    store = store_config(request, kind, tmp_path)
    with pytest.warns(SessionConfigWarning, match="'session_lifetime' .* is not used"):
        d = make_driver({"SESSION_REFRESH_EACH_REQUEST": False,
                         "SESSION_CONFIG": [entry(store, cookie_max_age=60, session_lifetime=1)]})
    d.post("set", {"a": 1})
    time.sleep(1.5)  # past session_lifetime: the cookie (60 s) decides how long the data lives
    assert d.show() == {"a": "1"}


def test_contradicting_lifetimes_are_warned_at_init_app(make_driver: Any) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_driver({"SESSION_CONFIG": [{"cookie_name": "sid", "cookie_max_age": 3600,
                                         "session_lifetime": 60}]})
    messages = [str(w.message) for w in caught if w.category is SessionConfigWarning]
    assert len(messages) == 1
    assert "'session_lifetime' (60 s) is not used" in messages[0]
