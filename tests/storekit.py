"""Shorthands for the tests that call a store directly: stored values and creating writes."""

from __future__ import annotations

from typing import Any

from asyncsessions.backends.base import Write
from asyncsessions.serialization import dumps


def v(value: Any) -> bytes:
    """``value`` serialized as the engine hands it to a store."""
    return dumps(value)


def create(fields: dict[str, bytes], *, permanent: bool = False, ttl: int = 600) -> Write:
    """The write of a new session holding ``fields``."""
    return Write(fields, (), permanent, ttl, create=True)
