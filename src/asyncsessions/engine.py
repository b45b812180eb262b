"""The framework-free core: plan loads, merge stores, diff fields, run all store I/O at once.

Each request goes through three steps per direction so that the adapters can skip the event
loop when nothing needs I/O: a synchronous plan (cookies → ops), the async ops run together
in one anyio task group, and a synchronous finish (records → session, or cookies → response).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import anyio

from .backends.base import Backend, ClientSideBackend, Record, Write, run_without_loop
from .config import StoreConfig
from .errors import SessionBackendError, SessionCookieTooLarge
from .ids import IdCodec, new_id
from .index import plan_index
from .serialization import SerializationError, dumps
from .session import LAZY, MultiStoreSession, NullSession, StoreState, UnavailableSession

__all__ = ["Engine", "Op", "OpenPlan", "SavePlan"]

logger = logging.getLogger("asyncsessions")

#: Browsers drop cookies whose name, value and attributes exceed 4096 bytes.
COOKIE_LIMIT = 4093
_ROUTE_CACHE_SIZE = 4096
_ABSENT: Any = object()


@dataclass(slots=True, eq=False)
class Op:
    """One backend call of a request."""

    store: StoreConfig
    state: StoreState
    kind: Literal["load", "store", "delete"]
    key: str
    write: Write | None = None
    result: Record | None = None
    #: What ``store`` answered: ``False`` when the record it updates was gone.
    written: bool = True
    error: Exception | None = None
    seconds: float = 0.0
    #: A load that must not restart the record's expiry (``touch=False``).
    touch: bool = True
    #: The ops that must follow this one, given its result (run in the next round).
    then: Callable[[Op], list[Op]] | None = None
    followed: list[Op] = field(default_factory=list)


@dataclass(slots=True)
class Cookie:
    """A cookie to set (or, with ``value`` ``None``, to delete) once the store I/O is done."""

    store: StoreConfig
    value: str | None
    permanent: bool
    #: The write this cookie announces: no cookie when it failed or found its record gone.
    after: Op | None = None


@dataclass(slots=True)
class OpenPlan:
    """What opening a session has to do: the loads, and the per-store state they fill."""

    states: list[StoreState]
    ops: list[Op]
    #: A store needs ``SECRET_KEY`` and the app has none: the session is a ``NullSession``.
    null: bool = False


@dataclass(slots=True)
class SavePlan:
    """What a save has to do: store I/O first, then cookies."""

    ops: list[Op]
    cookies: list[Cookie]
    vary: bool


class Engine:
    """Open and save multi-store sessions for one app."""

    def __init__(self, stores: tuple[StoreConfig, ...], *, refresh_each_request: bool,
                 permanent: bool = False) -> None:
        self.stores = stores
        self.refresh = refresh_each_request
        #: Whether a new session starts permanent (``SESSION_PERMANENT``).
        self.permanent = permanent
        self.has_server_side = any(isinstance(s.backend, Backend) for s in stores)
        self.indexed = any(s.index_by for s in stores)
        #: Stores that sign with the app's key: without one the session is a NullSession.
        self.needs_secret_key = any(
            isinstance(s.backend, ClientSideBackend) or s.use_signer for s in stores
        )
        self._included = frozenset().union(
            *(s.fields.names for s in stores if s.fields.mode == "include")
        )
        self._routes: dict[str, tuple[int, ...]] = {}
        self._owned_cache: dict[frozenset[str], tuple[frozenset[str], ...]] = {}
        self._unrouted_warned: set[str] = set()
        self._codec_cache: tuple[tuple[str | bytes, ...], list[IdCodec]] | None = None

    # -- open ---------------------------------------------------------------------------------

    def plan_open(
        self, cookies: Mapping[str, str], secret_keys: tuple[str | bytes, ...]
    ) -> OpenPlan:
        """Decode the cookies; the loads the server-side stores need."""
        if self.needs_secret_key and not secret_keys:
            return OpenPlan([], [], null=True)
        states: list[StoreState] = []
        ops: list[Op] = []
        codecs = self._id_codecs(secret_keys)
        for store, codec in zip(self.stores, codecs, strict=True):
            state = StoreState(store.name, isinstance(store.backend, Backend),
                               cookie=cookies.get(store.name) or None)
            states.append(state)
            if state.cookie is None:
                continue
            backend = store.backend
            if isinstance(backend, ClientSideBackend):
                self._decode_cookie(store, backend, state, secret_keys)
                continue
            sid = codec.decode(state.cookie)
            if sid is not None:
                state.sid = sid
                ops.append(Op(store, state, "load", store.key_prefix + sid))
        return OpenPlan(states, ops)

    def _decode_cookie(self, store: StoreConfig, backend: ClientSideBackend,
                       state: StoreState, secret_keys: tuple[str | bytes, ...]) -> None:
        decoded = backend.decode(
            state.cookie or "", max_age=max(store.lifetime, store.permanent_lifetime),
            secret_keys=secret_keys,
        )
        if decoded is None:
            return
        record, issued_at = decoded
        lifetime = store.permanent_lifetime if record.permanent else store.lifetime
        if time.time() - issued_at <= lifetime:
            state.loaded = record.fields
            state.loaded_permanent = record.permanent
            state.issued_at = issued_at

    def finish_open(self, plan: OpenPlan) -> MultiStoreSession:
        """Merge what was loaded, in config order: the first store holding a field wins."""
        if plan.null:
            return NullSession()
        states, ops = plan.states, plan.ops
        try:
            self._raise_or_degrade(ops)
        except SessionBackendError as exc:
            return UnavailableSession(exc, states)
        for op in ops:
            state = op.state
            state.load_seconds = op.seconds
            if state.failed:
                continue
            if op.result is None:
                state.sid = None  # unknown or expired: never adopt the client's id
            else:
                state.loaded = op.result.fields
                state.loaded_permanent = op.result.permanent
                state.loaded_foreign = op.result.foreign
        raw: dict[str, bytes] = {}
        permanent = False
        if not any(state.loaded for state in states):
            permanent = self.permanent
        for state in states:
            if state.loaded:
                permanent = permanent or state.loaded_permanent
                # Fields are decoded on first access (the session object does it); here the
                # first store holding a field wins.
                raw = {**state.loaded, **raw} if raw else state.loaded
        return MultiStoreSession(None, states, permanent, raw=raw)

    # -- save ---------------------------------------------------------------------------------

    def plan_save(
        self,
        session: MultiStoreSession,
        secret_keys: tuple[str | bytes, ...],
        *,
        can_set_cookies: bool = True,
    ) -> SavePlan:
        """Diff every store against what it loaded; the writes, deletes and cookies needed."""
        if isinstance(session, UnavailableSession):
            return SavePlan([], [], vary=True)  # a failed load never leads to a write
        if isinstance(session, NullSession):
            return SavePlan([], [], vary=False)
        if not dict.__len__(session) and all(state.cookie is None for state in session.states):
            # No cookie came and no field is left: no store has a record or cookie to write
            # or remove, whatever the request did (the common visitor without a session).
            return SavePlan([], [], vary=session.accessed)
        per_store, maybe_changed = self._fields_by_store(session)

        permanent = session._permanent
        force = session.forced
        regenerate = session.regenerated
        if regenerate and not can_set_cookies:
            # Without a response the new ids could not reach the browser: deleting the old
            # records would destroy the session.
            logger.warning("session.regenerate() ignored: a websocket cannot set cookies")
            regenerate = False
        codecs = self._id_codecs(secret_keys)
        ops: list[Op] = []
        cookies: list[Cookie] = []
        #: Each store's session id once the save is done (``None``: no record).
        sids_after: list[str | None] = [state.sid for state in session.states]
        writes: list[Op | None] = [None] * len(self.stores)
        rows = zip(self.stores, session.states, per_store, codecs, strict=True)
        for i, (store, state, fields, codec) in enumerate(rows):
            sids_after[i] = state.sid if state.failed else None
            if state.failed:
                if regenerate:
                    logger.warning(
                        "session store %r failed to load: its id was not regenerated", store.name
                    )
                continue
            backend = store.backend
            if isinstance(backend, ClientSideBackend):
                cookie = self._save_client_side(
                    store, backend, state, fields, permanent, secret_keys, session
                )
                if cookie is not None:
                    cookies.append(cookie)
                continue
            sid, loaded = state.sid, state.loaded
            # Only a cookie whose session this request read, or an explicit clear(), is
            # removed: a cookie this server cannot read (a key it lacks during a rolling
            # deploy, an expired record) is left for the servers that can.
            clear_cookie = state.cookie is not None and (bool(loaded) or session.cleared)
            if regenerate and sid is not None:
                ops.append(Op(store, state, "delete", store.key_prefix + sid))
                sid, loaded = None, {}
            if not fields:
                if sid is not None and loaded and state.loaded_foreign:
                    ops.append(Op(store, state, "delete", store.key_prefix + sid))
                elif sid is not None and loaded:
                    # Removing what was loaded, not deleting: the store deletes the record
                    # only if no field another request wrote in the meantime remains.
                    ops.append(Op(store, state, "store", store.key_prefix + sid,
                                  Write({}, list(loaded))))
                if clear_cookie:
                    cookies.append(Cookie(store, None, permanent))
                continue
            fresh = sid is None
            if fresh:
                if not can_set_cookies:
                    continue  # a websocket has no response to carry the new id
                sid = state.new_sid or new_id()  # the id session.sid showed, if it was asked
            assert sid is not None
            sids_after[i] = sid
            if maybe_changed is None:
                changed = fields if force else {
                    k: v for k, v in fields.items() if loaded.get(k) != v
                }
                removed = [k for k in loaded if k not in fields]
            else:
                changed = fields if force else {
                    k: fields[k] for k in maybe_changed
                    if k in fields and loaded.get(k) != fields[k]
                }
                removed = [k for k in maybe_changed if k in loaded and k not in fields]
            flag_changed = permanent != state.loaded_permanent
            write: Op | None = None
            if changed or removed or fresh or flag_changed:
                # A record in another library's format is replaced whole, under its own id.
                replace = fresh or state.loaded_foreign
                if replace:
                    changed, removed = fields, []
                # The flag (and the lifetime it implies) only when this request set it, so
                # a concurrent request's change of permanence is not undone.
                sets_flag = replace or flag_changed
                lifetime = store.permanent_lifetime if permanent else store.lifetime
                write = Op(store, state, "store", store.key_prefix + sid, Write(
                    changed, removed, permanent if sets_flag else None,
                    lifetime if sets_flag else None, create=replace,
                ))
                ops.append(write)
                writes[i] = write
            value = codec.encode(sid)
            # Flask's rule, per store: a new or re-signed id, a change of permanence (the
            # cookie gains or loses its expiry), or a permanent session that was written or
            # slides on every request.
            if (value != state.cookie or flag_changed or force
                    or (permanent and (write is not None or self.refresh))):
                cookies.append(Cookie(store, value, permanent, write))
        if self.indexed:
            ops = plan_index(self, session.states, per_store, sids_after, ops, writes)
        if not can_set_cookies:
            cookies = []
        # Flask's rule: a response that read the session or carries its cookie varies by it.
        return SavePlan(ops, cookies, vary=session.accessed or bool(cookies))

    def _fields_by_store(
        self, session: MultiStoreSession
    ) -> tuple[list[dict[str, bytes]], Collection[str] | None]:
        """Each store's serialized fields after the request, and the keys that may differ
        from what the stores loaded (``None``: any key may).

        A field never decoded nor set is still the bytes its store loaded, so when the
        loaded fields sit where the config routes them (the usual case) only the touched
        keys are serialized and compared: the cost follows what the request used, not the
        size of the session.
        """
        states = session.states
        touched = session.touched
        if not session.untracked and self._loaded_in_place(session):
            per_store = [dict(state.loaded) for state in states]
            for key in touched:
                for fields in per_store:
                    fields.pop(key, None)
            present = set()
            for key in touched:
                value = dict.get(session, key, _ABSENT)
                if value is not _ABSENT:
                    present.add(key)
                    self._route(key, self._serialized(session, key, value), per_store)
            if dict.keys(session) == (session.raw.keys() - touched.keys()) | present:
                return per_store, touched
        # Something changed the dict behind the session's back: compare every field.
        per_store = [{} for _ in self.stores]
        for key, value in dict.items(session):
            self._route(key, self._serialized(session, key, value), per_store)
        return per_store, None

    def _loaded_in_place(self, session: MultiStoreSession) -> bool:
        """Whether every loaded field is in exactly the stores the config routes it to."""
        raw = session.raw
        states = session.states
        if sum(len(state.loaded) for state in states) != len(raw):
            return False  # a field in several stores: the first one's value wins, compare all
        keys = frozenset(raw)
        owned = self._owned_cache.get(keys)
        if owned is None:
            owned = tuple(
                frozenset(k for k in keys if i in self._owners(k))
                for i in range(len(self.stores))
            )
            if len(self._owned_cache) >= _ROUTE_CACHE_SIZE:
                self._owned_cache.clear()
            self._owned_cache[keys] = owned
        return all(
            owned_here == state.loaded.keys()
            for owned_here, state in zip(owned, states, strict=True)
        )

    def _serialized(self, session: MultiStoreSession, key: str, value: Any) -> bytes:
        if value is LAZY:
            return session.raw[key]  # never decoded, so unchanged
        # The very object that was decoded, and immutable: it serializes to the same.
        known = session.reusable.get(key)
        return known[1] if known is not None and known[0] is value else dumps(value)

    def _route(self, key: str, raw: bytes, per_store: list[dict[str, bytes]]) -> None:
        owners = self._owners(key)
        for index in owners:
            per_store[index][key] = raw
        if not owners and key not in self._unrouted_warned:
            self._unrouted_warned.add(key)
            logger.warning("session field %r belongs to no store and is not saved", key)

    def _save_client_side(
        self,
        store: StoreConfig,
        backend: ClientSideBackend,
        state: StoreState,
        fields: dict[str, bytes],
        permanent: bool,
        secret_keys: tuple[str | bytes, ...],
        session: MultiStoreSession,
    ) -> Cookie | None:
        if not fields:
            # As for server-side stores: a cookie this server cannot read is left alone.
            if state.cookie is not None and (state.loaded or session.cleared):
                return Cookie(store, None, permanent)
            return None
        stale = (
            self.refresh
            and state.issued_at is not None
            and (permanent or time.time() - state.issued_at > store.lifetime / 2)
        )
        unchanged = fields == state.loaded and permanent == state.loaded_permanent
        if unchanged and not stale and not session.forced:
            return None
        value = backend.encode(fields, permanent=permanent, secret_keys=secret_keys)
        size = len(store.name) + len(value) + 2
        if size > COOKIE_LIMIT:
            raise SessionCookieTooLarge(store.name, size, COOKIE_LIMIT)
        return Cookie(store, value, permanent)

    def finish_save(self, plan: SavePlan, response: Any) -> None:
        """Set or clear the cookies of the stores whose I/O succeeded.

        ``response`` is Werkzeug's or Quart's response (both have ``set_cookie``,
        ``delete_cookie`` and ``vary``), or ``None`` after a Quart websocket.
        """
        self._raise_or_degrade(plan.ops)
        if response is None:
            return
        for cookie in plan.cookies:
            store = cookie.store
            settings = store.cookie
            partitioned = {"partitioned": True} if settings.partitioned else {}
            if cookie.value is None:
                # A partitioned cookie is only removed by a header that says Partitioned too.
                response.delete_cookie(
                    settings.name, domain=settings.domain, path=settings.path,
                    secure=settings.secure, httponly=settings.httponly,
                    samesite=settings.samesite, **partitioned,
                )
                continue
            after = cookie.after
            if after is not None and (after.state.failed or not after.written):
                continue  # the write failed (degraded) or its record was gone
            expires: datetime | None = None
            if settings.max_age is None and cookie.permanent:
                expires = datetime.now(timezone.utc) + timedelta(seconds=store.permanent_lifetime)
            response.set_cookie(
                settings.name, cookie.value, max_age=settings.max_age, expires=expires,
                domain=settings.domain, path=settings.path, secure=settings.secure,
                httponly=settings.httponly, samesite=settings.samesite, **partitioned,
            )
        if plan.vary:
            response.vary.add("Cookie")

    # -- I/O ----------------------------------------------------------------------------------

    async def run(self, ops: Sequence[Op]) -> None:
        """Run the ops concurrently, then the ops they call for; failures are recorded on
        each op, never raised here."""
        while ops:
            await self._run_round(ops)
            following: list[Op] = []
            for op in ops:
                if op.then is not None and op.error is None:
                    op.followed = op.then(op)
                    following += op.followed
            ops = following

    def run_without_loop(self, ops: Sequence[Op]) -> bool:
        """Run a plan of one op on this thread with no event loop, if its store
        ``runs_without_loop`` (a blocking round trip, as Flask-Session's); ``False``, with
        nothing run, otherwise or inside a running loop. Failures are recorded as by
        :meth:`run`."""
        if len(ops) != 1 or asyncio._get_running_loop() is not None:
            return False
        (op,) = ops
        backend = op.store.backend
        if op.then is not None or not (isinstance(backend, Backend) and backend.runs_without_loop):
            return False
        started = time.perf_counter()
        try:
            run_without_loop(self._call(op), op.store.timeout)
        except Exception as exc:
            op.error = exc
        op.seconds = time.perf_counter() - started
        return True

    async def _run_round(self, ops: Sequence[Op]) -> None:
        if len(ops) == 1:
            await self._run_one(ops[0])
            return
        if asyncio._get_running_loop() is not None:
            # asyncio's own task group costs about a third of anyio's (measured: 53 vs 140 µs
            # for three ops), and _run_one never raises, so gather is as safe on 3.10.
            if sys.version_info >= (3, 11):
                async with asyncio.TaskGroup() as atg:
                    for op in ops:
                        atg.create_task(self._run_one(op))
            else:
                await asyncio.gather(*(self._run_one(op) for op in ops))
            return
        async with anyio.create_task_group() as tg:
            for op in ops:
                tg.start_soon(self._run_one, op)

    async def _run_one(self, op: Op) -> None:
        started = time.perf_counter()
        try:
            if sys.version_info < (3, 11) and asyncio._get_running_loop() is not None:
                # wait_for turns the inner cancel into TimeoutError; an anyio scope on 3.10
                # lets a driver's own CancelledError (gRPC's) escape the request.
                await asyncio.wait_for(self._call(op), op.store.timeout)
            else:
                async with _deadline(op.store.timeout):
                    await self._call(op)
        except Exception as exc:
            op.error = exc
        op.seconds = time.perf_counter() - started

    async def _call(self, op: Op) -> None:
        backend = op.store.backend
        assert isinstance(backend, Backend)
        if op.kind == "load":
            op.result = await backend.load(op.key, touch=self.refresh and op.touch)
        elif op.kind == "store":
            assert op.write is not None
            op.written = await backend.store(op.key, op.write)
        else:
            await backend.delete(op.key)

    def raise_errors(self, ops: Sequence[Op]) -> None:
        """Raise the first failure of ``ops`` (or of the ops they called for)."""
        for op in _with_followers(ops):
            if op.error is not None:
                raise SessionBackendError(op.store.name, _failure(op, op.error)) from op.error

    def _raise_or_degrade(self, ops: Sequence[Op]) -> None:
        for op in _with_followers(ops):
            exc = op.error
            if exc is None:
                continue
            message = _failure(op, exc)
            if op.store.on_error == "raise":
                raise SessionBackendError(op.store.name, message) from exc
            logger.warning("session store %r degraded for this request: %s",
                           op.store.name, message)
            op.state.failed = True
            op.error = None

    # -- helpers ------------------------------------------------------------------------------

    def _owners(self, key: str) -> tuple[int, ...]:
        owners = self._routes.get(key)
        if owners is None:
            _check_key(key)
            owners = tuple(
                i for i, s in enumerate(self.stores) if s.fields.owns(key, self._included)
            )
            if len(self._routes) >= _ROUTE_CACHE_SIZE:
                self._routes.clear()  # keys are usually a fixed set; bound it all the same
            self._routes[key] = owners
        return owners

    def _id_codecs(self, secret_keys: tuple[str | bytes, ...]) -> list[IdCodec]:
        cached = self._codec_cache  # one tuple, so threads never see keys and codecs mixed
        if cached is not None and cached[0] == secret_keys:
            return cached[1]
        codecs = []
        for store in self.stores:
            if store.use_signer and not secret_keys:
                raise RuntimeError(
                    f"session store {store.name!r} has use_signer=True: "
                    "set SECRET_KEY (app.secret_key)"
                )
            codecs.append(IdCodec(
                secret_keys if store.use_signer else None, salt=f"asyncsessions.id.{store.name}",
                flask_session=store.read_flask_session,
            ))
        self._codec_cache = (secret_keys, codecs)
        return codecs


def _with_followers(ops: Sequence[Op]) -> list[Op]:
    every = list(ops)
    for op in every:  # grows as it goes: followers of followers too
        every += op.followed
    return every


def _failure(op: Op, exc: Exception) -> str:
    location = op.store.backend.location
    return f"{op.kind} failed" + (f" at {location}: " if location else ": ") + (
        f"no answer within {op.store.timeout:g} s"
        if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
    )


def _check_key(key: Any) -> None:
    """Refuse a session key that no store could keep the same way (checked once per key)."""
    if not isinstance(key, str) or key.startswith("\0"):
        raise SerializationError(f"session keys must be str not starting with NUL, not {key!r}")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SerializationError(
            f"cannot store a session key that is not valid Unicode: {key!r}"
        ) from exc


@contextlib.asynccontextmanager
async def _anyio_deadline(seconds: float) -> AsyncIterator[None]:
    with anyio.fail_after(seconds):
        yield


def _deadline(seconds: float) -> AbstractAsyncContextManager[Any]:
    """A timeout for one store call: ``TimeoutError`` when ``seconds`` have passed."""
    if sys.version_info >= (3, 11) and asyncio._get_running_loop() is not None:
        # asyncio's own timeout costs a fraction of an anyio cancel scope, and this runs
        # once per store per request.
        return asyncio.timeout(seconds)
    return _anyio_deadline(seconds)
