"""Tests for the embedded filesystem session store."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncsessions.backends.base import Record, masked
from asyncsessions.backends.filesystem import FilesystemBackend, _cleanup, _file_name
from asyncsessions.ids import new_id

pytestmark = pytest.mark.anyio

SID = "AbC-_123" + "x" * 35
KEY = "session:" + SID


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "sessions"


@pytest.fixture
def backend(directory: Path) -> FilesystemBackend:
    return FilesystemBackend(directory=directory)


def records(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.session"))


def only_record(directory: Path) -> Path:
    [path] = records(directory)
    return path


def age(path: Path, seconds: float) -> None:
    """Move the file's mtime into the past, as if it had been written ``seconds`` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))


async def test_round_trip(backend: FilesystemBackend) -> None:
    fields = {
        "user_id": b"42",
        "name": '"Zoë"'.encode(),
        "odd name/..:": b"[1,2]",
        "not utf-8": b"\xff\x00\xed\xa0\x80",
    }
    await backend.store(KEY, fields, (), permanent=True, ttl=60)
    assert await backend.load(KEY, touch=False) == Record(fields, permanent=True)
    assert await backend.load("session:" + "y" * 43, touch=False) is None


async def test_store_merges_and_removes_fields(backend: FilesystemBackend) -> None:
    await backend.store(KEY, {"a": b"1", "b": b"2"}, (), permanent=True, ttl=60)
    await backend.store(KEY, {"c": b"3"}, ["a", "missing"], permanent=False, ttl=60)
    assert await backend.load(KEY, touch=False) == Record({"b": b"2", "c": b"3"})


async def test_concurrent_stores_keep_every_field(directory: Path) -> None:
    # Two instances on one directory stand in for two worker processes.
    backends = [FilesystemBackend(directory=directory) for _ in range(2)]

    async def set_field(i: int) -> None:
        await backends[i % 2].store(KEY, {f"f{i}": str(i).encode()}, (), permanent=False, ttl=60)

    async with anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(set_field, i)
    record = await backends[0].load(KEY, touch=False)
    assert record is not None
    assert record.fields == {f"f{i}": str(i).encode() for i in range(100)}


async def test_expired_record_reads_as_none_and_is_not_merged(
    backend: FilesystemBackend, directory: Path
) -> None:
    await backend.store(KEY, {"a": b"1"}, (), permanent=False, ttl=1)
    age(only_record(directory), 2)
    assert await backend.load(KEY, touch=True) is None
    await backend.store(KEY, {"b": b"2"}, (), permanent=False, ttl=1)
    assert await backend.load(KEY, touch=False) == Record({"b": b"2"})


async def test_touch_restarts_expiry(backend: FilesystemBackend, directory: Path) -> None:
    await backend.store(KEY, {"a": b"1"}, (), permanent=False, ttl=10)
    path = only_record(directory)
    age(path, 8)
    before = path.stat().st_mtime
    assert await backend.load(KEY, touch=False) is not None
    assert path.stat().st_mtime == before
    assert await backend.load(KEY, touch=True) is not None
    assert path.stat().st_mtime > before + 7
    age(path, 9)  # past the original expiry, within the restarted one
    assert await backend.load(KEY, touch=False) is not None


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"[]",
        b'{"v": 1}',
        b'{"v": 2, "ttl": 60, "permanent": false, "fields": {}}',
        b'{"v": 1, "ttl": "60", "permanent": false, "fields": {"a": "1"}}',
        b'{"v": 1, "ttl": 60, "permanent": false, "fields": {"a": 1}}',
        b'{"v": 1, "ttl": 60, "permanent": false, "fields": {"a": "\\ud800"}}',
        b"[" * 100_000,
    ],
)
async def test_garbage_file_reads_as_none(
    backend: FilesystemBackend, directory: Path, content: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await backend.store(KEY, {"a": b"1"}, (), permanent=False, ttl=60)
    only_record(directory).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="asyncsessions"):
        assert await backend.load(KEY, touch=True) is None
    # An empty file is what a crash or a write in progress leaves: no record yet, no warning.
    warned = f"unreadable record {masked(KEY)!r} read as no session" in caplog.text
    assert warned == bool(content)
    assert only_record(directory).read_bytes() == content  # a read never destroys it
    await backend.store(KEY, {"b": b"2"}, (), permanent=False, ttl=60)
    assert await backend.load(KEY, touch=False) == Record({"b": b"2"})


async def test_file_and_directory_modes(backend: FilesystemBackend, directory: Path) -> None:
    await backend.store(KEY, {"a": b"1"}, (), permanent=False, ttl=60)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(only_record(directory).stat().st_mode) == 0o600


async def test_hostile_keys_stay_inside_the_directory_and_never_collide(
    backend: FilesystemBackend, directory: Path, tmp_path: Path
) -> None:
    keys = ["../" * 5 + "etc/passwd", "..", ".", "/", "a/b", "a%2Fb", "a_b", "a:b", "k" * 1000, ""]
    for i, key in enumerate(keys):
        await backend.store(key, {"i": str(i).encode()}, (), permanent=False, ttl=60)
    for i, key in enumerate(keys):
        assert await backend.load(key, touch=False) == Record({"i": str(i).encode()})
    assert [p.parent for p in tmp_path.rglob("*") if p.is_file()] == [directory] * len(keys)
    assert all(len(p.name.encode()) <= 255 for p in records(directory))


async def test_cleanup_removes_only_dead_files(directory: Path) -> None:
    backend = FilesystemBackend(directory=directory, cleanup_every=1)

    async def store(key: str, ttl: int) -> None:
        await backend.store(key, {"a": b"1"}, (), permanent=False, ttl=ttl)
        assert backend._cleaner is not None
        backend._cleaner.join(timeout=5)

    await store("expired", ttl=1)
    age(only_record(directory), 2)
    (directory / "garbage.session").write_bytes(b"garbage")
    stale_temp, fresh_temp = directory / ".stale.tmp", directory / ".fresh.tmp"
    stale_temp.write_bytes(b"")
    fresh_temp.write_bytes(b"")
    age(stale_temp, 7200)
    await store("live", ttl=60)
    assert [p.name for p in records(directory)] == ["live.session"]
    assert not stale_temp.exists()
    assert fresh_temp.exists()


async def test_cleanup_failure_never_fails_a_store(
    directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FilesystemBackend(directory=directory, cleanup_every=1)
    (directory / "a-directory.session").mkdir(parents=True)
    await backend.store(KEY, {"a": b"1"}, (), permanent=False, ttl=60)
    assert backend._cleaner is not None
    backend._cleaner.join(timeout=5)
    assert "a-directory.session" in caplog.text
    assert await backend.load(KEY, touch=False) == Record({"a": b"1"})


async def test_removed_directory_is_made_again(
    directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FilesystemBackend(directory=directory, cleanup_every=1)
    await backend.store(KEY, {"a": b"1"}, (), permanent=False, ttl=60)
    shutil.rmtree(directory)
    with caplog.at_level(logging.WARNING):
        assert await backend.load(KEY, touch=True) is None
        _cleanup(str(directory))  # a cleanup thread that started just before the removal
        await backend.store(KEY, {"b": b"2"}, (), permanent=False, ttl=60)
        assert backend._cleaner is not None
        backend._cleaner.join(timeout=5)
    assert caplog.text == ""
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert await backend.load(KEY, touch=False) == Record({"b": b"2"})


async def test_delete(backend: FilesystemBackend, directory: Path) -> None:
    await backend.delete(KEY)  # nothing there, not even the directory
    await backend.store(KEY, {"a": b"1"}, (), permanent=False, ttl=60)
    await backend.delete(KEY)
    await backend.delete(KEY)
    assert await backend.load(KEY, touch=False) is None
    assert records(directory) == []


async def test_removing_every_field_deletes_the_file(
    backend: FilesystemBackend, directory: Path
) -> None:
    await backend.store(KEY, {"a": b"1", "b": b"2"}, (), permanent=False, ttl=60)
    await backend.store(KEY, {}, ["a", "b"], permanent=False, ttl=60)
    assert await backend.load(KEY, touch=False) is None
    assert list(directory.iterdir()) == []


async def test_bind_defaults_to_the_instance_path(tmp_path: Path) -> None:
    backend = FilesystemBackend()
    with pytest.raises(RuntimeError, match="directory"):
        await backend.load(KEY, touch=False)
    backend.bind(name="session", instance_path=str(tmp_path))
    await backend.store(KEY, {"a": b"1"}, (), permanent=False, ttl=60)
    assert records(tmp_path / "asyncsessions" / "session") != []


def test_bind_keeps_an_explicit_directory(tmp_path: Path) -> None:
    backend = FilesystemBackend(directory=tmp_path / "mine")
    backend.bind(name="session", instance_path=str(tmp_path))
    assert backend.directory == str(tmp_path / "mine")


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"directory": 3}, TypeError),
        ({"directory": b"/tmp"}, TypeError),
        ({"directory": ""}, ValueError),
        ({"cleanup_every": "10"}, TypeError),
        ({"cleanup_every": True}, TypeError),
        ({"cleanup_every": -1}, ValueError),
    ],
)
def test_invalid_options_name_the_option(
    options: dict[str, object], error: type[Exception]
) -> None:
    [name] = options
    with pytest.raises(error, match=name):
        FilesystemBackend(**options)  # type: ignore[arg-type]


# -- through Flask and Quart ------------------------------------------------------------------


def driver(make_driver: Any, directory: Path, **options: Any) -> Any:
    return make_driver({"SESSION_CONFIG": [{
        "cookie_name": "sid", "session_type": "filesystem", "directory": str(directory),
        "key_prefix": "t:", **options}]})


@pytest.mark.parametrize(
    "content",
    [b"\x00\x00\x00\x00\x80\x05}\x94.",  # cachelib's (Flask-Session's) expiry + pickle
     b'{"user_id": 42}', b'{"v": 1, "ttl": 60, "permanent": "no", "fields": {}}', b"[" * 100_000],
    ids=["pickle", "other shape", "wrong type", "too deep"],
)
def test_foreign_file_is_a_fresh_session(
    make_driver: Any, directory: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    d = driver(make_driver, directory)
    sid = new_id()
    directory.mkdir()
    planted = directory / _file_name("t:" + sid)
    planted.write_bytes(content)
    d.set_cookie("sid", sid)
    with caplog.at_level(logging.WARNING, logger="asyncsessions"):
        assert d.show() == {}
    assert f"session store 'sid': unreadable record {masked('t:' + sid)!r}" in caplog.text
    assert planted.read_bytes() == content

    assert d.post("set", {"user_id": 42}).status == 200
    new_sid = d.cookies()["sid"]
    assert new_sid != sid  # an id with no record of ours is never adopted
    stored = json.loads((directory / _file_name("t:" + new_sid)).read_bytes())
    assert stored == {"v": 1, "ttl": 86400, "permanent": False, "fields": {"user_id": "42"}}
    assert d.show() == {"user_id": "42"}


@pytest.mark.parametrize("on_error", ["raise", "degrade"])
def test_write_after_the_directory_is_removed(
    make_driver: Any, directory: Path, on_error: str
) -> None:
    d = driver(make_driver, directory, on_error=on_error)
    assert d.post("set", {"a": 1}).status == 200
    shutil.rmtree(directory)
    assert d.show() == {}
    assert d.post("set", {"b": 2}).status == 200
    assert d.show() == {"b": "2"}
    assert d.post("set", {"c": 3}).status == 200
    assert d.show() == {"b": "2", "c": "3"}
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
