"""Exceptions raised by asyncsessions."""

from __future__ import annotations

__all__ = ["SessionBackendError", "SessionConfigWarning", "SessionCookieTooLarge"]


class SessionBackendError(RuntimeError):
    """A session store failed (unreachable, timed out, refused the data).

    ``store`` is the cookie name of the failing store. Flask and Quart answer it with a 500;
    map it to a 503 with an error handler (see the README).
    """

    def __init__(self, store: str, message: str) -> None:
        super().__init__(f"session store {store!r}: {message}")
        self.store = store


class SessionCookieTooLarge(ValueError):
    """A client-side session outgrew what browsers keep in one cookie."""

    def __init__(self, store: str, size: int, limit: int) -> None:
        super().__init__(
            f"session cookie {store!r} would be {size} bytes, over the {limit}-byte limit "
            "browsers keep: move large fields to a server-side store with session_fields"
        )
        self.store = store
        self.size = size


class SessionConfigWarning(UserWarning):
    """A session setting that has no effect or contradicts another, warned at ``init_app``."""
