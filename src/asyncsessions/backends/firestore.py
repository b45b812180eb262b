"""Firestore store: one document per session, written field by field, expiry checked on load.

Layout of the document ``{collection}/{escaped key}``::

    f          map   escaped session field name -> value (UTF-8 JSON text as a string)
    expires    timestamp when the session ends; the field for a Firestore TTL policy
    ttl        int   the lifetime in seconds the session was last given
    permanent  bool

A document of any other shape (another library's, or damaged) reads as no session, with a
warning, and is left as it is; only a new session's write replaces it, with one ``set``.

Any other write is one ``update`` of the changed and removed fields under ``f`` by field path,
so two requests that change different fields of one session both survive. Firestore checks
no content, so the store checks what it read: a write applies only to a live record of this
store's shape that a load (or a write) of this process has just seen, and is conditional on
what it relies on. A plain write needs the document to still exist (a session deleted by a
concurrent logout stays deleted). One that removes fields, or restarts the lifetime, needs it
unchanged since it was seen (its ``update_time``): whether it leaves fields, and which
lifetime the record has, is known only then; otherwise the store reads the document again
and retries. A write that leaves no field deletes the document, on the same condition.

Expiry: Firestore deletes expired documents only if the user configures a TTL policy on
``expires`` for the collection group (once per project)::

    gcloud firestore fields ttls update expires --collection-group=sessions --enable-ttl

and even then up to 24 hours late, so ``load()`` treats a document whose ``expires`` has
passed as absent. Without the policy expired documents are never read, only kept until
``flask sessions purge`` deletes them (each only if unchanged since its query found it).

Sliding refresh: Firestore has no read-and-touch, so refreshing on every read would turn each
read-only request into a read plus a write. ``load(touch=True)`` rewrites ``expires`` only
once more than half the lifetime has elapsed: a read-only request costs one read, and one
update at most once per half lifetime (a write that keeps the flag restarts it the same
way). The update carries the read's ``update_time`` as a precondition, so it never
resurrects a session deleted meanwhile nor overrides the expiry of a write that came in
between (that write set its own).

Field values are indexed by default; exempting ``f`` saves index writes per request::

    gcloud firestore indexes fields update f --collection-group=sessions --disable-indexes
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar

from google.api_core.exceptions import FailedPrecondition, NotFound
from google.cloud import firestore
from google.cloud.firestore_v1._helpers import WriteOption
from google.cloud.firestore_v1.async_collection import AsyncCollectionReference
from google.cloud.firestore_v1.async_document import AsyncDocumentReference
from google.cloud.firestore_v1.base_document import DocumentSnapshot
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from .base import ID_LENGTH, ClientBackend, Record, Write

__all__ = ["FirestoreBackend"]

if TYPE_CHECKING:
    Snapshot = DocumentSnapshot[AsyncDocumentReference]
else:  # generic only since google-cloud-firestore 2.34.1
    Snapshot = DocumentSnapshot

# Names Firestore refuses as document ids or map keys (once "/" is escaped).
_RESERVED = re.compile(r"__.*__|\.\.?|", re.DOTALL)
_MAX_ID_BYTES = 1500
# The last time a timestamp holds; a lifetime past it (nobody configures one) ends there.
_LAST = datetime.max.replace(tzinfo=timezone.utc)
#: Records remembered between a load and the write that follows it; more are forgotten.
_SEEN_LIMIT = 10_000
#: Reads and retries of one write that keeps meeting a concurrent change.
_ATTEMPTS = 8


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


class _NotOurs(Exception):
    """A document this store did not write; the message says what gave it away."""


@dataclass(frozen=True, slots=True)
class _Seen:
    """A live record of this store as a load or a write of this process last found it."""

    update_time: datetime
    expires: datetime
    ttl: int
    names: frozenset[str]  # escaped, as in "f"


def _parse(snapshot: Snapshot) -> tuple[Record, _Seen] | None:
    """The record in ``snapshot``, live or not; ``None`` if absent, :class:`_NotOurs` if no
    record of this store."""
    data = snapshot.to_dict()
    if data is None or snapshot.update_time is None:
        return None
    expires, ttl, permanent = data.get("expires"), data.get("ttl"), data.get("permanent")
    if not isinstance(expires, datetime):
        raise _NotOurs("expires is not a timestamp")
    if not (isinstance(ttl, int) and not isinstance(ttl, bool) and ttl > 0):
        raise _NotOurs("ttl is not a positive whole number")
    if not isinstance(permanent, bool):
        raise _NotOurs("permanent is not true or false")
    stored = data.get("f", {})  # a write that only set the flag may have found none
    if not isinstance(stored, dict):
        raise _NotOurs("f is not a map")
    fields: dict[str, bytes] = {}
    for name, value in stored.items():
        if _escape(_unescape(name)) != name:
            raise _NotOurs("a name in f is not escaped")
        if isinstance(value, str):
            value = value.encode("utf-8")
        elif not isinstance(value, bytes):
            raise _NotOurs("a value in f is neither text nor bytes")
        fields[_unescape(name)] = value
    seen = _Seen(snapshot.update_time, expires, ttl, frozenset(stored))
    return Record(fields, permanent), seen


def _expiry(now: datetime, ttl: int) -> datetime:
    try:
        return now + timedelta(seconds=ttl)
    except OverflowError:
        return _LAST


def _due(seen: _Seen, now: datetime) -> bool:
    """Whether the record's lifetime should restart: more than half of it is gone."""
    return (seen.expires - now).total_seconds() < seen.ttl / 2 and (
        _expiry(now, seen.ttl) > seen.expires
    )


def _unchanged(seen: _Seen) -> WriteOption:
    return firestore.AsyncClient.write_option(last_update_time=seen.update_time)


def _field(name: str) -> str:
    return FieldPath("f", name).to_api_repr()


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
        for part in parts:
            # Firestore refuses these ids only at the first request.
            if _RESERVED.fullmatch(part) or len(part.encode("utf-8")) > _MAX_ID_BYTES:
                raise ValueError(f"collection: {part!r} is no id Firestore takes (not . or .."
                                 f", not like __x__, at most {_MAX_ID_BYTES} bytes)")
        self._collection = collection
        if client is None:
            self._make: Callable[[], firestore.AsyncClient] = (
                lambda: firestore.AsyncClient(project=project, database=database)
            )
        elif project is not None or database is not None:
            raise ValueError("give client, or project and database, not both")
        elif isinstance(client, (firestore.AsyncClient, firestore.Client)):
            self._make = _cloner(client)
            project, database = client.project, client._database
        else:
            raise TypeError(
                "client must be google.cloud.firestore.AsyncClient, e.g. "
                "firestore.AsyncClient(project='my-project'), "
                f"not {type(client).__qualname__}"
            )
        # A project left to the environment is the same for every store of the app.
        self.location = (f"firestore://{project or '(project from the environment)'}/"
                         f"{database or '(default)'}/{collection}")
        self._seen: dict[str, _Seen] = {}

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

    async def _read(self, document: AsyncDocumentReference) -> Snapshot:
        # Not document.get(): it stops reading the stream after the document, and the open
        # call can outlive its event loop, failing in another one when the connection drops.
        [snapshot] = [s async for s in self.client.get_all([document])]
        return snapshot

    def _remember(self, key: str, seen: _Seen | None) -> None:
        if seen is None:
            self._seen.pop(key, None)
            return
        if len(self._seen) >= _SEEN_LIMIT:
            self._seen.clear()  # a forgotten record costs its next write one read
        self._seen[key] = seen

    async def load(self, key: str, *, touch: bool) -> Record | None:
        document = self._document(key)
        snapshot = await self._read(document)
        try:
            found = _parse(snapshot)
        except _NotOurs as exc:
            self._remember(key, None)
            self.unreadable(key, str(exc))
            return None
        now = datetime.now(timezone.utc)
        if found is None or found[1].expires <= now:
            self._remember(key, None)
            return None
        record, seen = found
        if touch and _due(seen, now):
            expires = _expiry(now, seen.ttl)
            try:
                result = await document.update({"expires": expires}, option=_unchanged(seen))
            except (FailedPrecondition, NotFound):
                pass  # written or deleted since the read: that write set its own expiry
            else:
                seen = dataclasses.replace(seen, update_time=result.update_time,
                                           expires=expires)
        self._remember(key, seen)
        return record

    async def store(self, key: str, write: Write) -> bool:
        document = self._document(key)
        if not write.create:
            return await self._update(key, document, write)
        if not write.changed:
            await self.delete(key)  # a record without fields is none
            return True
        # A new id: whatever is under it is another program's, replaced whole.
        assert write.ttl is not None
        stored = {_escape(name): _to_firestore(value) for name, value in write.changed.items()}
        expires = _expiry(datetime.now(timezone.utc), write.ttl)
        result = await document.set(
            {"f": stored, "expires": expires, "ttl": write.ttl, "permanent": write.permanent}
        )
        self._remember(key, _Seen(result.update_time, expires, write.ttl, frozenset(stored)))
        return True

    async def _update(self, key: str, document: AsyncDocumentReference, write: Write) -> bool:
        seen, attempts = self._seen.get(key), 0
        while True:
            now = datetime.now(timezone.utc)
            if seen is None or seen.expires <= now:
                try:
                    found = _parse(await self._read(document))
                except _NotOurs:
                    found = None  # the load that let this write through has warned
                if found is None or found[1].expires <= now:
                    self._remember(key, None)
                    return False  # deleted, expired or not ours: nothing to update
                seen = found[1]
            try:
                self._remember(key, await _apply(document, seen, write, now))
                return True
            except (FailedPrecondition, NotFound):
                attempts += 1
                if attempts == _ATTEMPTS:
                    raise
                seen = None  # changed or deleted since it was seen: look again

    async def delete(self, key: str) -> None:
        self._remember(key, None)
        await self._document(key).delete()

    # -- the CLI's (see base.py) ---------------------------------------------------------------

    purges_expired = True  # what a TTL policy has not deleted yet, or all without one

    async def count(self, prefix: str) -> int | None:
        # A range on the id with one on expires would need a composite index: the live
        # ids are streamed (names only) and matched here.
        live = self._sessions().where(filter=FieldFilter("expires", ">", _now())).select([])
        return sum([_unescape(snapshot.id).startswith(prefix)
                    async for snapshot in live.stream()])

    async def expires_at(self, key: str) -> float | None:
        try:
            found = _parse(await self._read(self._document(key)))
        except _NotOurs:
            return None
        return None if found is None else found[1].expires.timestamp()

    async def purge(self, prefix: str, *, batch: int, dry_run: bool) -> AsyncIterator[int]:
        # Every dead document of the collection, whatever its prefix. What dies while it
        # runs is left for the next run, so that it ends.
        before = _now()
        dead = (self._sessions().where(filter=FieldFilter("expires", "<", before))
                .order_by("expires").limit(batch))
        last: Snapshot | None = None
        while True:
            page = [snapshot async for snapshot in
                    (dead if last is None else dead.start_after(last)).stream()]
            if not page:
                return
            last = page[-1]
            now = _now()
            ours = [snapshot for snapshot in page if _dead(snapshot, now)]
            if dry_run:
                removed = len(ours)
            else:
                removed = sum(await asyncio.gather(*map(_delete_unchanged, ours)))
            if removed:
                yield removed
            if len(page) < batch:
                return

    def _sessions(self) -> AsyncCollectionReference:
        return self.client.collection(self._collection)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _dead(snapshot: Snapshot, now: datetime) -> bool:
    """Whether ``snapshot`` is a record of this store that expired by ``now``."""
    try:
        found = _parse(snapshot)
    except _NotOurs:
        return False  # another program's document: never deleted here
    return found is not None and found[1].expires <= now


async def _delete_unchanged(snapshot: Snapshot) -> bool:
    """Delete the document if it is as ``snapshot`` found it (a write since revived it)."""
    try:
        await snapshot.reference.delete(
            option=firestore.AsyncClient.write_option(last_update_time=snapshot.update_time))
    except (FailedPrecondition, NotFound):
        return False
    return True


async def _apply(
    document: AsyncDocumentReference, seen: _Seen, write: Write, now: datetime
) -> _Seen | None:
    """Apply ``write`` to the record as ``seen``; what it is now, if that is known."""
    changed = {_escape(name): _to_firestore(value) for name, value in write.changed.items()}
    removed = {_escape(name) for name in write.removed}
    names = (seen.names - removed) | changed.keys()
    if not names:
        await document.delete(option=_unchanged(seen))
        return None
    update: dict[str, Any] = {_field(name): value for name, value in changed.items()}
    update.update((_field(name), firestore.DELETE_FIELD) for name in removed - changed.keys())
    ttl, expires = seen.ttl, seen.expires
    # Removals decide whether fields are left, and a restart needs the record's own
    # lifetime: both only hold for the record as seen. Anything else needs it to exist.
    exact = bool(removed)
    if write.permanent is not None and write.ttl is not None:
        ttl, expires = write.ttl, _expiry(now, write.ttl)
        update.update(expires=expires, ttl=ttl, permanent=write.permanent)
    elif _due(seen, now):
        expires = _expiry(now, ttl)
        update["expires"] = expires
        exact = True
    if not update:
        update["expires"] = expires  # nothing to change, but it must still exist
    result = await document.update(update, option=_unchanged(seen) if exact else None)
    # Which fields a write of fields alone left is known only if none came meanwhile.
    return _Seen(result.update_time, expires, ttl, frozenset(names)) if exact else None


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
