"""Tests for the null session store: it reads empty and refuses every write."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from asyncsessions.backends.base import Write
from asyncsessions.backends.null import NullBackend
from asyncsessions.config import parse_config
from asyncsessions.ids import new_id

pytestmark = pytest.mark.anyio

KEY = "session:" + new_id()


async def test_reads_empty_refuses_writes_and_deletes_nothing() -> None:
    backend = NullBackend()
    assert await backend.load(KEY, touch=True) is None
    for write in [Write({"a": b"1"}, (), False, 60, create=True), Write({}, ["a"])]:
        with pytest.raises(RuntimeError, match=r"'null' session store keeps nothing.*real store"):
            await backend.store(KEY, write)
    await backend.delete(KEY)
    assert backend.location is None


def test_session_type_is_registered(tmp_path: Path) -> None:
    [store] = parse_config(
        {"SESSION_CONFIG": [{"cookie_name": "sid", "session_type": "null"}]},
        instance_path=str(tmp_path),
    )
    assert isinstance(store.backend, NullBackend)


def test_reading_requests_work_and_writing_ones_fail(make_driver: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [{"cookie_name": "sid", "session_type": "null"}]})
    assert d.show() == {}
    assert d.get("/none").status == 200
    d.set_cookie("sid", new_id())  # a cookie from elsewhere: still no session
    assert d.show() == {}
    reply = d.post("set", {"user_id": 42})
    assert reply.status == 500
    assert reply.cookie("sid") is None


def test_degraded_writes_are_logged_and_dropped(
    make_driver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    d = make_driver({"SESSION_CONFIG": [
        {"cookie_name": "sid", "session_type": "null", "on_error": "degrade"}]})
    with caplog.at_level(logging.WARNING, logger="asyncsessions"):
        reply = d.post("set", {"user_id": 42})
    assert reply.status == 200
    assert reply.cookie("sid") is None
    assert "session store 'sid' degraded" in caplog.text
    assert "the 'null' session store keeps nothing" in caplog.text
    assert d.show() == {}
