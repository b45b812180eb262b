"""HMAC-SHA256 signing settings shared by signed cookies and ids, and one spelling per signature."""

from __future__ import annotations

import hashlib
from typing import Any

from itsdangerous import BadData
from itsdangerous.encoding import base64_decode, base64_encode

__all__ = ["SIGNER_KWARGS", "canonical"]

#: itsdangerous ``Signer`` options: HMAC with SHA-256 (its default digest is SHA-1).
SIGNER_KWARGS: dict[str, Any] = {"key_derivation": "hmac", "digest_method": hashlib.sha256}


def canonical(token: str, sep: str = ".") -> bool:
    """Whether the signature ending ``token`` is spelled exactly as itsdangerous writes it.

    Base64 decoding forgives padding, the ``+/`` alphabet, stray characters and the unused
    bits of the last character, so one valid signature has many spellings. Accepting only one
    keeps anything keyed on the cookie string (deny-lists, caches) from being bypassed.
    """
    signature = token.rpartition(sep)[2]
    try:
        return base64_encode(base64_decode(signature)).decode("ascii") == signature
    except BadData:
        return False
