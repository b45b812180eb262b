"""The dict-like session object views see as ``flask.session`` / ``quart.session``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask.sessions import SessionMixin
from werkzeug.datastructures import CallbackDict

__all__ = ["MultiStoreSession", "StoreState"]


@dataclass(slots=True)
class StoreState:
    """What one request knows about one store: its id, the loaded fields, its cookie."""

    sid: str | None = None
    #: The cookie value the request brought (``None``: no cookie).
    cookie: str | None = None
    #: Serialized fields as loaded, the baseline the save compares with.
    loaded: dict[str, bytes] = field(default_factory=dict)
    loaded_permanent: bool = False
    #: The store failed under ``on_error="degrade"``: it is neither read nor written.
    failed: bool = False
    #: When a client-side store's cookie was signed (Unix time).
    issued_at: float | None = None
    #: Seconds the load took (``None``: no load happened); shown by the demo.
    load_seconds: float | None = None


class MultiStoreSession(CallbackDict[str, Any], SessionMixin):
    """One dict over every configured store.

    Changes are found at save by comparing serialized fields, so nested mutation is saved
    without ``session.modified = True``; ``modified`` and ``accessed`` keep Flask's meaning.
    """

    def __init__(self, initial: dict[str, Any] | None, states: list[StoreState],
                 permanent: bool = False) -> None:
        def on_update(self: MultiStoreSession) -> None:
            self.modified = True
            self.accessed = True

        super().__init__(initial, on_update)
        self.modified = False
        self.accessed = False
        self.new = not any(state.loaded for state in states)
        self.states = states
        self._permanent = permanent
        self._regenerate = False
        #: Loaded immutable values and their serialized form, reused at save if untouched.
        self.reusable: dict[str, tuple[Any, bytes]] = {}

    # Flask keeps ``permanent`` as a hidden ``_permanent`` field; here it is the session's own
    # flag, stored beside the fields by every store, so it never needs routing.
    @property
    def permanent(self) -> bool:
        return self._permanent

    @permanent.setter
    def permanent(self, value: bool) -> None:
        if bool(value) != self._permanent:
            self._permanent = bool(value)
            self.modified = True

    def regenerate(self) -> None:
        """Give every server-side store a new id at save and delete the old records.

        Call it when the user logs in (or changes privilege) to defeat session fixation.
        """
        self._regenerate = True
        self.modified = True

    @property
    def regenerated(self) -> bool:
        return self._regenerate

    def __getitem__(self, key: str) -> Any:
        self.accessed = True
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.accessed = True
        return super().get(key, default)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self.accessed = True
        return super().setdefault(key, default)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {dict.__repr__(self)}>"


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
    permanent = property(_fail, _fail)
    regenerate = _fail
