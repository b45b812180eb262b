"""The ``null`` store (Flask-Session2's): it keeps nothing, and says so when asked to."""

from __future__ import annotations

from .base import Backend, Record, Write

__all__ = ["NullBackend"]


class NullBackend(Backend):
    """A store that keeps no session: every read finds none, every write is an error.

    For an app (or one of its stores) that must run without sessions, such as a service
    behind a proxy that answers from cookies alone, or a deployment whose real store is
    switched off: a request that only reads the session sees it empty, and a request that
    sets a field fails loudly instead of logging the user out at the next request. With
    ``on_error="degrade"`` such a write is logged and dropped instead.
    """

    may_evict = True  # nothing written is ever found again

    async def load(self, key: str, *, touch: bool) -> Record | None:
        return None

    async def store(self, key: str, write: Write) -> bool:
        raise RuntimeError(
            "the 'null' session store keeps nothing, so the session was not saved: "
            "configure a real store (another session_type) to keep sessions"
        )

    async def delete(self, key: str) -> None:
        pass  # nothing is ever kept, so nothing is left to remove
