"""Tests for the embedded filesystem session store."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import anyio
import pytest

from asyncsessions.backends.base import Record
from asyncsessions.backends.filesystem import FilesystemBackend

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
    backend: FilesystemBackend, directory: Path, content: bytes
) -> None:
    await backend.store(KEY, {"a": b"1"}, (), permanent=False, ttl=60)
    only_record(directory).write_bytes(content)
    assert await backend.load(KEY, touch=True) is None
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
