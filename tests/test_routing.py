"""Field routing across stores: the seed's three-store layout and every session_fields form."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis

from asyncsessions import Backend, Record, Write


def seed_config(redis_url: str, prefix: str) -> dict[str, Any]:
    return {"SESSION_CONFIG": [
        {"cookie_name": "csrf", "session_type": "secure_cookie", "session_fields": ["csrf_token"]},
        {"cookie_name": "session", "session_type": "redis", "url": redis_url,
         "key_prefix": prefix, "session_fields": ["user_id", "user_data"]},
        {"cookie_name": "data", "session_type": "secure_cookie", "session_fields": "auto"},
    ]}


def test_seed_example(make_driver: Any, redis_server: Any) -> None:
    d = make_driver(seed_config(redis_server.url, "seed:"))
    reply = d.post("set", {"csrf_token": "tok", "user_id": 42, "user_data": {"n": "Ada"},
                           "theme": "dark"})
    assert sorted(h.split("=")[0] for h in reply.set_cookies) == ["csrf", "data", "session"]
    sid = d.cookies()["session"]
    stored = redis.Redis.from_url(redis_server.url).hgetall("seed:" + sid)
    assert {k for k in stored if not k.startswith(b"\0")} == {b"user_id", b"user_data"}
    assert d.show() == {"csrf_token": "'tok'", "user_id": "42", "user_data": "{'n': 'Ada'}",
                        "theme": "'dark'"}
    # Each cookie store holds only its own fields.
    d.delete_cookie("data")
    assert d.show() == {"csrf_token": "'tok'", "user_id": "42", "user_data": "{'n': 'Ada'}"}


@pytest.mark.parametrize(("fields", "owned"), [
    (["a"], {"a"}),
    ({"include": ["a", "b"]}, {"a", "b"}),
    ({"exclude": ["a"]}, {"b", "c"}),
    ([], {"a", "b", "c"}),
    (None, {"a", "b", "c"}),
])
def test_session_fields_forms(make_driver: Any, fields: Any, owned: set[str]) -> None:
    first = {"cookie_name": "one"} if fields is None else {"cookie_name": "one",
                                                           "session_fields": fields}
    d = make_driver({"SESSION_CONFIG": [first, {"cookie_name": "two", "session_fields": "auto"}]})
    d.post("set", {"a": 1, "b": 2, "c": 3})
    d.delete_cookie("two")
    assert set(d.show()) == owned


def test_auto_takes_what_no_include_names(make_driver: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [
        {"cookie_name": "one", "session_fields": ["a"]},
        {"cookie_name": "two", "session_fields": "auto"},
        {"cookie_name": "three", "session_fields": ["b"]},
    ]})
    d.post("set", {"a": 1, "b": 2, "c": 3})
    d.delete_cookie("one")
    d.delete_cookie("three")
    assert set(d.show()) == {"c"}


def test_field_owned_twice_is_written_to_both(make_driver: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [
        {"cookie_name": "one", "session_fields": ["a"]},
        {"cookie_name": "two", "session_fields": ["a", "b"]},
    ]})
    d.post("set", {"a": 1, "b": 2})
    d.delete_cookie("one")
    assert d.show() == {"a": "1", "b": "2"}


def test_store_whose_fields_are_gone_is_cleared(make_driver: Any, tmp_path: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [
        {"cookie_name": "files", "session_type": "filesystem", "directory": str(tmp_path),
         "session_fields": ["a"]},
        {"cookie_name": "rest", "session_fields": "auto"},
    ]})
    d.post("set", {"a": 1, "b": 2})
    assert list(tmp_path.iterdir())
    reply = d.post("del", {"a": 1})
    assert any(h.startswith("files=;") for h in reply.set_cookies)
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".session"]
    assert d.show() == {"b": "2"}


def test_first_store_wins_on_load(make_driver: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [
        {"cookie_name": "one", "session_fields": ["a"]},
        {"cookie_name": "two", "session_fields": ["a"]},
    ]})
    d.post("set", {"a": "first"})
    one = d.cookies()["one"]
    d.post("set", {"a": "second"})
    d.set_cookie("one", one)  # an older copy in the first store
    assert d.show() == {"a": "'first'"}


class Sleepy(Backend):
    """A store that takes a known time per call, to see the fan-out."""

    def __init__(self, delay: float = 0.1) -> None:
        self.delay = delay
        self.data: dict[str, dict[str, bytes]] = {}

    async def load(self, key: str, *, touch: bool) -> Record | None:
        await asyncio.sleep(self.delay)
        fields = self.data.get(key)
        return None if fields is None else Record(dict(fields))

    async def store(self, key: str, write: Write) -> bool:
        await asyncio.sleep(self.delay)
        if not write.create and key not in self.data:
            return False
        record = self.data.setdefault(key, {})
        record.update(write.changed)
        for name in write.removed:
            record.pop(name, None)
        if not record:
            del self.data[key]
        return True

    async def delete(self, key: str) -> None:
        await asyncio.sleep(self.delay)
        self.data.pop(key, None)


def test_stores_are_loaded_and_saved_concurrently(make_driver: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [
        {"cookie_name": n, "session_type": Sleepy(0.1), "session_fields": [n]} for n in "abc"
    ]})
    started = time.perf_counter()
    d.post("set", {"a": 1, "b": 2, "c": 3})  # three stores written: 0.1 s, not 0.3 s
    assert time.perf_counter() - started < 0.2
    started = time.perf_counter()
    assert d.show() == {"a": "1", "b": "2", "c": "3"}  # three loads, 0.1 s
    assert time.perf_counter() - started < 0.2


def test_backend_class_as_session_type(make_driver: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [{"cookie_name": "s", "session_type": Sleepy,
                                         "delay": 0}]})
    d.post("set", {"a": 1})
    assert d.show() == {"a": "1"}
