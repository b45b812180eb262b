"""The behaviour every store shows, through Flask and through Quart."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from app_fixtures import unreachable
from asyncsessions import SessionBackendError


def entry(store: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"cookie_name": "sid", **store, **more}


def test_round_trip_and_merge(make_driver: Any, store_entry: dict[str, Any]) -> None:
    d = make_driver({"SESSION_CONFIG": [entry(store_entry)]})
    assert d.show() == {}
    d.post("set", {"user_id": 7, "name": "Ada", "cart": [1, 2]})
    assert d.show() == {"user_id": "7", "name": "'Ada'", "cart": "[1, 2]"}
    d.post("del", {"name": 1})
    assert d.show() == {"user_id": "7", "cart": "[1, 2]"}


def test_nested_mutation_saved_without_modified(make_driver: Any, store_entry: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [entry(store_entry)]})
    d.post("set", {"cart": [1]})
    d.post("append", {"cart": 2})
    assert d.show()["cart"] == "[1, 2]"


def test_clear_deletes_store_and_cookie(make_driver: Any, store_entry: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [entry(store_entry)]})
    d.post("set", {"a": 1})
    assert "sid" in d.cookies()
    reply = d.post("clear")
    assert any(h.startswith("sid=;") for h in reply.set_cookies)
    assert "sid" not in d.cookies()
    assert d.show() == {}


def test_read_only_request_sets_no_cookie(make_driver: Any, store_entry: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [entry(store_entry)]})
    d.post("set", {"a": 1})
    reply = d.get()
    assert reply.set_cookies == []
    assert reply.headers.get("Vary") == "Cookie"


def test_unused_session_sets_nothing(make_driver: Any, store_entry: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [entry(store_entry)]})
    reply = d.get("/none")
    assert reply.set_cookies == []
    assert "Cookie" not in (reply.headers.get("Vary") or "")


def test_cookie_from_another_client_is_shared_state(make_driver: Any, store_entry: Any) -> None:
    # Two browsers never see each other's data; a copied cookie sees the same session.
    a = make_driver({"SESSION_CONFIG": [entry(store_entry)]})
    b = make_driver({"SESSION_CONFIG": [entry(store_entry)]})
    a.post("set", {"who": "a"})
    b.post("set", {"who": "b"})
    assert a.show() == {"who": "'a'"}
    assert b.show() == {"who": "'b'"}


def test_permanent_cookie_expiry(make_driver: Any, store_entry: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [entry(store_entry, session_permanent_lifetime=3600)]})
    reply = d.post("set", {"a": 1})
    assert "expires" not in reply.cookie("sid")["sid"].output().lower()
    reply = d.post("permanent")
    morsel = reply.cookie("sid")["sid"]
    assert morsel["expires"]
    # SESSION_REFRESH_EACH_REQUEST (default True): a permanent session's cookie slides.
    assert d.get().cookie("sid") is not None
    assert d.show() == {"a": "1"}


def test_no_refresh_each_request(make_driver: Any, store_entry: Any) -> None:
    d = make_driver({
        "SESSION_REFRESH_EACH_REQUEST": False,
        "SESSION_CONFIG": [entry(store_entry)],
    })
    d.post("set", {"a": 1})
    d.post("permanent")
    assert d.get().set_cookies == []
    assert d.show() == {"a": "1"}


def test_cookie_attributes(make_driver: Any, store_entry: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [entry(
        store_entry, cookie_path="/", cookie_secure=True, cookie_httponly=False,
        cookie_samesite="Strict", cookie_max_age=120,
    )]})
    header = d.post("set", {"a": 1}).set_cookies[0]
    assert "Secure" in header
    assert "HttpOnly" not in header
    assert "SameSite=Strict" in header
    assert "Max-Age=120" in header


def test_flask_cookie_settings_are_the_fallback(make_driver: Any, store_entry: Any) -> None:
    d = make_driver({
        "SESSION_COOKIE_SAMESITE": "Strict",
        "SESSION_COOKIE_SECURE": True,
        "SESSION_CONFIG": [entry(store_entry)],
    })
    header = d.post("set", {"a": 1}).set_cookies[0]
    assert "SameSite=Strict" in header
    assert "Secure" in header


def test_rich_values_round_trip_exactly(make_driver: Any, store_entry: Any) -> None:
    import datetime as dt
    import uuid
    from zoneinfo import ZoneInfo

    from markupsafe import Markup

    values = {
        "tuple": (1, "a", (2,)),
        "bytes": b"\x00\xff",
        "uuid": uuid.UUID("12345678123456781234567812345678"),
        "markup": Markup("<b>x</b>"),
        "naive": dt.datetime(2026, 1, 2, 3, 4, 5, 678901),
        "aware": dt.datetime(2026, 7, 1, 12, 0, 0, 1, tzinfo=ZoneInfo("Europe/Paris")),
        "nested": {"list": [1, {"t": (1, 2)}], " t": "not a tag"},
    }

    proxy = make_driver.session_proxy

    def put() -> str:
        proxy.update(values)
        return "ok"

    def check() -> str:
        for key, value in values.items():
            got = proxy[key]
            assert got == value, key
            assert type(got) is type(value), key
            if isinstance(value, dt.datetime):
                assert got.tzinfo == value.tzinfo, key
        return "same"

    d = make_driver({"SESSION_CONFIG": [entry(store_entry)]},
                    put=make_driver.view(put), check=make_driver.view(check))
    assert d.get("/put").status == 200
    reply = d.get("/check")
    assert reply.status == 200, reply.body
    assert reply.body == b"same"


def test_garbage_id_is_never_adopted(make_driver: Any, store_entry: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [entry(store_entry)]})
    forged = "A" * 43
    d.set_cookie("sid", forged)
    assert d.show() == {}
    d.post("set", {"a": 1})
    assert d.cookies()["sid"] != forged
    assert d.show() == {"a": "1"}


def test_regenerate_issues_new_ids_and_drops_old(make_driver: Any, store_entry: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [entry(store_entry)]})
    d.post("set", {"cart": [1]})
    old = d.cookies()["sid"]
    d.post("regenerate", {"user_id": 1})
    new = d.cookies()["sid"]
    assert d.show() == {"cart": "[1]", "user_id": "1"}
    if store_entry["session_type"] == "secure_cookie":
        return  # no server-side record: nothing to fix a session to
    assert new != old
    d.set_cookie("sid", old)
    assert d.show() == {}


def test_session_transaction(make_driver: Any, store_entry: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [entry(store_entry)]})
    if d.framework == "flask":
        with d.client.session_transaction() as sess:
            sess["planted"] = [1, 2]
        assert d.show() == {"planted": "[1, 2]"}
        with d.client.session_transaction() as sess:
            assert sess["planted"] == [1, 2]
    else:
        async def plant() -> None:
            async with d.client.session_transaction() as sess:
                sess["planted"] = [1, 2]

        d.loop.run_until_complete(plant())
        assert d.show() == {"planted": "[1, 2]"}


def test_use_signer(make_driver: Any, store_entry: Any) -> None:
    if store_entry["session_type"] == "secure_cookie":
        pytest.skip("use_signer signs session ids; a secure cookie is signed anyway")
    d = make_driver({"SESSION_CONFIG": [entry(store_entry, use_signer=True)]})
    d.post("set", {"a": 1})
    signed = d.cookies()["sid"]
    assert "." in signed
    d.set_cookie("sid", signed.split(".")[0] + ".forged")
    assert d.show() == {}
    d.set_cookie("sid", signed)
    assert d.show() == {"a": "1"}


def test_expired_session_reads_empty(make_driver: Any, store_entry: Any) -> None:
    d = make_driver({
        "SESSION_REFRESH_EACH_REQUEST": False,
        "SESSION_CONFIG": [entry(store_entry, session_lifetime=1)],
    })
    d.post("set", {"a": 1})
    assert d.show() == {"a": "1"}
    time.sleep(2.1)
    assert d.show() == {}


def test_permanent_lifetime_defaults_to_flask_setting(make_driver: Any, store_entry: Any) -> None:
    d = make_driver({
        "PERMANENT_SESSION_LIFETIME": timedelta(seconds=1234),
        "SESSION_CONFIG": [entry(store_entry)],
    })
    d.post("set", {"a": 1})
    morsel = d.post("permanent").cookie("sid")["sid"]
    assert morsel["expires"]
    engine = d.app.extensions["asyncsessions"]
    assert engine.stores[0].permanent_lifetime == 1234


def test_backend_error_names_store(make_driver: Any, store_entry: Any) -> None:
    broken = unreachable(store_entry)
    if broken is None:
        pytest.skip("no server to lose")
    d = make_driver({"SESSION_CONFIG": [entry(broken, timeout=2)]})
    d.set_cookie("sid", "B" * 43)
    d.app.register_error_handler(SessionBackendError, lambda e: (f"down: {e.store}", 503))
    reply = d.get()
    assert (reply.status, reply.body) == (503, b"down: sid")
    # A view that never touches the session is not affected.
    assert d.get("/none").status == 200


def test_permanence_change_reaches_the_cookie(make_driver: Any, store_entry: Any) -> None:
    d = make_driver({
        "SESSION_REFRESH_EACH_REQUEST": False,
        "SESSION_CONFIG": [entry(store_entry)],
    })
    d.post("set", {"a": 1})
    morsel = d.post("permanent").cookie("sid")
    assert morsel is not None
    assert morsel["sid"]["expires"]
    morsel = d.post("permanent", {"value": False}).cookie("sid")
    assert morsel is not None
    assert not morsel["sid"]["expires"]
    assert d.show() == {"a": "1"}


def test_partitioned_cookie_is_deleted_as_partitioned(make_driver: Any, store_entry: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [entry(
        store_entry, cookie_partitioned=True, cookie_secure=True, cookie_samesite="None")]})
    assert "Partitioned" in d.post("set", {"a": 1}).set_cookies[0]
    cleared = d.post("clear").set_cookies
    assert cleared
    assert cleared[0].startswith("sid=;")
    assert "Partitioned" in cleared[0]
