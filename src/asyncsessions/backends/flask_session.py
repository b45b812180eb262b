"""Flask-Session's live records, read without ever unpickling: its msgpack or JSON, via msgspec.

Flask-Session 0.7 and later keep a session as one value: its whole session dict encoded by
msgspec, as msgpack (its default) or JSON (``SESSION_SERIALIZATION_FORMAT = "json"``), with
the permanent flag as the key ``_permanent``. :func:`decode` turns such a value into a
:class:`~.base.Record` with ``foreign=True``: every other key a field holding
:func:`~asyncsessions.serialization.dumps` of its value, ``_permanent`` the record's flag. So
a session reads back with the values Flask-Session itself would have given (msgpack keeps
bytes and aware datetimes; JSON gives their strings, as it did for Flask-Session).

Older records (Flask-Session < 0.7, Flask-Session2, cachelib) are pickles: a pickle runs
whatever code its bytes name, and anyone who could write to the store could run code in the
app, so they are never unpickled. They read as no session, with one log line.

msgspec is imported only by a store that reads Flask-Session's records: setting its
``reads_flask_session`` (see :class:`ReadsFlaskSession`) checks that it is installed.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..serialization import SerializationError, dumps
from .base import Record, Store

__all__ = ["EXTRA", "ReadsFlaskSession", "decode", "read", "require"]

#: The extra that installs msgspec.
EXTRA = "flask-session"
# Pickle protocols 2 to 5 start with the PROTO opcode; Flask-Session < 0.7 and Flask-Session2
# wrote protocol 4 or 5. A lone 0x80 is msgpack's empty map.
_PICKLE = b"\x80"

# msgspec's msgpack and JSON decoders and its DecodeError, once imported.
_decoders: tuple[Any, Any] | None = None
_DecodeError: type[Exception] = Exception


def require() -> None:
    """Import msgspec now; ``ImportError`` naming the extra if it is missing."""
    global _decoders, _DecodeError
    if _decoders is not None:
        return
    try:
        msgspec = importlib.import_module("msgspec")
    except ImportError as exc:
        raise ImportError(
            "read_flask_session: reading Flask-Session's live sessions needs msgspec: "
            f"pip install 'asyncsessions[{EXTRA}]' ({exc})"
        ) from exc
    _decoders = (msgspec.msgpack.Decoder(), msgspec.json.Decoder())
    _DecodeError = msgspec.DecodeError


class ReadsFlaskSession:
    """Mixin for a store that can read Flask-Session's records.

    Its ``reads_flask_session`` (set at ``init_app`` by ``read_flask_session``) imports
    msgspec when switched on, so a missing extra fails there, not at the first request.
    """

    _reads_flask_session: bool = False

    @property
    def reads_flask_session(self) -> bool:
        return self._reads_flask_session

    @reads_flask_session.setter
    def reads_flask_session(self, on: bool) -> None:
        if on:
            require()
        self._reads_flask_session = bool(on)


def decode(data: bytes) -> Record | None:
    """The session in a value Flask-Session wrote; ``None`` if it holds no field.

    ``ValueError`` saying why if it is not one: a pickle (never unpickled), neither msgpack
    nor JSON, not a dict, or a key or value no session here can hold.
    """
    require()
    if data[:1] == _PICKLE and len(data) > 1:
        raise ValueError("a pickle (Flask-Session < 0.7, Flask-Session2 or cachelib), "
                         "never unpickled")
    session = _parse(bytes(data))
    if not isinstance(session, dict):
        raise ValueError(f"msgpack or JSON, but a {type(session).__name__}, not a session dict")
    permanent = bool(session.pop("_permanent", False))
    fields: dict[str, bytes] = {}
    for name, value in session.items():
        if not isinstance(name, str):
            raise ValueError(f"a session key is a {type(name).__name__}, not a str")
        if name.startswith("\0"):
            raise ValueError("a session key starts with NUL")
        try:
            name.encode("utf-8")
            fields[name] = dumps(value)
        except (UnicodeEncodeError, SerializationError, RecursionError) as exc:
            raise ValueError(f"session key {name[:40]!r}: {exc}") from None
    return Record(fields, permanent, foreign=True) if fields else None


def _parse(data: bytes) -> Any:
    assert _decoders is not None
    errors = []
    # msgpack first, Flask-Session's default. Neither reads the other: a JSON document is
    # msgpack with trailing bytes, and msgpack's maps start with bytes JSON cannot.
    for decoder in _decoders:
        try:
            return decoder.decode(data)
        except _DecodeError as exc:
            errors.append(str(exc))
    raise ValueError(f"neither msgpack nor JSON ({'; '.join(errors)})")


def read(store: Store, key: str, data: bytes) -> Record | None:
    """:func:`decode`, or ``None`` with the store's log line for a value it cannot read."""
    try:
        return decode(data)
    except ValueError as exc:
        store.unreadable(key, str(exc))
        return None
