"""A request in flight never undoes what a concurrent request of the same session did."""

from __future__ import annotations

from typing import Any

import flask
import pytest
import quart


def entry(store: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"cookie_name": "sid", **store, **more}


def racing_view(make_driver: Any, action: str, data: dict[str, Any] | None = None) -> Any:
    """A view that loads the session, lets a second request ``action`` it, then writes."""
    body = data or {}
    if make_driver.framework == "flask":
        def race() -> str:
            flask.session.get("user")  # loaded before the other request runs
            cookie = {"Cookie": f"sid={flask.request.cookies['sid']}"}
            client = flask.current_app.test_client(use_cookies=False)
            other = client.post(f"/{action}", json=body, headers=cookie)
            flask.session["late"] = 1
            return other.headers.get("Set-Cookie", "")

        return race

    async def race_async() -> str:
        quart.session.get("user")
        cookie = {"Cookie": f"sid={quart.request.cookies['sid']}"}
        other = await quart.current_app.test_client(use_cookies=False).post(
            f"/{action}", json=body, headers=cookie)
        quart.session["late"] = 1
        return other.headers.get("Set-Cookie", "")

    race_async.__name__ = "race"
    if make_driver.framework in ("starlette", "fastapi"):
        async def race_asgi() -> str:
            make_driver.session_proxy.get("user")
            cookie = {"Cookie": f"sid={make_driver.request_proxy.cookies['sid']}"}
            async with make_driver.app_client() as client:
                other = await client.post(f"/{action}", json=body, headers=cookie)
            make_driver.session_proxy["late"] = 1
            return str(other.headers.get("Set-Cookie", ""))

        race_asgi.__name__ = "race"
        return race_asgi
    return race_async


@pytest.mark.parametrize("permanent", [False, True], ids=["browser", "permanent"])
def test_write_after_a_concurrent_logout_does_not_log_back_in(
    make_driver: Any, store_entry: Any, permanent: bool
) -> None:
    if store_entry["session_type"] == "secure_cookie":
        pytest.skip("the browser keeps one cookie: the last response wins")
    d = make_driver({"SESSION_CONFIG": [entry(store_entry)]},
                    race=racing_view(make_driver, "clear"))
    d.post("set", {"user": "ada"})
    if permanent:
        d.post("permanent")
    old = d.cookies()["sid"]
    reply = d.post("race")
    assert reply.status == 200
    assert reply.body.decode().startswith("sid=;")  # the logout cleared the cookie
    assert reply.set_cookies == []  # and the late write neither re-sends the old id ...
    d.set_cookie("sid", old)
    assert d.show() == {}  # ... nor brings the session back


def test_write_after_a_concurrent_login_keeps_the_new_id(
    make_driver: Any, store_entry: Any
) -> None:
    if store_entry["session_type"] == "secure_cookie":
        pytest.skip("the browser keeps one cookie: the last response wins")
    d = make_driver({"SESSION_CONFIG": [entry(store_entry)]},
                    race=racing_view(make_driver, "regenerate", {"user": "bob"}))
    d.post("set", {"user": "anon"})
    d.post("permanent")
    old = d.cookies()["sid"]
    reply = d.post("race")
    new = reply.body.decode().split(";")[0].removeprefix("sid=")
    assert new
    assert new != old
    assert reply.set_cookies == []  # the browser stays on the id the login gave it
    d.set_cookie("sid", new)
    assert d.show() == {"user": "'bob'"}
    d.set_cookie("sid", old)
    assert d.show() == {}


def test_emptying_a_store_keeps_a_field_written_in_that_instant(
    make_driver: Any, store_entry: Any
) -> None:
    if store_entry["session_type"] == "secure_cookie":
        pytest.skip("the browser keeps one cookie: the last response wins")
    proxy = make_driver.session_proxy
    if make_driver.framework == "flask":
        def empty() -> str:
            proxy.pop("user")
            cookie = {"Cookie": f"sid={flask.request.cookies['sid']}"}
            client = flask.current_app.test_client(use_cookies=False)
            client.post("/set", json={"cart": [1]}, headers=cookie)
            return "ok"
    elif make_driver.framework in ("starlette", "fastapi"):
        async def empty() -> str:
            proxy.pop("user")
            cookie = {"Cookie": f"sid={make_driver.request_proxy.cookies['sid']}"}
            async with make_driver.app_client() as client:
                await client.post("/set", json={"cart": [1]}, headers=cookie)
            return "ok"
    else:
        async def empty() -> str:
            proxy.pop("user")
            cookie = {"Cookie": f"sid={quart.request.cookies['sid']}"}
            await quart.current_app.test_client(use_cookies=False).post("/set", json={"cart": [1]},
                                                       headers=cookie)
            return "ok"
    d = make_driver({"SESSION_CONFIG": [entry(store_entry)]}, empty=empty)
    d.post("set", {"user": "ada"})
    old = d.cookies()["sid"]
    assert d.post("empty").status == 200
    d.set_cookie("sid", old)
    assert d.show() == {"cart": "[1]"}
