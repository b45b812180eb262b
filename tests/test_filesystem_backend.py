"""Tests for the embedded filesystem session store."""

from __future__ import annotations

import fcntl
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

from asyncsessions.backends.base import Record, Write, masked
from asyncsessions.backends.filesystem import FilesystemBackend, _cleanup, _file_name, _replace
from asyncsessions.config import parse_config
from asyncsessions.ids import new_id

pytestmark = pytest.mark.anyio

SID = "AbC-_123" + "x" * 35
KEY = "session:" + SID


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
    await backend.store(KEY, Write(fields, (), True, 60, create=True))
    assert await backend.load(KEY, touch=False) == Record(fields, permanent=True)
    assert await backend.load("session:" + "y" * 43, touch=False) is None


async def test_concurrent_stores_keep_every_field(directory: Path) -> None:
    # Two instances on one directory stand in for two worker processes.
    backends = [FilesystemBackend(directory=directory) for _ in range(2)]
    await backends[0].store(KEY, Write({"f0": b"0"}, (), False, 60, create=True))

    async def set_field(i: int) -> None:
        assert await backends[i % 2].store(KEY, Write({f"f{i}": str(i).encode()}))

    async with anyio.create_task_group() as tg:
        for i in range(1, 100):
            tg.start_soon(set_field, i)
    record = await backends[0].load(KEY, touch=False)
    assert record is not None
    assert record.fields == {f"f{i}": str(i).encode() for i in range(100)}


async def test_expired_record_reads_as_none_and_is_not_merged(
    backend: FilesystemBackend, directory: Path
) -> None:
    await backend.store(KEY, Write({"a": b"1"}, (), False, 1, create=True))
    path = only_record(directory)
    age(path, 2)
    content = path.read_bytes()
    assert await backend.load(KEY, touch=True) is None
    # An update of an expired record is refused: it stays dead, left to the cleanup.
    assert await backend.store(KEY, Write({"b": b"2"}, (), False, 60)) is False
    assert await backend.store(KEY, Write({}, ["a"])) is False
    assert path.read_bytes() == content
    assert await backend.load(KEY, touch=False) is None
    await backend.store(KEY, Write({"b": b"2"}, (), False, 1, create=True))
    assert await backend.load(KEY, touch=False) == Record({"b": b"2"})


async def test_touch_restarts_expiry(backend: FilesystemBackend, directory: Path) -> None:
    await backend.store(KEY, Write({"a": b"1"}, (), False, 10, create=True))
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
    await backend.store(KEY, Write({"a": b"1"}, (), False, 60, create=True))
    only_record(directory).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="asyncsessions"):
        assert await backend.load(KEY, touch=True) is None
    # An empty file is what a crash or a write in progress leaves: no record yet, no warning.
    warned = f"unreadable record {masked(KEY)!r} read as no session" in caplog.text
    assert warned == bool(content)
    assert only_record(directory).read_bytes() == content  # a read never destroys it
    # Not a session of ours: an update finds it gone and leaves it as it is.
    assert await backend.store(KEY, Write({"b": b"2"}, (), False, 60)) is False
    assert await backend.store(KEY, Write({}, ["a"])) is False
    assert only_record(directory).read_bytes() == content
    assert await backend.store(KEY, Write({"b": b"2"}, (), False, 60, create=True))  # replaced
    assert await backend.load(KEY, touch=False) == Record({"b": b"2"})


async def test_file_and_directory_modes(backend: FilesystemBackend, directory: Path) -> None:
    await backend.store(KEY, Write({"a": b"1"}, (), False, 60, create=True))
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(only_record(directory).stat().st_mode) == 0o600


async def test_hostile_keys_stay_inside_the_directory_and_never_collide(
    backend: FilesystemBackend, directory: Path, tmp_path: Path
) -> None:
    keys = ["../" * 5 + "etc/passwd", "..", ".", "/", "a/b", "a%2Fb", "a_b", "a:b", "k" * 1000, ""]
    for i, key in enumerate(keys):
        await backend.store(key, Write({"i": str(i).encode()}, (), False, 60, create=True))
    for i, key in enumerate(keys):
        assert await backend.load(key, touch=False) == Record({"i": str(i).encode()})
    assert [p.parent for p in tmp_path.rglob("*") if p.is_file()] == [directory] * len(keys)
    assert all(len(p.name.encode()) <= 255 for p in records(directory))


async def test_cleanup_removes_only_dead_files(directory: Path) -> None:
    backend = FilesystemBackend(directory=directory, cleanup_every=1)

    async def store(key: str, ttl: int) -> None:
        await backend.store(key, Write({"a": b"1"}, (), False, ttl, create=True))
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
    await backend.store(KEY, Write({"a": b"1"}, (), False, 60, create=True))
    assert backend._cleaner is not None
    backend._cleaner.join(timeout=5)
    assert "a-directory.session" in caplog.text
    assert await backend.load(KEY, touch=False) == Record({"a": b"1"})


async def test_removed_directory_is_made_again(
    directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FilesystemBackend(directory=directory, cleanup_every=1)
    await backend.store(KEY, Write({"a": b"1"}, (), False, 60, create=True))
    shutil.rmtree(directory)
    with caplog.at_level(logging.WARNING):
        assert await backend.load(KEY, touch=True) is None
        _cleanup(str(directory))  # a cleanup thread that started just before the removal
        assert await backend.store(KEY, Write({"a": b"2"})) is False  # its record went too
        assert not directory.exists()
        await backend.store(KEY, Write({"b": b"2"}, (), False, 60, create=True))
        assert backend._cleaner is not None
        backend._cleaner.join(timeout=5)
    assert caplog.text == ""
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert await backend.load(KEY, touch=False) == Record({"b": b"2"})


async def test_removing_every_field_deletes_the_file(
    backend: FilesystemBackend, directory: Path
) -> None:
    await backend.store(KEY, Write({"a": b"1", "b": b"2"}, (), False, 60, create=True))
    assert await backend.store(KEY, Write({}, ["a", "b"])) is True
    assert await backend.load(KEY, touch=False) is None
    assert list(directory.iterdir()) == []


async def test_bind_defaults_to_the_instance_path(tmp_path: Path) -> None:
    backend = FilesystemBackend()
    with pytest.raises(RuntimeError, match="directory"):
        await backend.load(KEY, touch=False)
    backend.bind(name="session", instance_path=str(tmp_path))
    await backend.store(KEY, Write({"a": b"1"}, (), False, 60, create=True))
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


def test_a_directory_that_is_a_file_is_refused_at_init(tmp_path: Path) -> None:
    (tmp_path / "sessions").write_text("not a directory")
    entry = {"cookie_name": "s", "session_type": "filesystem",
             "directory": str(tmp_path / "sessions")}
    with pytest.raises(ValueError, match=r"SESSION_CONFIG\[0\] 'directory'.* is a file"):
        parse_config({"SESSION_CONFIG": [entry]}, instance_path=str(tmp_path))


async def test_expires_at_reads_the_expiry_without_touching(
    backend: FilesystemBackend, directory: Path
) -> None:
    assert await backend.expires_at(KEY) is None
    await backend.store(KEY, Write({"a": b"1"}, (), False, 600, create=True))
    age(only_record(directory), 500)
    at = await backend.expires_at(KEY)
    assert at is not None
    assert abs(at - (time.time() + 100)) < 1
    assert await backend.expires_at(KEY) == at  # read, never touched
    only_record(directory).write_text("garbage")
    assert await backend.expires_at(KEY) is None


# -- updates apply only to a record that still exists, under its lock -------------------------


@pytest.mark.parametrize(
    "write", [Write({"a": b"2"}), Write({"a": b"2"}, (), True, 600), Write({}, ["a"])],
    ids=["update", "flag", "emptying"],
)
async def test_update_of_a_deleted_record_is_refused(directory: Path, write: Write) -> None:
    backend, other = FilesystemBackend(directory=directory), FilesystemBackend(directory=directory)
    await backend.store(KEY, Write({"a": b"1"}, (), False, 60, create=True))
    assert await backend.load(KEY, touch=True) is not None  # this request's load
    await other.delete(KEY)  # a concurrent logout or regenerate()
    assert await backend.store(KEY, write) is False
    assert list(directory.iterdir()) == []  # nothing resurrected, not even an empty file
    assert await backend.load(KEY, touch=False) is None


async def test_update_and_delete_never_make_the_directory(directory: Path) -> None:
    backend = FilesystemBackend(directory=directory)
    assert await backend.store(KEY, Write({"a": b"1"}, (), False, 60)) is False
    await backend.delete(KEY)  # nothing there, not even the directory: no error
    assert not directory.exists()


async def test_field_written_while_emptying_waits_keeps_the_record(
    backend: FilesystemBackend, directory: Path
) -> None:
    await backend.store(KEY, Write({"a": b"1"}, (), True, 600, create=True))
    path = only_record(directory)
    # Another writer holds the lock, and adds a field the emptying request never loaded.
    with open(path, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        async with anyio.create_task_group() as tg:
            emptied: list[bool] = []

            async def empty() -> None:
                emptied.append(await backend.store(KEY, Write({}, ["a"])))

            tg.start_soon(empty)
            await anyio.sleep(0.2)  # the emptying write is waiting for the lock
            assert not emptied
            stored = json.loads(path.read_bytes())
            stored["fields"]["b"] = "2"
            _replace(str(path), json.dumps(stored).encode())
            fcntl.flock(held, fcntl.LOCK_UN)
    assert emptied == [True]
    assert await backend.load(KEY, touch=False) == Record({"b": b"2"}, permanent=True)


async def test_emptying_races_writers_and_every_answer_is_true(directory: Path) -> None:
    # Requests that each load the session and add a field, racing one that empties it: a
    # writer told True has its field in the record, a writer told False has nothing there.
    backends = [FilesystemBackend(directory=directory) for _ in range(2)]
    await backends[0].store(KEY, Write({"a": b"1"}, (), False, 60, create=True))
    answers: dict[str, bool] = {}

    async def request(i: int) -> None:
        backend = backends[i % 2]
        if await backend.load(KEY, touch=True) is None:
            return  # emptied already: this request sees no session
        await anyio.sleep(0.001 * (i % 4))
        if i == 5:
            assert await backend.store(KEY, Write({}, ["a"]))
        else:
            answers[f"f{i}"] = await backend.store(KEY, Write({f"f{i}": b"1"}))

    async with anyio.create_task_group() as tg:
        for i in range(30):
            tg.start_soon(request, i)
    record = await backends[0].load(KEY, touch=False)
    kept = set(record.fields) if record is not None else set()
    assert "a" not in kept
    assert kept == {name for name, written in answers.items() if written}
    assert [p.name for p in directory.iterdir()] == ([_file_name(KEY)] if kept else [])


async def test_write_without_the_flag_keeps_the_stored_one_and_its_own_ttl(
    backend: FilesystemBackend, directory: Path
) -> None:
    await backend.store(KEY, Write({"a": b"1"}, (), False, 100, create=True))
    assert await backend.load(KEY, touch=True) is not None  # this request's load
    # A concurrent request makes the session permanent, with the permanent lifetime.
    other = FilesystemBackend(directory=directory)
    assert await other.store(KEY, Write({}, (), True, 1000))
    path = only_record(directory)
    age(path, 900)  # most of that lifetime has passed
    assert await backend.store(KEY, Write({"b": b"2"}))  # this request did not touch the flag
    assert await backend.load(KEY, touch=False) == Record({"a": b"1", "b": b"2"}, permanent=True)
    stored = json.loads(path.read_bytes())
    assert (stored["ttl"], stored["permanent"]) == (1000, True)
    assert time.time() - path.stat().st_mtime < 5  # its own ttl, from now
    age(path, 999)
    assert await backend.load(KEY, touch=False) is not None


async def test_write_that_sets_the_flag_stores_it_with_its_ttl(
    backend: FilesystemBackend, directory: Path
) -> None:
    await backend.store(KEY, Write({"a": b"1"}, (), True, 1000, create=True))
    assert await backend.store(KEY, Write({}, (), False, 100))
    assert await backend.load(KEY, touch=False) == Record({"a": b"1"}, permanent=False)
    assert json.loads(only_record(directory).read_bytes())["ttl"] == 100
    with pytest.raises(ValueError, match="ttl"):
        await backend.store(KEY, Write({"a": b"2"}, (), True))
    with pytest.raises(ValueError, match="ttl"):
        await backend.store(KEY, Write({"a": b"2"}, create=True))
    assert await backend.load(KEY, touch=False) == Record({"a": b"1"}, permanent=False)


def test_location_is_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert FilesystemBackend(directory="s").location == str(tmp_path / "s")
    backend = FilesystemBackend()
    assert backend.location is None
    backend.bind(name="session", instance_path=str(tmp_path))
    assert backend.location == str(tmp_path / "asyncsessions" / "session")


def test_two_stores_in_one_directory_need_their_own_prefixes(tmp_path: Path) -> None:
    entry = {"session_type": "filesystem", "directory": str(tmp_path), "key_prefix": "s:"}
    config = {"SESSION_CONFIG": [{"cookie_name": "a", **entry}, {"cookie_name": "b", **entry}]}
    with pytest.raises(ValueError, match=r"SESSION_CONFIG\[1\] 'key_prefix': "):
        parse_config(config, instance_path=str(tmp_path))
    config["SESSION_CONFIG"][1]["key_prefix"] = "t:"
    parse_config(config, instance_path=str(tmp_path))


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
