"""The embedded session store: one JSON file per session in a local directory."""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Generator, Iterator
from contextlib import suppress
from hashlib import sha256
from typing import IO, NamedTuple

from .base import Backend, Record, Write, run_blocking

__all__ = ["FilesystemBackend"]

logger = logging.getLogger(__name__)

_SUFFIX = ".session"
_NAME_MAX = 255  # bytes in a file name on every common filesystem
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_STALE_TEMP_NS = 3600 * 10**9  # a write takes milliseconds: older temp files are crash leftovers


class FilesystemBackend(Backend):
    """Sessions as files under ``directory`` (default ``<instance_path>/asyncsessions``).

    For one machine and no server; POSIX only, as it locks with ``flock``.

    Each record is ``{"v": 1, "ttl": int, "permanent": bool, "fields": {name: text}}`` in a
    file named after its key. It expires ``ttl`` seconds after the file's mtime, so a sliding
    refresh is a bare ``utime``. Every write holds an exclusive ``flock`` on the file while it
    reads, merges and replaces (or unlinks) it, so concurrent requests (threads or processes)
    that change different fields all survive and each write sees the one before it whole:

    - A new id's record is created (and anything at its path replaced whole).
    - An update opens the file without creating it: a file that a logout or ``regenerate()``
      removed, an expired or empty one, or one this store did not write means the session is
      gone, and nothing is written (``store`` returns ``False``).
    - A merge that leaves no field unlinks the file under the lock, so a field another
      request wrote before it took the lock keeps the record.
    - A write that does not set the permanent flag keeps the stored flag and TTL; a replaced
      file has a new mtime, so the record lives its own TTL from now.

    Writes are not fsync-ed: sessions are cheap to lose, and a machine crash can lose a
    recent write or leave an empty file, which reads as no session, but never a torn one. A
    file this store did not write reads as no session, with a warning.

    The directory is made on the first write (mode 0700), and again by the next write if it
    is removed while the app runs; until then reads find no session.

    Every ``cleanup_every`` writes (0: never) a background thread removes expired records
    (and files that hold none).
    """

    def __init__(
        self,
        *,
        directory: str | os.PathLike[str] | None = None,
        cleanup_every: int = 1000,
    ) -> None:
        if directory is not None:
            if not isinstance(directory, (str, os.PathLike)):
                raise TypeError(f"directory must be a path, not {type(directory).__name__}")
            directory = os.fspath(directory)
            if not isinstance(directory, str):
                raise TypeError("directory must be a str path, not bytes")
            if not directory:
                raise ValueError("directory must not be empty")
            if os.path.exists(directory) and not os.path.isdir(directory):
                raise ValueError(f"directory {directory!r} is a file, not a directory")
        if not isinstance(cleanup_every, int) or isinstance(cleanup_every, bool):
            raise TypeError(f"cleanup_every must be an int, not {type(cleanup_every).__name__}")
        if cleanup_every < 0:
            raise ValueError(f"cleanup_every must be >= 0 (0: never), not {cleanup_every}")
        self.directory: str | None = directory
        self.location = None if directory is None else os.path.abspath(directory)
        self.cleanup_every = cleanup_every
        self._stores = itertools.count(1)
        self._cleaner: threading.Thread | None = None

    def bind(self, *, name: str, instance_path: str) -> None:
        super().bind(name=name, instance_path=instance_path)
        if self.directory is None:
            # One folder per store, so two file stores never read each other's records.
            self.directory = os.path.join(
                instance_path, "asyncsessions", _file_name(name).removesuffix(".session")
            )
            self.location = os.path.abspath(self.directory)

    async def load(self, key: str, *, touch: bool) -> Record | None:
        try:
            return await run_blocking(_load, self._path(key), touch)
        except _Unreadable as exc:
            self.unreadable(key, str(exc))
            return None

    async def store(self, key: str, write: Write) -> bool:
        # A snapshot: the caller's loop goes on while the thread runs.
        write = Write(dict(write.changed), tuple(write.removed), write.permanent, write.ttl,
                      create=write.create)
        path = self._path(key)
        written = await run_blocking(_store, path, write)
        if self.cleanup_every and next(self._stores) % self.cleanup_every == 0:
            self._start_cleanup(os.path.dirname(path))
        return written

    async def delete(self, key: str) -> None:
        await run_blocking(_delete, self._path(key))

    purges_expired = True

    async def count(self, prefix: str) -> int | None:
        directory = os.path.dirname(self._path(prefix))
        # Keys too long for a file name are hashed: those are not counted under any prefix.
        return await run_blocking(_count, directory, _file_name(prefix).removesuffix(_SUFFIX))

    async def expires_at(self, key: str) -> float | None:
        return await run_blocking(_expires_at, self._path(key))

    async def purge(self, prefix: str, *, batch: int, dry_run: bool) -> AsyncIterator[int]:
        # Every dead record of the directory, whatever its prefix (as the cleanup does).
        sweep = _sweep(os.path.dirname(self._path(prefix)), dry_run=dry_run)
        try:
            done = False
            while not done:
                dead, done = await run_blocking(_take, sweep, batch)
                if dead:
                    yield dead
        finally:
            await run_blocking(sweep.close)

    def _path(self, key: str) -> str:
        if self.directory is None:
            raise RuntimeError("FilesystemBackend has no directory: pass directory= or bind()")
        return os.path.join(self.directory, _file_name(key))

    def _start_cleanup(self, directory: str) -> None:
        # Unlocked check: two overlapping cleanups are merely wasteful. A thread object from
        # before a fork reads as dead in the child, so a forked worker still cleans up.
        if self._cleaner is not None and self._cleaner.is_alive():
            return
        self._cleaner = threading.Thread(
            target=_cleanup, args=(directory,), name="asyncsessions-cleanup", daemon=True
        )
        try:
            self._cleaner.start()
        except RuntimeError:
            logger.warning("could not start the session cleanup thread", exc_info=True)


class _Stored(NamedTuple):
    ttl: int
    permanent: bool
    fields: dict[str, bytes]


class _Unreadable(Exception):
    """A file at a record's path holds no record this store wrote (the message says why)."""


def _file_name(key: str) -> str:
    """A file name for ``key``: injective, one path component, at most 255 bytes."""
    # Escaping '%' and '.' too keeps the mapping injective and rules out '..' and '/'.
    raw = key.encode("utf-8", "surrogatepass")
    name = "".join(chr(byte) if byte in _SAFE else f"%{byte:02X}" for byte in raw)
    if len(name) + len(_SUFFIX) > _NAME_MAX:
        name = "~" + sha256(raw).hexdigest()  # '~' never appears in an escaped name
    return name + _SUFFIX


def _open_locked(path: str, *, create: bool) -> IO[bytes]:
    """The file now at ``path``, opened for reading and exclusively flock-ed.

    Raises FileNotFoundError if it does not exist and ``create`` is false.
    """
    flags = os.O_RDONLY | (os.O_CREAT if create else 0)
    while True:
        file = open(os.open(path, flags, 0o600), "rb")  # noqa: SIM115 - returned to the caller
        try:
            fcntl.flock(file, fcntl.LOCK_EX)
            # Writers replace or unlink the file under the lock, so a lock won on a file that
            # is no longer at ``path`` guards nothing: try again on the current one.
            if os.path.samestat(os.fstat(file.fileno()), os.stat(path)):
                return file
        except FileNotFoundError:
            pass
        except BaseException:
            file.close()
            raise
        file.close()


def _read_live(file: IO[bytes]) -> _Stored | None:
    """The record in ``file``, or None if it is empty or expired; ``_Unreadable`` if foreign."""
    data = file.read()
    if not data:
        return None  # being created by a writer, or left empty by a crash: no record yet
    stored = _parse(data)
    expires_ns = os.fstat(file.fileno()).st_mtime_ns + stored.ttl * 10**9
    return stored if time.time_ns() < expires_ns else None


def _parse(data: bytes) -> _Stored:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply to parse
        raise _Unreadable(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("v") != 1:
        raise _Unreadable("not a version 1 record")
    ttl, permanent, fields = doc.get("ttl"), doc.get("permanent"), doc.get("fields")
    if (
        type(ttl) is not int
        or not isinstance(permanent, bool)
        or not isinstance(fields, dict)
        or not all(isinstance(text, str) for text in fields.values())
    ):
        raise _Unreadable("ttl, permanent or fields of the wrong type")
    try:
        values = {name: text.encode("utf-8", "surrogateescape") for name, text in fields.items()}
    except UnicodeEncodeError:
        # A lone surrogate that _dump never writes: the file was edited by hand.
        raise _Unreadable("a field holds a lone surrogate") from None
    return _Stored(ttl, permanent, values)


def _dump(ttl: int, permanent: bool, fields: dict[str, bytes]) -> bytes:
    # surrogateescape keeps any bytes exact through JSON, though values are UTF-8 in practice
    texts = {name: value.decode("utf-8", "surrogateescape") for name, value in fields.items()}
    record = {"v": 1, "ttl": ttl, "permanent": permanent, "fields": texts}
    return json.dumps(record, separators=(",", ":")).encode("ascii")


def _replace(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old record or the new one."""
    fd, temp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".", suffix=".tmp")
    try:
        with open(fd, "wb") as file:
            file.write(data)
        os.replace(temp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp)
        raise


def _store(path: str, write: Write) -> bool:
    """Apply ``write`` under the record's lock; False if the record it updates is gone."""
    if write.create:
        return _create(path, write)
    try:
        # Never O_CREAT: a record deleted by a logout or regenerate() stays deleted.
        file = _open_locked(path, create=False)
    except FileNotFoundError:
        return False
    with file:
        try:
            stored = _read_live(file)
        except _Unreadable:
            return False  # not a record of ours (the load logged it): left as it is
        if stored is None or not stored.fields:
            return False  # expired (left to the cleanup), or emptied by a crash
        fields = _merged(stored.fields, write)
        if not fields:
            # Under the lock: a field another writer added first is in ``fields`` now.
            os.unlink(path)
        elif write.permanent is None or write.ttl is None:
            _replace(path, _dump(stored.ttl, stored.permanent, fields))  # mtime: restarted
        else:
            _replace(path, _dump(write.ttl, write.permanent, fields))
    return True


def _create(path: str, write: Write) -> bool:
    fields = _merged({}, write)
    if not fields:
        return True  # nothing to create
    assert write.permanent is not None  # see Write
    assert write.ttl is not None
    try:
        file = _open_locked(path, create=True)
    except FileNotFoundError:
        # No directory: the first write, or it was removed while the app runs.
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        file = _open_locked(path, create=True)
    with file:
        # A new id has no record of ours: whatever is there is replaced whole.
        _replace(path, _dump(write.ttl, write.permanent, fields))
    return True


def _merged(fields: dict[str, bytes], write: Write) -> dict[str, bytes]:
    fields.update(write.changed)
    for name in write.removed:
        fields.pop(name, None)
    return fields


def _load(path: str, touch: bool) -> Record | None:
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed by the with block below
    except FileNotFoundError:
        return None
    with file:
        stored = _read_live(file)
        if stored is None:
            return None
        if touch:
            os.utime(file.fileno())  # on the file just read: a replacement is already fresh
    return Record(stored.fields, stored.permanent)


def _expires_at(path: str) -> float | None:
    """When the record at ``path`` expires (Unix time), read without its lock or a touch."""
    try:
        with open(path, "rb") as file:
            data = file.read()
            mtime_ns = os.fstat(file.fileno()).st_mtime_ns
    except FileNotFoundError:
        return None
    try:
        ttl = _parse(data).ttl if data else None
    except _Unreadable:
        return None
    return None if ttl is None else (mtime_ns + ttl * 10**9) / 10**9


def _delete(path: str) -> None:
    try:
        file = _open_locked(path, create=False)
    except FileNotFoundError:
        return
    with file:
        os.unlink(path)


def _cleanup(directory: str) -> None:
    """Remove every dead record and stale temp file in ``directory``; never raises."""
    try:
        for _ in _sweep(directory, dry_run=False):
            pass
    except Exception:
        logger.warning("session cleanup of %s failed", directory, exc_info=True)


def _sweep(directory: str, *, dry_run: bool) -> Generator[bool, None, None]:
    """Remove the dead records in ``directory``, yielding after each entry (True: a dead one).

    With ``dry_run``, only look: nothing is removed.
    """
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    yield _collect(entry, dry_run=dry_run)
                except FileNotFoundError:
                    pass  # a writer or another process's cleanup got there first
                except OSError:
                    logger.warning("session cleanup skipped %s", entry.path, exc_info=True)
    except FileNotFoundError:
        pass  # the directory was removed: nothing to clean until a write makes it again


def _take(sweep: Iterator[bool], limit: int) -> tuple[int, bool]:
    """Dead records from ``sweep`` until ``limit`` of them; and whether the sweep ended."""
    dead = 0
    for found in sweep:
        dead += found
        if dead >= limit:
            return dead, False
    return dead, True


def _count(directory: str, start: str) -> int:
    """Live records in ``directory`` whose file names start with ``start``."""
    live = 0
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if not (entry.name.startswith(start) and entry.name.endswith(_SUFFIX)):
                    continue
                try:
                    with open(entry.path, "rb") as file:
                        live += _is_live(file)
                except FileNotFoundError:
                    pass
    except FileNotFoundError:
        pass
    return live


def _collect(entry: os.DirEntry[str], *, dry_run: bool = False) -> bool:
    """Remove ``entry`` if it is a dead record or a temp file left by a crash.

    True if it is a dead record (removed, or with ``dry_run`` left as it is).
    """
    if entry.name.endswith(_SUFFIX):
        with open(entry.path, "rb") as file:
            if _is_live(file):
                return False  # most records are live: look before taking the lock
        if dry_run:
            return True
        with _open_locked(entry.path, create=False) as file:
            if not _is_live(file):  # still dead, now that no writer can revive it
                os.unlink(entry.path)
                return True
    elif (not dry_run and entry.name.endswith(".tmp")
          and time.time_ns() - entry.stat().st_mtime_ns > _STALE_TEMP_NS):
        os.unlink(entry.path)
    return False


def _is_live(file: IO[bytes]) -> bool:
    try:
        return _read_live(file) is not None
    except _Unreadable:
        return False  # a file of another shape in the store's directory: removed as dead
