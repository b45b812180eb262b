"""Server-side sessions for Flask and Quart: several stores per app, loaded concurrently."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .backends.base import Backend, ClientSideBackend, Record, Store, Write
from .errors import SessionBackendError, SessionConfigWarning, SessionCookieTooLarge
from .extension import Session, revoke_sessions, revoke_sessions_async
from .serialization import SerializationError
from .session import MultiStoreSession, NullSession

if TYPE_CHECKING:
    from .adapters.asgi import SessionMiddleware

__all__ = [
    "Backend",
    "ClientSideBackend",
    "MultiStoreSession",
    "NullSession",
    "Record",
    "SerializationError",
    "Session",
    "SessionBackendError",
    "SessionConfigWarning",
    "SessionCookieTooLarge",
    "SessionMiddleware",
    "Store",
    "Write",
    "revoke_sessions",
    "revoke_sessions_async",
]
__version__ = "0.1.0.dev0"


def __getattr__(name: str) -> Any:
    # Imported on first use: Flask and Quart apps never load the ASGI middleware.
    if name == "SessionMiddleware":
        from .adapters.asgi import SessionMiddleware

        return SessionMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
