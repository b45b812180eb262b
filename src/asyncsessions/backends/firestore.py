"""Firestore store: one document per session, written field by field, expiry checked on load.

Layout of the document ``{collection}/{escaped key}``::

    f          map   escaped session field name -> value (UTF-8 JSON text as a string)
    expires    timestamp when the session ends; the field for a Firestore TTL policy
    ttl        int   the lifetime in seconds the session was last written with
    permanent  bool

Every ``store()`` is one ``set(..., merge=True)``: changed fields are set and removed ones
deleted under ``f`` by field path, so two requests that change different fields of one
session both survive, and ``expires``/``ttl``/``permanent`` are rewritten in the same write.

Expiry: Firestore deletes expired documents only if the user configures a TTL policy on
``expires`` for the collection group (once per project)::

    gcloud firestore fields ttls update expires --collection-group=sessions --enable-ttl

and even then up to 24 hours late, so ``load()`` treats a document whose ``expires`` has
passed as absent. Without the policy expired documents are never read, only kept.

Sliding refresh: Firestore has no read-and-touch, so refreshing on every read would turn each
read-only request into a read plus a write. ``load(touch=True)`` rewrites ``expires`` only
once more than half the lifetime has elapsed: a read-only request costs one read, and one
update at most once per half lifetime. The update carries the read's ``update_time`` as a
precondition, so it never resurrects a session deleted meanwhile nor overrides the expiry of
a write that came in between (that write set its own).

Field values are indexed by default; exempting ``f`` saves index writes per request::

    gcloud firestore indexes fields update f --collection-group=sessions --disable-indexes
"""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

from google.api_core.exceptions import FailedPrecondition, NotFound
from google.cloud import firestore
from google.cloud.firestore_v1.async_document import AsyncDocumentReference

from .base import ID_LENGTH, ClientBackend, Record

__all__ = ["FirestoreBackend"]

# Names Firestore refuses as document ids or map keys (once "/" is escaped).
_RESERVED = re.compile(r"__.*__|\.\.?|", re.DOTALL)
_MAX_ID_BYTES = 1500


def _escape(name: str) -> str:
    """``name`` as a Firestore document id or map key; :func:`_unescape` undoes it.

    ``%`` and ``/`` are percent-encoded; a reserved name gets a trailing ``%``, which
    escaped text cannot otherwise end with.
    """
    text = name.replace("%", "%25").replace("/", "%2F")
    return text + "%" if _RESERVED.fullmatch(text) else text


def _unescape(text: str) -> str:
    return urllib.parse.unquote(text.removesuffix("%"))


def _to_firestore(value: bytes) -> str | bytes:
    # Strings keep sessions readable in the console; values are opaque, so allow any bytes.
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def _from_firestore(stored: Any) -> dict[str, bytes]:
    # Anything else was planted or corrupted: skip it rather than fail the request.
    if not isinstance(stored, dict):
        return {}
    return {
        _unescape(name): value.encode("utf-8") if isinstance(value, str) else value
        for name, value in stored.items()
        if isinstance(value, (str, bytes))
    }


class FirestoreBackend(ClientBackend[firestore.AsyncClient]):
    """Sessions in Google Cloud Firestore, through ``firestore.AsyncClient``.

    ``client`` may be a ``firestore.AsyncClient`` or a sync ``firestore.Client``: its project,
    credentials, database and emulator host are reused for one ``AsyncClient`` per event loop.
    Otherwise ``project`` and ``database`` (defaults: inferred from the environment, and
    ``FIRESTORE_EMULATOR_HOST`` selects the emulator). ``collection`` may be a path to a
    subcollection, like ``'apps/web/sessions'``.
    """

    max_key_length: ClassVar[int | None] = _MAX_ID_BYTES

    def __init__(
        self,
        *,
        client: Any = None,
        project: str | None = None,
        database: str | None = None,
        collection: str = "sessions",
    ) -> None:
        super().__init__()
        for option, value, example in (("project", project, "my-project"),
                                       ("database", database, "(default)")):
            if value is not None and (not isinstance(value, str) or not value):
                raise TypeError(f"{option} must be a non-empty str like {example!r}")
        if not isinstance(collection, str):
            raise TypeError(f"collection must be a str like 'sessions', not "
                            f"{type(collection).__name__}")
        parts = collection.split("/")
        if "" in parts or len(parts) % 2 == 0:
            raise ValueError("collection must be a collection id like 'sessions' or a path "
                             f"like 'apps/web/sessions', not {collection!r}")
        self._collection = collection
        if client is None:
            self._make: Callable[[], firestore.AsyncClient] = (
                lambda: firestore.AsyncClient(project=project, database=database)
            )
        elif project is not None or database is not None:
            raise ValueError("give client, or project and database, not both")
        elif isinstance(client, (firestore.AsyncClient, firestore.Client)):
            self._make = _cloner(client)
        else:
            raise TypeError(
                "client must be google.cloud.firestore.AsyncClient, e.g. "
                "firestore.AsyncClient(project='my-project'), "
                f"not {type(client).__qualname__}"
            )

    def check_key_prefix(self, prefix: str) -> None:
        # Measure the escaped id: "/" and "%" grow threefold, and ids of "_" can be reserved.
        longest = _escape(prefix + "_" * ID_LENGTH)
        if len(longest.encode("utf-8")) > _MAX_ID_BYTES:
            raise ValueError(f"too long: document ids must fit in {_MAX_ID_BYTES} bytes "
                             "once '/' and '%' are escaped as %2F and %25")

    def _new_client(self) -> firestore.AsyncClient:
        return self._make()

    async def _close_client(self, client: firestore.AsyncClient) -> None:
        # AsyncClient.close() only closes an HTTP session Firestore never opens; the gRPC
        # channel belongs to the transport, which exists once the client has been used.
        api: Any = getattr(client, "_firestore_api_internal", None)
        if api is not None:
            await api.transport.close()

    def _document(self, key: str) -> AsyncDocumentReference:
        return self.client.collection(self._collection).document(_escape(key))

    async def load(self, key: str, *, touch: bool) -> Record | None:
        document = self._document(key)
        # Not document.get(): it stops reading the stream after the document, and the open
        # call can outlive its event loop, failing in another one when the connection drops.
        [snapshot] = [s async for s in self.client.get_all([document])]
        data = snapshot.to_dict()
        if data is None:
            return None
        now = datetime.now(timezone.utc)
        expires, ttl = data.get("expires"), data.get("ttl")
        if not isinstance(expires, datetime) or expires <= now:
            return None
        if touch and isinstance(ttl, int) and expires - now < timedelta(seconds=ttl / 2):
            # Written or deleted since the read: that write set its own expiry, or none is due.
            with contextlib.suppress(FailedPrecondition, NotFound):
                await document.update(
                    {"expires": now + timedelta(seconds=ttl)},
                    option=firestore.AsyncClient.write_option(
                        last_update_time=snapshot.update_time
                    ),
                )
        return Record(_from_firestore(data.get("f")), data.get("permanent") is True)

    async def store(
        self,
        key: str,
        changed: Mapping[str, bytes],
        removed: Collection[str],
        *,
        permanent: bool,
        ttl: int,
    ) -> None:
        fields: dict[str, Any] = {_escape(k): _to_firestore(v) for k, v in changed.items()}
        fields.update((_escape(k), firestore.DELETE_FIELD) for k in removed)
        document: dict[str, Any] = {
            "expires": datetime.now(timezone.utc) + timedelta(seconds=ttl),
            "ttl": ttl,
            "permanent": permanent,
        }
        if fields:  # an empty map would replace the stored one, fields and all
            document["f"] = fields
        await self._document(key).set(document, merge=True)

    async def delete(self, key: str) -> None:
        await self._document(key).delete()


def _cloner(
    client: firestore.AsyncClient | firestore.Client,
) -> Callable[[], firestore.AsyncClient]:
    settings = {
        "project": client.project,
        "credentials": client._credentials,
        "database": client._database,
        "client_info": client._client_info,
        "client_options": client._client_options,
    }
    # A client picks the emulator from the environment when made: keep the given one's choice.
    emulator = client._emulator_host

    def clone() -> firestore.AsyncClient:
        new = firestore.AsyncClient(**settings)
        new._emulator_host = emulator
        return new

    return clone
