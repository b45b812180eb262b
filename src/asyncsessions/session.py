"""The dict-like session object views see as ``flask.session`` / ``quart.session``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from flask.sessions import SessionMixin
from werkzeug.datastructures import CallbackDict

from .ids import new_id
from .serialization import loads

__all__ = ["MultiStoreSession", "NullSession", "StoreState", "UnavailableSession"]

logger = logging.getLogger("asyncsessions")

#: Types whose loaded value, if still the same object at save, serializes to what was loaded.
_IMMUTABLE = frozenset({str, int, float, bool, bytes, type(None)})


class _Lazy:
    """The value of a field not decoded yet: a field never read cannot have changed."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<not decoded>"


LAZY: Any = _Lazy()


@dataclass(slots=True)
class StoreState:
    """What one request knows about one store: its id, the loaded fields, its cookie."""

    #: The store's cookie name (for log lines).
    store: str = ""
    #: A server-side store (its cookie carries an id).
    server: bool = False
    sid: str | None = None
    #: The cookie value the request brought (``None``: no cookie).
    cookie: str | None = None
    #: Serialized fields as loaded, the baseline the save compares with.
    loaded: dict[str, bytes] = field(default_factory=dict)
    loaded_permanent: bool = False
    #: The record was in another library's format: the next write replaces it whole.
    loaded_foreign: bool = False
    #: The store failed under ``on_error="degrade"``: it is neither read nor written.
    failed: bool = False
    #: When a client-side store's cookie was signed (Unix time).
    issued_at: float | None = None
    #: Seconds the load took (``None``: no load happened); shown by the demo.
    load_seconds: float | None = None
    #: The id the next save gives a new (or regenerated) record, once ``session.sid`` asked.
    new_sid: str | None = None


class MultiStoreSession(CallbackDict[str, Any], SessionMixin):
    """One dict over every configured store.

    Changes are found at save by comparing serialized fields, so nested mutation is saved
    without ``session.modified = True``. ``accessed`` is set by every read, so the response
    gets ``Vary: Cookie``; setting ``modified = True`` forces every store holding fields to
    be written and its cookie re-sent, as Flask does.
    """

    def __init__(self, initial: dict[str, Any] | None, states: list[StoreState],
                 permanent: bool = False, *, raw: Mapping[str, bytes] | None = None) -> None:
        def on_update(self: MultiStoreSession) -> None:
            self._changed = True
            self.accessed = True

        # Loaded fields start undecoded: a request pays for the fields it reads, not for the
        # size of the session, and the save compares only fields that were decoded.
        if raw:
            initial = {**dict.fromkeys(raw, LAZY), **(initial or {})}
        super().__init__(initial, on_update)
        #: The serialized form of every loaded field (first store holding it wins).
        self.raw: Mapping[str, bytes] = raw or {}
        self._changed = False
        self.forced = False
        self.cleared = False
        self.saved = False
        self.accessed = False
        self.new = not any(state.loaded for state in states)
        self.states = states
        self._permanent = permanent
        self._regenerate = False
        #: Decoded immutable values and their serialized form, reused at save if untouched.
        self.reusable: dict[str, tuple[Any, bytes]] = {}
        #: Keys decoded, set or removed since the load, in order: the only fields a save has
        #: to serialize and compare (every other field is still the bytes that were loaded).
        self.touched: dict[Any, None] = {}
        #: A change the session could not attribute to keys: the save compares every field.
        self.untracked = False

    def _decode(self, key: str) -> Any:
        """Decode a loaded field; an unreadable one is dropped (and removed at the save)."""
        raw = self.raw[key]
        try:
            value = loads(raw)
        except ValueError:
            # A planted or corrupt value is never executed nor allowed to fail the request.
            store = next((s.store for s in self.states if key in s.loaded), "?")
            logger.warning("session store %r: dropped unreadable field %r", store, key)
            dict.__delitem__(self, key)
            self.touched[key] = None
            raise KeyError(key) from None
        dict.__setitem__(self, key, value)
        self.touched[key] = None
        if type(value) in _IMMUTABLE:
            self.reusable[key] = (value, raw)
        return value

    def _decode_all(self) -> None:
        for key in [k for k, v in dict.items(self) if v is LAZY]:
            with contextlib.suppress(KeyError):
                self._decode(key)

    # Flask's ``modified`` is both "a field changed" and the user's way to force a save; the
    # two are kept apart because only the forced one must rewrite unchanged stores.
    @property
    def modified(self) -> bool:
        return self._changed or self.forced

    @modified.setter
    def modified(self, value: bool) -> None:
        self.forced = bool(value)
        self._changed = self._changed and bool(value)

    # Flask keeps ``permanent`` as a hidden ``_permanent`` field; here it is the session's own
    # flag, stored beside the fields by every store, so it never needs routing.
    @property
    def permanent(self) -> bool:
        self.accessed = True
        return self._permanent

    @permanent.setter
    def permanent(self, value: bool) -> None:
        self.accessed = True
        if bool(value) != self._permanent:
            self._permanent = bool(value)
            self._changed = True

    def regenerate(self) -> None:
        """Give every server-side store a new id at save and delete the old records.

        Call it when the user logs in (or changes privilege) to defeat session fixation.
        """
        self._regenerate = True
        self._changed = self.accessed = True

    @property
    def regenerated(self) -> bool:
        return self._regenerate

    @property
    def sid(self) -> str | None:
        """The session id of the first server-side store (Flask-Session's ``session.sid``).

        A new session (or one to be regenerated) gets the id its save will use. ``None``
        when every store is a cookie store; :attr:`sids` has every store's id.
        """
        return next(iter(self.sids.values()), None)

    @property
    def sids(self) -> dict[str, str]:
        """Each server-side store's session id, by cookie name, in config order."""
        self.accessed = True
        ids = {}
        for state in self.states:
            if state.server:
                if state.sid is None or self._regenerate:
                    state.new_sid = state.new_sid or new_id()
                    ids[state.store] = state.new_sid
                else:
                    ids[state.store] = state.sid
        return ids

    def delete(self) -> None:
        """Remove every field and every stored record (flask-beaker-session's ``delete``)."""
        self.clear()

    # Every read marks the session accessed: a page that only asks ``"user" in session``
    # depends on the cookie as much as one that reads the value (CVE-2023-30861's class).
    def __getitem__(self, key: str) -> Any:
        self.accessed = True
        value = dict.__getitem__(self, key)
        return self._decode(key) if value is LAZY else value

    def get(self, key: str, default: Any = None) -> Any:
        self.accessed = True
        value = dict.get(self, key, default)
        if value is LAZY:
            try:
                return self._decode(key)
            except KeyError:
                return default
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self.touched[key] = None
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.touched[key] = None
        super().__delitem__(key)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self.accessed = True
        if self.__contains__(key):
            return self.__getitem__(key)
        self.touched[key] = None
        return super().setdefault(key, default)

    def pop(self, key: str, *default: Any) -> Any:
        self.accessed = True
        if dict.get(self, key) is LAZY:
            with contextlib.suppress(KeyError):
                self._decode(key)
        self.touched[key] = None
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, Any]:
        self.accessed = True
        self._decode_all()
        self.untracked = True
        return super().popitem()

    def update(self, *args: Any, **kwargs: Any) -> None:
        items = dict(*args, **kwargs)
        self.touched.update(dict.fromkeys(items))
        super().update(items)

    # dict's own ``|=`` bypasses the change callback (and so Flask's ``modified``).
    def __ior__(self, other: Any) -> MultiStoreSession:  # type: ignore[override]
        self.update(other)
        return self

    def clear(self) -> None:
        self.cleared = self.accessed = True
        self.untracked = True
        super().clear()

    def __contains__(self, key: object) -> bool:
        self.accessed = True
        # Decoded here so that a field that cannot be read is absent for `in` as for `get`.
        if isinstance(key, str) and dict.get(self, key) is LAZY:
            try:
                self._decode(key)
            except KeyError:
                return False
        return dict.__contains__(self, key)

    def __len__(self) -> int:
        self.accessed = True
        return super().__len__()

    # Iterating decodes every field: a key it yields must then read (an unreadable field is
    # dropped first), as `dict(session)` and `{**session}` read each key they are given.
    def __iter__(self) -> Iterator[str]:
        self.accessed = True
        self._decode_all()
        return super().__iter__()

    def __reversed__(self) -> Iterator[str]:
        self.accessed = True
        self._decode_all()
        return super().__reversed__()

    def keys(self) -> Any:
        self.accessed = True
        self._decode_all()
        return super().keys()

    def values(self) -> Any:
        self.accessed = True
        self._decode_all()
        return super().values()

    def items(self) -> Any:
        self.accessed = True
        self._decode_all()
        return super().items()

    def copy(self) -> dict[str, Any]:
        self.accessed = True
        self._decode_all()
        return dict(super().items())

    def __eq__(self, other: object) -> bool:
        self.accessed = True
        self._decode_all()
        return super().__eq__(other)

    def __ne__(self, other: object) -> bool:
        self.accessed = True
        self._decode_all()
        return super().__ne__(other)

    def __or__(self, other: Any) -> Any:
        return self.copy() | other

    def __ror__(self, other: Any) -> Any:
        return other | self.copy()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {dict.__repr__(self)}>"


class NullSession(MultiStoreSession):
    """The session when a store needs ``SECRET_KEY`` and the app has none, as in Flask.

    It reads as empty; the first change raises ``RuntimeError`` at that line of the view.
    """

    def __init__(self) -> None:
        super().__init__(None, [])

    def _fail(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise RuntimeError(
            "The session is unavailable because no secret key was set. Set the secret_key on "
            "the application to something unique and secret."
        )

    __setitem__ = __delitem__ = clear = pop = popitem = update = setdefault = _fail
    __ior__ = regenerate = _fail

    @property
    def permanent(self) -> bool:
        return False

    @permanent.setter
    def permanent(self, value: bool) -> None:
        self._fail()


class UnavailableSession(MultiStoreSession):
    """The session of a request whose store failed to load under ``on_error="raise"``.

    Any use raises the store's :class:`~asyncsessions.SessionBackendError` inside the view, so
    ``app.errorhandler(SessionBackendError)`` can answer it (e.g. with a 503) in Flask and
    Quart alike, views that never touch the session still work, and nothing is saved.
    """

    def __init__(self, error: Exception, states: list[StoreState]) -> None:
        super().__init__(None, states)
        self.error = error

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error

    __getitem__ = __setitem__ = __delitem__ = __iter__ = __len__ = __contains__ = _fail
    get = setdefault = pop = popitem = update = clear = keys = values = items = copy = _fail
    __eq__ = __ne__ = __or__ = __ror__ = __reversed__ = __ior__ = _fail
    permanent = property(_fail, _fail)
    regenerate = _fail
