"""Datastore store: one entity per session, merged in a transaction, expiry checked on load.

Through google-cloud-datastore's generated ``DatastoreAsyncClient``: Google's own asyncio
gRPC client, released with the sync ``datastore.Client`` whose settings it reuses.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import itertools
import logging
import random
import re
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar
from urllib.parse import urlparse

import grpc
from google.api_core import client_options
from google.api_core.exceptions import Aborted, GoogleAPICallError
from google.cloud import datastore
from google.cloud.datastore_v1.services.datastore import DatastoreAsyncClient
from google.cloud.datastore_v1.services.datastore.transports import (
    DatastoreGrpcAsyncIOTransport,
)
from google.cloud.datastore_v1.types import datastore as api
from google.cloud.datastore_v1.types import entity as model
from google.cloud.datastore_v1.types import query as queries

from .base import ID_LENGTH, ClientBackend, Record, Write

__all__ = ["DatastoreBackend"]

logger = logging.getLogger(__name__)

#: A raw protobuf ``Entity`` (read without proto-plus wrapping every value; no stubs).
EntityPb = Any

#: Property names of the record's own metadata; session fields are ``"f:" + name``, which
#: can neither be one of these nor empty nor reserved (``__x__``), so names need no escaping.
_EXPIRES, _TTL, _PERMANENT, _FIELD = "expires", "ttl", "permanent", "f:"
_MAX_NAME_BYTES = 1500
_RESERVED = re.compile(r"__.*__", re.DOTALL)
_NAMESPACE = re.compile(r"[0-9A-Za-z._-]{0,100}")
# The last time a timestamp holds; a lifetime past it (nobody configures one) ends there.
_LAST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
#: Transactions of one write that keeps meeting concurrent ones, and the first back-off.
_ATTEMPTS = 12
_BACKOFF = 0.01
#: Seconds a write waits for the writes of its session ahead of it in this process. A turn
#: lasts one transaction, so this only bounds the wait behind a write stuck in its own.
_PATIENCE = 30.0
#: A cleanup runs after every this many new sessions and deletes at most _CLEANUP_BATCH.
_CLEANUP_EVERY = 100
_CLEANUP_BATCH = 300
#: Keys a count reads per query; entities one commit may delete at most (Datastore's limit).
_PAGE = 1000
_MAX_COMMIT = 500
_NO_MORE_RESULTS = queries.QueryResultBatch.MoreResultsType.NO_MORE_RESULTS
_GREATER_THAN = queries.PropertyFilter.Operator.GREATER_THAN
_TRANSACTIONAL = api.CommitRequest.Mode.TRANSACTIONAL
_NON_TRANSACTIONAL = api.CommitRequest.Mode.NON_TRANSACTIONAL


class _NotOurs(Exception):
    """An entity this store did not write; the message says what gave it away."""


class _Retry(Exception):
    """A transaction the server aborted for a conflict; the next one says it replaces it."""

    def __init__(self, aborted: Aborted, transaction: bytes) -> None:
        super().__init__(str(aborted))
        self.aborted = aborted
        self.transaction = transaction


class _Waiter:
    """A write waiting for its turn on its own event loop."""

    __slots__ = ("future", "granted", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.granted = False  # under the mutex: the turn is this waiter's

    def grant(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class _Turns:
    """Writes of one key take turns, across this process's event loops and threads.

    Only to spare the server conflicts (the transactions keep the writes correct without
    it): a write that waited ``patience`` seconds goes ahead without its turn.
    """

    def __init__(self, patience: float) -> None:
        self._patience = patience
        self._mutex = threading.Lock()
        self._queues: dict[str, collections.deque[_Waiter]] = {}

    @contextlib.asynccontextmanager
    async def turn(self, key: str) -> AsyncIterator[None]:
        waiter = None
        with self._mutex:
            queue = self._queues.get(key)
            if queue is None:
                self._queues[key] = collections.deque()  # free: the turn is ours
            else:
                waiter = _Waiter(asyncio.get_running_loop())
                queue.append(waiter)
        if waiter is not None and not await self._wait(key, waiter):
            yield  # out of patience: go ahead, holding no turn to hand on
            return
        try:
            yield
        finally:
            self._next(key)

    async def _wait(self, key: str, waiter: _Waiter) -> bool:
        """Whether the turn came (``False``: patience ran out, and the waiter left)."""
        try:
            await asyncio.wait((waiter.future,), timeout=self._patience)
        except BaseException:
            if self._leave(key, waiter):
                self._next(key)  # cancelled just as the turn came: hand it on
            raise
        return self._leave(key, waiter)

    def _leave(self, key: str, waiter: _Waiter) -> bool:
        """Whether ``waiter`` has the turn; if not, it leaves the queue."""
        with self._mutex:
            if waiter.granted:
                return True
            with contextlib.suppress(ValueError):
                self._queues[key].remove(waiter)
            return False

    def _next(self, key: str) -> None:
        with self._mutex:
            queue = self._queues[key]
            while queue:
                waiter = queue.popleft()
                try:
                    waiter.loop.call_soon_threadsafe(waiter.grant)
                except RuntimeError:
                    continue  # its event loop is closed: nobody waits there any more
                waiter.granted = True
                return
            del self._queues[key]


@dataclass(frozen=True, slots=True)
class _Stored:
    """A record of this store as an entity holds it, live or not."""

    fields: dict[str, bytes]
    permanent: bool
    ttl: int
    expires: datetime


def _escape(key: str) -> str:
    """``key`` as an entity name: Datastore reserves names like ``__x__`` (and refuses them).

    Those get a ``~`` appended, and so do names that end with one, so that no two keys
    share a name; every other key (the default ``session:`` prefix's) is its own name.
    """
    return key + "~" if key.endswith("~") or _RESERVED.fullmatch(key) else key


def _parse(entity: EntityPb) -> _Stored:
    """The record in ``entity``; :class:`_NotOurs` if it is no record of this store."""
    fields: dict[str, bytes] = {}
    expires = ttl = permanent = None
    for name, value in entity.properties.items():
        kind = value.WhichOneof("value_type")
        if name.startswith(_FIELD):
            if kind == "string_value":
                fields[name[len(_FIELD):]] = value.string_value.encode("utf-8")
            elif kind == "blob_value":
                fields[name[len(_FIELD):]] = value.blob_value
            else:
                raise _NotOurs("a field is neither text nor bytes")
        elif name == _EXPIRES and kind == "timestamp_value":
            expires = value.timestamp_value.ToDatetime(tzinfo=timezone.utc)
        elif name == _TTL and kind == "integer_value" and value.integer_value > 0:
            ttl = value.integer_value
        elif name == _PERMANENT and kind == "boolean_value":
            permanent = value.boolean_value
        else:
            raise _NotOurs("a property is not one of this store's, or not of its type")
    if expires is None or ttl is None or permanent is None:
        raise _NotOurs("expires, ttl or permanent is missing")
    return _Stored(fields, permanent, ttl, expires)


def _value(value: bytes) -> model.Value:
    # Text keeps sessions readable in the console; values are opaque, so allow any bytes.
    # Never indexed: no query reads them, and index entries cost a write each.
    try:
        return model.Value(string_value=value.decode("utf-8"), exclude_from_indexes=True)
    except UnicodeDecodeError:
        return model.Value(blob_value=value, exclude_from_indexes=True)


def _entity(key: model.Key, fields: dict[str, bytes], *, permanent: bool, ttl: int,
            expires: datetime) -> model.Entity:
    properties = {_FIELD + name: _value(value) for name, value in fields.items()}
    properties[_EXPIRES] = model.Value(timestamp_value=expires)
    properties[_TTL] = model.Value(integer_value=ttl, exclude_from_indexes=True)
    properties[_PERMANENT] = model.Value(boolean_value=permanent, exclude_from_indexes=True)
    return model.Entity(key=key, properties=properties)


def _expiry(now: datetime, ttl: int) -> datetime:
    try:
        return min(now + timedelta(seconds=ttl), _LAST)
    except OverflowError:
        return _LAST


def _due(stored: _Stored, now: datetime) -> bool:
    """Whether the record's lifetime should restart: more than half of it is gone."""
    return (stored.expires - now).total_seconds() < stored.ttl / 2 and (
        _expiry(now, stored.ttl) > stored.expires
    )


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class _Settings:
    """What every event loop's client is made from: a sync client's resolved settings."""

    project: str
    database: str
    namespace: str
    credentials: Any
    client_info: Any
    client_options: Any
    #: ``host:port`` of an emulator (plain gRPC, no credentials), else ``None``.
    emulator: str | None

    @classmethod
    def of(cls, client: datastore.Client) -> _Settings:
        # The sync client has chosen the endpoint: DATASTORE_EMULATOR_HOST, when it was set
        # at its creation, made it an http:// URL, which its own gRPC setup also takes to
        # mean an insecure channel without credentials.
        base = urlparse(client.base_url)
        options = client._client_options
        if isinstance(options, dict):
            options = client_options.from_dict(options)
        if options is not None and options.api_endpoint:
            # The sync client takes a URL there, the generated one a host (and port).
            options = copy.copy(options)
            options.api_endpoint = base.netloc
        return cls(
            project=client.project,
            database=_database_id(client.database),
            namespace=client.namespace or "",
            credentials=client._credentials,
            client_info=client._client_info,
            client_options=options,
            emulator=base.netloc if base.scheme != "https" else None,
        )

    def client(self) -> DatastoreAsyncClient:
        if self.emulator is not None:
            channel = grpc.aio.insecure_channel(self.emulator)
            transport = DatastoreGrpcAsyncIOTransport(channel=channel,
                                                      client_info=self.client_info)
            return DatastoreAsyncClient(transport=transport, client_info=self.client_info)
        return DatastoreAsyncClient(credentials=self.credentials,
                                    client_options=self.client_options,
                                    client_info=self.client_info)


def _database_id(database: str | None) -> str:
    # The API names the default database "", the console and gcloud "(default)".
    return "" if database in (None, "(default)") else database


class DatastoreBackend(ClientBackend[DatastoreAsyncClient]):
    """Sessions in Google Cloud Datastore (Firestore in Datastore mode).

    ``client`` may be a sync ``google.cloud.datastore.Client``: its project, namespace,
    database, credentials, client options and endpoint (an emulator's, if it chose one) are
    reused for one ``DatastoreAsyncClient`` per event loop. Otherwise ``project``,
    ``namespace`` and ``database`` (defaults: from the environment, the default namespace and
    database; ``DATASTORE_EMULATOR_HOST`` selects the emulator). Entities are of ``kind``.

    One entity per session, named by the session's key::

        expires    timestamp  when the session ends (indexed, for cleanup and a TTL policy)
        ttl        integer    the lifetime in seconds the session was last given
        permanent  boolean
        f:<name>   string or blob, one per session field (UTF-8 JSON text as a string)

    Only ``expires`` is indexed: a write costs no index entries for the fields, and a value
    may be as large as the entity (1 MiB). An entity of any other shape (another library's,
    or damaged) reads as no session, with a warning, and is left as it is; only a new
    session's write, one non-transactional upsert, replaces it.

    Any other write is a read-write transaction: begin, look the entity up, check it is a
    live record of this store, apply the changed and removed fields to what it holds (and
    restart its lifetime), commit. Concurrent writers of one session conflict, and the one
    told ``ABORTED`` runs its transaction again on what the others committed, so every
    field of every writer survives; the writes of one session in one process take turns
    first (on any event loop or thread), so only other processes' conflict. A write that
    leaves no field deletes the entity in the same transaction; one that finds it gone,
    expired or foreign writes nothing.

    Expiry: ``load()`` treats an entity whose ``expires`` has passed as absent. A read is
    one lookup; a refreshing read more than half-way through the lifetime also restarts it
    (in a transaction, like a write), so a read-only request costs one lookup, and a
    transaction at most once per half lifetime. Dead entities are deleted by this store:
    after every 100 new sessions a background task asks for the keys of up to 300 entities
    whose ``expires`` has passed, and deletes, in one transaction, those still dead and of
    this store's shape; ``flask sessions purge`` runs the same deletion over all of them.
    Datastore's TTL policy can do it too (up to a day late)::

        gcloud firestore fields ttls update expires --collection-group=Session --enable-ttl
    """

    max_key_length: ClassVar[int | None] = _MAX_NAME_BYTES - 1  # see check_key_prefix

    def __init__(
        self,
        *,
        client: Any = None,
        project: str | None = None,
        namespace: str | None = None,
        kind: str = "Session",
        database: str | None = None,
    ) -> None:
        super().__init__()
        for option, value, example in (("project", project, "my-project"),
                                       ("database", database, "(default)")):
            if value is not None and (not isinstance(value, str) or not value):
                raise TypeError(f"{option} must be a non-empty str like {example!r}")
        if namespace is not None:
            if not isinstance(namespace, str):
                raise TypeError(f"namespace must be a str like 'sessions', not "
                                f"{type(namespace).__name__}")
            if not _NAMESPACE.fullmatch(namespace) or _RESERVED.fullmatch(namespace):
                raise ValueError("namespace must be up to 100 letters, digits, '.', '_' or "
                                 f"'-' and not like '__x__', not {namespace!r}")
        if not isinstance(kind, str):
            raise TypeError(f"kind must be a str like 'Session', not {type(kind).__name__}")
        if not kind or _RESERVED.fullmatch(kind) or len(kind.encode("utf-8")) > 1500:
            raise ValueError(f"kind must be a name of 1 to 1500 bytes not like '__x__', "
                             f"not {kind!r}")
        self._kind = kind
        if client is None:
            self._given: datastore.Client | None = None
            self._options = {"project": project, "namespace": namespace, "database": database}
        elif project is not None or namespace is not None or database is not None:
            raise ValueError("give client, or project, namespace and database, not both")
        elif isinstance(client, datastore.Client):
            self._given = client
            project, namespace, database = client.project, client.namespace, client.database
        else:
            raise TypeError(
                "client must be google.cloud.datastore.Client, e.g. "
                "datastore.Client(project='my-project'), "
                f"not {type(client).__qualname__}"
            )
        self._settings: _Settings | None = None
        self._settings_lock = threading.Lock()
        # A project left to the environment is the same for every store of the app.
        self.location = (f"datastore://{project or '(project from the environment)'}/"
                         f"{database or '(default)'}/{namespace or '(default)'}/{kind}")
        self._creates = itertools.count(1)
        self._cleaning = False
        #: Cleanup skips entities before this ``expires`` (foreign ones it must not delete).
        self._swept: datetime | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._turns = _Turns(_PATIENCE)

    def check_key_prefix(self, prefix: str) -> None:
        # One byte more for the escape a reserved name may need.
        if len(prefix.encode("utf-8")) + ID_LENGTH + 1 > _MAX_NAME_BYTES:
            raise ValueError(f"too long: entity names must fit in {_MAX_NAME_BYTES} bytes, "
                             f"with {ID_LENGTH} for the id and one for an escape")

    # -- clients ---------------------------------------------------------------------------------

    def _resolved(self) -> _Settings:
        # Resolved once, at first use: the sync client finds the project, the credentials
        # and the emulator in the environment the way Google documents, without connecting.
        if self._settings is None:
            with self._settings_lock:
                if self._settings is None:
                    given = self._given or datastore.Client(  # type: ignore[no-untyped-call]
                        **self._options
                    )
                    self._settings = _Settings.of(given)
        return self._settings

    def _new_client(self) -> DatastoreAsyncClient:
        return self._resolved().client()

    async def _close_client(self, client: DatastoreAsyncClient) -> None:
        # The gRPC channel is the transport's; one never used closes without a goodbye.
        await client.transport.close()  # type: ignore[no-untyped-call]

    def _key(self, name: str) -> model.Key:
        settings = self._resolved()
        partition = model.PartitionId(project_id=settings.project,
                                      database_id=settings.database,
                                      namespace_id=settings.namespace)
        return model.Key(partition_id=partition,
                         path=[model.Key.PathElement(kind=self._kind, name=_escape(name))])

    async def _lookup(
        self, client: DatastoreAsyncClient, keys: list[model.Key], transaction: bytes = b""
    ) -> list[EntityPb]:
        """The entities found under ``keys`` (in no particular order)."""
        settings = self._resolved()
        options = api.ReadOptions(transaction=transaction) if transaction else None
        found: list[EntityPb] = []
        while keys:
            response = await client.lookup(request=api.LookupRequest(
                project_id=settings.project, database_id=settings.database, keys=keys,
                read_options=options,
            ))
            raw = api.LookupResponse.pb(response)
            found += [result.entity for result in raw.found]
            # The server may leave some keys for another call (a large batch).
            keys = [model.Key.wrap(key) for key in raw.deferred]
        return found

    async def _commit(
        self, client: DatastoreAsyncClient, mutations: list[api.Mutation],
        transaction: bytes = b"",
    ) -> None:
        settings = self._resolved()
        # The transaction is a oneof: even an empty id would name one.
        request = api.CommitRequest(
            project_id=settings.project, database_id=settings.database, mutations=mutations,
            **({"mode": _TRANSACTIONAL, "transaction": transaction} if transaction
               else {"mode": _NON_TRANSACTIONAL}),
        )
        await client.commit(request=request)

    async def _begin(self, client: DatastoreAsyncClient, previous: bytes = b"") -> bytes:
        settings = self._resolved()
        # A retry names the aborted transaction it replaces, as the API asks, so that the
        # service can give it that one's priority and a retried write is not starved.
        mode = api.TransactionOptions.ReadWrite(previous_transaction=previous)
        response = await client.begin_transaction(request=api.BeginTransactionRequest(
            project_id=settings.project, database_id=settings.database,
            transaction_options=api.TransactionOptions(read_write=mode),
        ))
        return response.transaction

    async def _rollback(self, client: DatastoreAsyncClient, transaction: bytes) -> None:
        settings = self._resolved()
        # Failing means it ended already (aborted, or expired): it holds nothing any more.
        with contextlib.suppress(GoogleAPICallError):
            await client.rollback(request=api.RollbackRequest(
                project_id=settings.project, database_id=settings.database,
                transaction=transaction,
            ))

    def _background(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the store contract ------------------------------------------------------------------------

    async def load(self, key: str, *, touch: bool) -> Record | None:
        client = self.client
        found = await self._lookup(client, [self._key(key)])
        if not found:
            return None
        try:
            stored = _parse(found[0])
        except _NotOurs as exc:
            self.unreadable(key, str(exc))
            return None
        now = _now()
        if stored.expires <= now:
            return None
        if touch and _due(stored, now):
            await self._refresh(client, key)
        return Record(stored.fields, stored.permanent)

    async def _refresh(self, client: DatastoreAsyncClient, key: str) -> None:
        """Restart the lifetime of a live record whose lifetime is more than half gone."""
        entity_key = self._key(key)

        def refreshed(stored: _Stored, now: datetime) -> api.Mutation | None:
            if not _due(stored, now):
                return None  # a write in between restarted it
            return api.Mutation(upsert=_entity(
                entity_key, stored.fields, permanent=stored.permanent, ttl=stored.ttl,
                expires=_expiry(now, stored.ttl),
            ))

        # Aborted: a concurrent write holds it, and that write restarts the lifetime itself.
        with contextlib.suppress(Aborted):
            await self._transaction(client, key, entity_key, refreshed, attempts=1)

    async def store(self, key: str, write: Write) -> bool:
        client = self.client
        entity_key = self._key(key)
        if not write.create:
            return await self._transaction(client, key, entity_key, lambda stored, now: _apply(
                entity_key, stored, write, now))
        if not write.changed:
            await self.delete(key)  # a record without fields is none
            return True
        # A new id: whatever is under it is another program's, replaced whole.
        assert write.permanent is not None  # see Write
        assert write.ttl is not None
        entity = _entity(entity_key, dict(write.changed), permanent=write.permanent,
                         ttl=write.ttl, expires=_expiry(_now(), write.ttl))
        await self._commit(client, [api.Mutation(upsert=entity)])
        if next(self._creates) % _CLEANUP_EVERY == 0 and not self._cleaning:
            self._cleaning = True
            self._background(self._cleanup())
        return True

    async def _transaction(
        self, client: DatastoreAsyncClient, key: str, entity_key: model.Key,
        change: Callable[[_Stored, datetime], api.Mutation | None], *,
        attempts: int = _ATTEMPTS,
    ) -> bool:
        """Run ``change(stored, now) -> Mutation | None`` on the live record in a transaction.

        ``False`` if there is no live record of this store under the key (nothing written);
        a ``None`` mutation writes nothing either. Retried on conflicts, with back-off.
        """
        # Transactions on one entity conflict on the server: under pessimistic concurrency
        # (a database setting, and the emulator's) each holds a read lock that the other's
        # commit waits for until one is aborted; under optimistic, all commits but one
        # fail. So the writes of one session in this process take turns and reach the
        # server one at a time; only other processes' still conflict, and retry.
        async with self._turns.turn(key):
            previous = b""
            for attempt in itertools.count(1):
                try:
                    return await self._attempt(client, entity_key, change, previous)
                except _Retry as retry:
                    if attempt >= attempts:
                        raise retry.aborted from None
                    previous = retry.transaction
                await asyncio.sleep(random.uniform(0, _BACKOFF * 2 ** min(attempt, 6)))
        raise AssertionError("unreachable")

    async def _attempt(
        self, client: DatastoreAsyncClient, entity_key: model.Key,
        change: Callable[[_Stored, datetime], api.Mutation | None], previous: bytes,
    ) -> bool:
        transaction = await self._begin(client, previous)
        ended = False
        try:
            found = await self._lookup(client, [entity_key], transaction)
            now = _now()
            try:
                stored = _parse(found[0]) if found else None
            except _NotOurs:
                stored = None  # the load that let this write through has warned
            mutation = None
            if stored is not None and stored.expires > now:
                mutation = change(stored, now)
            if mutation is None:
                ended = True
                await self._rollback(client, transaction)
                return stored is not None and stored.expires > now
            await self._commit(client, [mutation], transaction)
            ended = True
            return True
        except Aborted as exc:
            ended = True  # the server ended it
            raise _Retry(exc, transaction) from exc
        finally:
            if not ended:
                # Cancelled or failed mid-way: release what it holds without waiting.
                self._background(self._rollback(client, transaction))

    async def delete(self, key: str) -> None:
        await self._commit(self.client, [api.Mutation(delete=self._key(key))])

    # -- cleanup -----------------------------------------------------------------------------------

    async def _cleanup(self) -> None:
        """Delete up to _CLEANUP_BATCH dead entities of this store (in the background).

        Why here, and so: the emulator and a database without a TTL policy never delete
        them, and a task started by every 100th new session keeps up with the sessions that
        die without a timer or a thread, costing the request that starts it nothing.
        """
        try:
            await self._sweep(self.client, _CLEANUP_BATCH, _now(), self._swept)
        except Aborted:
            pass  # contention with another process's cleanup: a later run deletes them
        except Exception:
            logger.warning("session cleanup in %s failed", self.location, exc_info=True)
        finally:
            self._cleaning = False

    async def _sweep(
        self, client: DatastoreAsyncClient, limit: int, before: datetime,
        since: datetime | None, *, cursor: bytes = b"", dry_run: bool = False,
    ) -> tuple[int, bytes | None]:
        """Delete up to ``limit`` entities that died before ``before``, from ``cursor`` on.

        How many went (``dry_run``: would go), and the cursor after those looked at
        (``None``: no more). The query finds candidates; the transaction deletes only those
        still dead and of this store's shape, so it neither undoes a write that came in
        between nor touches another program's entities (which later runs then skip: the
        query starts at ``since``).
        """
        dead = [_before(before)] + ([] if since is None else [_since(since)])
        keys, more = await self._keys(client, dead, limit, cursor)
        if not keys:
            return 0, None
        transaction = b"" if dry_run else await self._begin(client)
        ended = dry_run
        try:
            found = await self._lookup(client, keys, transaction)
            now = _now()
            deletes, foreign = [], []
            for entity in found:
                try:
                    expires = _parse(entity).expires
                except _NotOurs:
                    foreign.append(_foreign_expiry(entity))
                    continue
                if expires <= now:
                    deletes.append(api.Mutation(delete=model.Key.wrap(entity.key)))
            if dry_run:
                pass
            elif deletes:
                await self._commit(client, deletes, transaction)
            else:
                await self._rollback(client, transaction)
            ended = True
        finally:
            if not ended:
                self._background(self._rollback(client, transaction))
        stuck = [at for at in foreign if at is not None]
        if stuck:
            self._swept = max(stuck)
        return len(deletes), more

    async def _keys(
        self, client: DatastoreAsyncClient, filters: list[queries.Filter], limit: int,
        cursor: bytes,
    ) -> tuple[list[model.Key], bytes | None]:
        """Up to ``limit`` keys of the kind's entities matching all ``filters``, from
        ``cursor`` on, and the cursor after them (``None``: no more)."""
        settings = self._resolved()
        query = queries.Query(
            kind=[queries.KindExpression(name=self._kind)],
            projection=[queries.Projection(property=queries.PropertyReference(name="__key__"))],
            filter=queries.Filter(composite_filter=queries.CompositeFilter(
                op=queries.CompositeFilter.Operator.AND, filters=filters,
            )),
            limit=limit,
            start_cursor=cursor,
        )
        response = await client.run_query(request=api.RunQueryRequest(
            project_id=settings.project, database_id=settings.database,
            partition_id=model.PartitionId(project_id=settings.project,
                                           database_id=settings.database,
                                           namespace_id=settings.namespace),
            query=query,
        ))
        batch = queries.QueryResultBatch.pb(response.batch)
        keys = [model.Key.wrap(result.entity.key) for result in batch.entity_results]
        done = batch.more_results == _NO_MORE_RESULTS or not keys
        return keys, None if done else batch.end_cursor

    # -- the CLI's (see base.py) -------------------------------------------------------------------

    purges_expired = True  # the background cleanup's entities, all at once

    async def count(self, prefix: str) -> int | None:
        # Only expires is indexed (a key range with it would need a composite index): the
        # live keys are read a page at a time and matched here. Names only ever gain a
        # suffix when escaped, so a key's name starts with the prefix when the key does.
        client, live = self.client, [_expires_filter(_GREATER_THAN, _now())]
        found, cursor = 0, b""
        while True:
            keys, more = await self._keys(client, live, _PAGE, cursor)
            found += sum(key.path[-1].name.startswith(prefix) for key in keys)
            if more is None:
                return found
            cursor = more

    async def expires_at(self, key: str) -> float | None:
        found = await self._lookup(self.client, [self._key(key)])
        try:
            return _parse(found[0]).expires.timestamp() if found else None
        except _NotOurs:
            return None

    async def purge(self, prefix: str, *, batch: int, dry_run: bool) -> AsyncIterator[int]:
        # Every dead entity of the kind, whatever its prefix, as the cleanup deletes (a TTL
        # policy does too, up to a day late; the emulator never). What dies while it runs
        # is left for the next run, so that it ends.
        client, before, since = self.client, _now(), self._swept
        cursor: bytes | None = b""
        while cursor is not None:
            removed, cursor = await self._sweep(client, min(batch, _MAX_COMMIT), before, since,
                                                cursor=cursor, dry_run=dry_run)
            if removed:
                yield removed


def _apply(key: model.Key, stored: _Stored, write: Write, now: datetime) -> api.Mutation:
    """The mutation that applies ``write`` to the live record ``stored``."""
    fields = {name: value for name, value in stored.fields.items()
              if name not in write.removed}
    fields.update(write.changed)
    if not fields:
        return api.Mutation(delete=key)
    if write.permanent is not None and write.ttl is not None:
        permanent, ttl = write.permanent, write.ttl
    else:  # keep the flag another request may have set, and restart the record's own ttl
        permanent, ttl = stored.permanent, stored.ttl
    return api.Mutation(upsert=_entity(key, fields, permanent=permanent, ttl=ttl,
                                       expires=_expiry(now, ttl)))


def _before(now: datetime) -> queries.Filter:
    return _expires_filter(queries.PropertyFilter.Operator.LESS_THAN, now)


def _since(at: datetime) -> queries.Filter:
    return _expires_filter(queries.PropertyFilter.Operator.GREATER_THAN_OR_EQUAL, at)


def _expires_filter(op: int, at: datetime) -> queries.Filter:
    return queries.Filter(property_filter=queries.PropertyFilter(
        property=queries.PropertyReference(name=_EXPIRES), op=op,
        value=model.Value(timestamp_value=at),
    ))


def _foreign_expiry(entity: EntityPb) -> datetime | None:
    """The ``expires`` timestamp a foreign entity has, which put it among the dead."""
    value = entity.properties.get(_EXPIRES)
    if value is None or value.WhichOneof("value_type") != "timestamp_value":
        return None
    at: datetime = value.timestamp_value.ToDatetime(tzinfo=timezone.utc)
    return at


