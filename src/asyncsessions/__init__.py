"""Server-side sessions for Flask and Quart: several stores per app, loaded concurrently."""

from __future__ import annotations

from .backends.base import Backend, ClientSideBackend, Record, Store, Write
from .errors import SessionBackendError, SessionConfigWarning, SessionCookieTooLarge
from .extension import Session
from .serialization import SerializationError
from .session import MultiStoreSession, NullSession

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
    "Store",
    "Write",
]
__version__ = "0.1.0.dev0"
