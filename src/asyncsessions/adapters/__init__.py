"""Framework adapters: Flask's sync session interface (via the bridge) and Quart's async one."""

from __future__ import annotations

from typing import Any


def secret_keys(app: Any) -> tuple[str | bytes, ...]:
    """The app's signing keys, oldest first, current last (itsdangerous' rotation order)."""
    key = app.secret_key
    if not key:
        return ()
    fallbacks = app.config.get("SECRET_KEY_FALLBACKS") or ()
    return (*fallbacks, key)
