"""Session ids: generated from ``secrets``, checked for shape, optionally signed in the cookie."""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence

from itsdangerous import BadSignature, Signer

from .signing import SIGNER_KWARGS, canonical

__all__ = ["IdCodec", "new_id"]

_ID_BYTES = 32
#: ``secrets.token_urlsafe(32)`` gives 43 characters of the URL-safe base64 alphabet.
_ID_RE = re.compile(r"[A-Za-z0-9_-]{43}")


def new_id() -> str:
    """A fresh, unguessable session id."""
    return secrets.token_urlsafe(_ID_BYTES)


def is_well_formed(sid: str) -> bool:
    """Whether ``sid`` has the exact shape of an id this library issues."""
    return _ID_RE.fullmatch(sid) is not None


class IdCodec:
    """Turns ids into cookie values and back, signing them when asked to."""

    def __init__(self, secret_keys: Sequence[str | bytes] | None, salt: str, *,
                 flask_session: bool = False) -> None:
        # itsdangerous signs with the last key and accepts any: Flask's rotation order.
        self._signer = (
            Signer(list(secret_keys), salt=salt, **SIGNER_KWARGS)  # type: ignore[arg-type]
            if secret_keys else None
        )
        #: Also read ids Flask-Session signed (HMAC-SHA1, its salt), so its users stay logged
        #: in; the next cookie is signed as ours.
        self._legacy = (
            Signer(list(secret_keys), salt="flask-session", key_derivation="hmac")  # type: ignore[arg-type]
            if secret_keys and flask_session else None
        )

    def encode(self, sid: str) -> str:
        """The cookie value for ``sid``."""
        if self._signer is None:
            return sid
        return self._signer.sign(sid).decode("ascii")

    def decode(self, value: str) -> str | None:
        """The id in a cookie value, or ``None`` if it is malformed or badly signed."""
        if self._signer is not None:
            if not canonical(value):
                return None
            try:
                value = self._signer.unsign(value).decode("ascii")
            except (BadSignature, UnicodeError):
                if self._legacy is None:
                    return None
                try:
                    value = self._legacy.unsign(value).decode("ascii")
                except (BadSignature, UnicodeError):
                    return None
        return value if is_well_formed(value) else None
