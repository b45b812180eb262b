"""Signed-cookie store: the session travels in the cookie, signed with the app's secret key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

from ..serialization import join_fields, split_fields
from ..signing import SIGNER_KWARGS, canonical
from .base import ClientSideBackend, Record

__all__ = ["SecureCookieBackend"]


class _Raw:
    """itsdangerous serializer that passes bytes through: fields are serialized already."""

    @staticmethod
    def dumps(obj: Any) -> Any:
        return obj

    @staticmethod
    def loads(data: Any) -> Any:
        return data


class SecureCookieBackend(ClientSideBackend):
    """The session in a cookie, HMAC-signed by itsdangerous (salt per cookie name).

    Reads accept any key in ``SECRET_KEY_FALLBACKS``; writes sign with ``SECRET_KEY``. The
    data is readable by the client (only signed, not encrypted): keep secrets server-side.
    """

    def __init__(self) -> None:
        self._salt = "asyncsessions"
        self._cache: tuple[tuple[str | bytes, ...], URLSafeTimedSerializer] | None = None

    def bind(self, *, name: str, instance_path: str) -> None:
        super().bind(name=name, instance_path=instance_path)
        self._salt = f"asyncsessions.cookie.{name}"

    def _serializer(self, secret_keys: Sequence[str | bytes]) -> URLSafeTimedSerializer:
        keys = tuple(secret_keys)
        cached = self._cache
        if cached is not None and cached[0] == keys:
            return cached[1]
        serializer: URLSafeTimedSerializer = URLSafeTimedSerializer(
            list(keys), salt=self._salt, serializer=_Raw,  # type: ignore[arg-type]
            signer_kwargs=SIGNER_KWARGS,
        )
        self._cache = (keys, serializer)
        return serializer

    def encode(self, fields: Mapping[str, bytes], *, permanent: bool,
               secret_keys: Sequence[str | bytes]) -> str:
        # The permanent flag rides in a field name no session key can take (it starts with NUL).
        payload = join_fields({**fields, "\0p": b"1"} if permanent else fields)
        token: Any = self._serializer(secret_keys).dumps(payload)
        return token if isinstance(token, str) else token.decode("ascii")

    def decode(
        self, value: str, *, max_age: int, secret_keys: Sequence[str | bytes]
    ) -> tuple[Record, float] | None:
        if not canonical(value):
            return None
        try:
            payload, signed_at = self._serializer(secret_keys).loads(
                value, max_age=max_age, return_timestamp=True
            )
            fields = split_fields(payload)
        except (BadSignature, ValueError, UnicodeError, RecursionError):
            return None
        permanent = fields.pop("\0p", None) is not None
        return Record(fields, permanent), signed_at.timestamp()
