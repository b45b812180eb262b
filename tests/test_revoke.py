"""Log out everywhere: ``index_by`` and ``revoke_sessions``, on every store that can index."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from app_fixtures import STORES, store_config
from apps import Driver
from asyncsessions import revoke_sessions, revoke_sessions_async
from asyncsessions.config import parse_config

#: Caches (memcached may evict, cachelib cannot merge) and cookies are refused an index.
INDEXABLE = [k for k in STORES if k not in ("secure_cookie", "memcache", "cachelib")]


@pytest.fixture(params=INDEXABLE)
def indexed(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The app config: the store under test keeps ``user_id`` and indexes it; a second
    (filesystem) store keeps every other field, so a session has two records."""
    entry = store_config(request, str(request.param), tmp_path)
    return {"SESSION_CONFIG": [
        {"cookie_name": "auth", **entry, "session_fields": ["user_id", "role"],
         "index_by": ["user_id"]},
        {"cookie_name": "prefs", "session_type": "filesystem",
         "directory": str(tmp_path / "prefs"), "session_fields": "auto"},
    ]}


def login(config: dict[str, Any], framework: str, user: int, **more: Any) -> Driver:
    device = Driver(framework, config)
    device.post("set", {"theme": "dark"})
    assert device.post("regenerate", {"user_id": user, **more}).status == 200
    assert device.show()["user_id"] == repr(user)
    return device


def test_revoke_logs_a_user_out_of_every_device_and_every_store(
    indexed: dict[str, Any],
) -> None:
    phone, laptop = login(indexed, "flask", 42), login(indexed, "flask", 42, role="admin")
    other = login(indexed, "flask", 7)
    try:
        prefs_dir = Path(indexed["SESSION_CONFIG"][1]["directory"])
        assert sum(1 for _ in prefs_dir.iterdir()) == 3
        assert revoke_sessions(phone.app, user_id=42) == 2
        assert phone.show() == {}  # both devices, both stores
        assert laptop.show() == {}
        assert other.show() == {"theme": "'dark'", "user_id": "7"}
        assert sum(1 for _ in prefs_dir.iterdir()) == 1  # the theme records went too
        assert revoke_sessions(phone.app, user_id=42) == 0
    finally:
        for device in (phone, laptop, other):
            device.close()


def test_logout_and_a_change_of_user_leave_the_index(indexed: dict[str, Any]) -> None:
    first, second = login(indexed, "flask", 42), login(indexed, "flask", 42)
    try:
        first.post("clear")
        second.post("set", {"user_id": 8})  # the same session now belongs to user 8
        assert revoke_sessions(first.app, user_id=42) == 0
        assert second.show()["user_id"] == "8"
        assert revoke_sessions(first.app, user_id=8) == 1
        assert second.show() == {}
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("kind", ["redis", "filesystem"])
def test_quart_apps_revoke_on_their_own_loop(kind: str, request: pytest.FixtureRequest,
                                              tmp_path: Path) -> None:
    entry = store_config(request, kind, tmp_path)
    config = {"SESSION_CONFIG": [{"cookie_name": "auth", **entry, "index_by": "user_id"}]}
    device = login(config, "quart", 5)
    try:
        async def revoke() -> int:
            return await revoke_sessions_async(device.app, user_id=5)

        assert device.loop.run_until_complete(revoke()) == 1
        assert device.show() == {}
    finally:
        device.close()


def test_values_are_matched_by_type_as_stored(tmp_path: Path) -> None:
    config = {"SESSION_CONFIG": [{"cookie_name": "auth", "session_type": "filesystem",
                                  "directory": str(tmp_path), "index_by": ["user_id"]}]}
    device = login(config, "flask", 42)
    try:
        assert revoke_sessions(device.app, user_id="42") == 0
        with pytest.raises(ValueError, match="no store has 'email' in its index_by"):
            revoke_sessions(device.app, email="a@example.com")
        assert revoke_sessions(device.app, user_id=42) == 1
    finally:
        device.close()


@pytest.mark.parametrize(("entry", "message"), [
    ({"session_type": "secure_cookie"}, "a cookie store keeps no records"),
    ({"session_type": "memcache"}, "may drop records before they expire"),
    ({"session_type": "null"}, "may drop records before they expire"),
    ({"session_type": "filesystem", "session_fields": ["cart"]},
     "field 'user_id' is not kept by this store"),
    ({"session_type": "filesystem", "index_by": [1]}, "expected a list of field names"),
])
def test_stores_that_cannot_keep_an_index_are_refused(
    entry: dict[str, Any], message: str, tmp_path: Path
) -> None:
    config = {"SESSION_CONFIG": [{"cookie_name": "s", "index_by": ["user_id"], **entry}]}
    with pytest.raises(ValueError, match=rf"SESSION_CONFIG\[0\] 'index_by'.*{message}"):
        parse_config(config, instance_path=str(tmp_path))


def test_a_cachelib_store_cannot_keep_an_index(tmp_path: Path) -> None:
    cachelib = pytest.importorskip("cachelib")
    config = {"SESSION_CONFIG": [{
        "cookie_name": "s", "session_type": "cachelib", "index_by": ["user_id"],
        "client": cachelib.FileSystemCache(str(tmp_path)),
    }]}
    with pytest.raises(ValueError, match="cannot merge concurrent writes"):
        parse_config(config, instance_path=str(tmp_path))


def test_entries_of_sessions_long_gone_are_pruned_at_the_next_login(tmp_path: Path) -> None:
    config = {"SESSION_CONFIG": [{
        "cookie_name": "auth", "session_type": "filesystem", "directory": str(tmp_path),
        "index_by": ["user_id"], "session_lifetime": 1, "session_permanent_lifetime": 1,
        "index_lifetime": 1,
    }]}
    gone = login(config, "flask", 42)
    gone.close()  # the browser is gone: its session is never logged out
    asyncio.run(asyncio.sleep(0.7))
    login(config, "flask", 42).close()  # keeps the index record alive
    asyncio.run(asyncio.sleep(0.5))
    new = login(config, "flask", 42)
    try:
        [index] = [p for p in tmp_path.iterdir() if "%7E" in p.name]  # "~": an index key
        assert len(json.loads(index.read_bytes())["fields"]) == 2  # the first entry went
    finally:
        new.close()


@pytest.mark.parametrize("framework", ["flask", "quart"])
def test_the_sessions_cli_revokes(framework: str, tmp_path: Path) -> None:
    config = {"SESSION_CONFIG": [{"cookie_name": "auth", "session_type": "filesystem",
                                  "directory": str(tmp_path), "index_by": ["user_id"]}]}
    devices = [login(config, framework, 42), login(config, framework, 42)]
    try:
        runner = devices[0].app.test_cli_runner()
        result = runner.invoke(args=["sessions", "revoke", "user_id", '"42"'])
        assert result.output == "revoked 0 sessions with user_id='42'\n"
        result = runner.invoke(args=["sessions", "revoke", "user_id", "42"])
        assert result.output == "revoked 2 sessions with user_id=42\n"
        assert [device.show() for device in devices] == [{}, {}]
        result = runner.invoke(args=["sessions", "revoke", "email", "a@example.com"])
        assert result.exit_code == 2
        assert "no store has 'email' in its index_by" in result.output
    finally:
        for device in devices:
            device.close()


def test_starlette_apps_revoke_through_request_app(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from asyncsessions import SessionMiddleware

    async def login(request: Request) -> JSONResponse:
        request.session["user_id"] = 42
        return JSONResponse({})

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"user_id": request.session.get("user_id")})

    async def revoke(request: Request) -> JSONResponse:
        return JSONResponse({"revoked": await revoke_sessions_async(request.app, user_id=42)})

    app = Starlette(
        routes=[Route("/login", login), Route("/whoami", whoami), Route("/revoke", revoke)],
        middleware=[Middleware(SessionMiddleware, secret_key="test secret", config=[{
            "cookie_name": "auth", "session_type": "filesystem",
            "directory": str(tmp_path), "index_by": ["user_id"],
        }])],
    )
    with TestClient(app) as phone, TestClient(app) as laptop:
        phone.get("/login")
        laptop.get("/login")
        assert laptop.get("/revoke").json() == {"revoked": 2}
        assert phone.get("/whoami").json() == {"user_id": None}


def test_another_librarys_session_is_indexed_when_it_is_rewritten() -> None:
    from asyncsessions.engine import Engine
    from asyncsessions.index import index_key
    from asyncsessions.serialization import dumps
    from asyncsessions.session import MultiStoreSession, StoreState
    from test_plan import SID, Nowhere

    [store] = parse_config({"SESSION_CONFIG": [{
        "cookie_name": "s", "session_type": Nowhere(), "index_by": ["user_id"]}]},
        instance_path="/nonexistent")
    engine = Engine((store,), refresh_each_request=False)

    def session() -> MultiStoreSession:
        state = StoreState("s", True, sid=SID, cookie=SID, loaded={"user_id": b"42"},
                           loaded_foreign=True)
        return MultiStoreSession(None, [state], raw=state.loaded)

    read_only = session()
    assert read_only["user_id"] == 42
    assert engine.plan_save(read_only, ("k",)).ops == []  # a read writes nothing, index too
    written = session()
    written["cart"] = 1
    index, prune = engine.plan_save(written, ("k",)).ops
    assert index.key == index_key(store, "user_id", dumps(42))  # indexed first...
    assert index.write is not None
    assert list(index.write.changed) == [SID]
    assert (prune.kind, prune.key, prune.touch) == ("load", index.key, False)
    assert index.then is not None
    index.written = True
    [rewrite] = index.then(index)  # ...then replaced whole in this store's format
    assert rewrite.write is not None
    assert rewrite.write.create


@pytest.mark.parametrize(("entries", "key", "message"), [
    ([{"session_fields": ["user_id"], "index_by": ["user_id"]},
      {"cookie_name": "c", "session_type": "secure_cookie", "session_fields": "auto"},
      {"cookie_name": "d", "session_type": "secure_cookie", "session_fields": ["user_id"]}],
     "index_by", r"also kept by the cookie store SESSION_CONFIG\[2\]"),
    ([{"index_by": ["user_id"], "session_lifetime": 60, "index_lifetime": 30}],
     "index_lifetime", "shorter than the sessions it lists live"),
    ([{"index_lifetime": 3600}], "index_lifetime", "goes with index_by"),
])
def test_an_index_that_would_miss_sessions_is_refused(
    entries: list[dict[str, Any]], key: str, message: str, tmp_path: Path
) -> None:
    first = {"cookie_name": "s", "session_type": "filesystem", "directory": str(tmp_path),
             "session_permanent_lifetime": 60}
    config = {"SESSION_CONFIG": [{**first, **entries[0]}, *entries[1:]]}
    with pytest.raises(ValueError, match=rf"SESSION_CONFIG\[0\] '{key}'.*{message}"):
        parse_config(config, instance_path=str(tmp_path))


def test_a_stale_entry_never_revokes_the_session_of_whoever_holds_it_now(
    tmp_path: Path,
) -> None:
    from asyncsessions.backends.base import Write
    from asyncsessions.index import index_key
    from asyncsessions.serialization import dumps

    config = {"SESSION_CONFIG": [{"cookie_name": "auth", "session_type": "filesystem",
                                  "directory": str(tmp_path), "index_by": ["user_id"]}]}
    device = login(config, "flask", 42)
    try:
        device.post("set", {"user_id": 43})  # the session now belongs to user 43
        [store] = device.app.extensions["asyncsessions"].stores
        sid = device.cookies()["auth"]
        # What a request that loaded the session as 42's, and wrote after the change, leaves.
        stale = Write({sid: dumps({"ids": {"auth": sid}, "at": 0})}, (), True, 3600,
                      create=True)
        assert asyncio.run(store.backend.store(index_key(store, "user_id", b"42"), stale))
        assert revoke_sessions(device.app, user_id=42) == 0
        assert device.show()["user_id"] == "43"
        with pytest.raises(ValueError, match="name one indexed field"):
            revoke_sessions(device.app, user_id=43, role="admin")
    finally:
        device.close()


@pytest.mark.parametrize("on_error", ["raise", "degrade"])
def test_a_login_whose_index_write_fails_does_not_log_in(on_error: str, tmp_path: Path) -> None:
    from asyncsessions.backends.filesystem import FilesystemBackend

    class NoIndex(FilesystemBackend):
        async def store(self, key: str, write: Any) -> bool:
            if "~" in key:
                raise OSError("index unavailable")
            return await super().store(key, write)

    config = {"SESSION_CONFIG": [{
        "cookie_name": "auth", "session_type": NoIndex(directory=str(tmp_path)),
        "index_by": ["user_id"], "on_error": on_error,
    }]}
    device = Driver("flask", config)
    try:
        reply = device.post("regenerate", {"user_id": 42})
        assert reply.status == (500 if on_error == "raise" else 200)
        assert "auth" not in device.cookies()
        assert device.show() == {}  # not logged in, so nothing revoke_sessions could miss
        assert list(tmp_path.iterdir()) == []
    finally:
        device.close()
