"""Log out everywhere: the opt-in index from a field's value to the sessions holding it.

A store with ``index_by=["user_id"]`` keeps, beside its sessions, one *index record* per
value of that field: an ordinary record of the store (so every store that can keep a session
can keep an index, with its own atomic field merges and expiry), whose fields are the ids of
the sessions holding that value, each with the ids the session has in the app's other
server-side stores. Writes keep it current (planned here, run by the engine with the
session's own writes); :func:`revoke` deletes every session it lists in every store.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .backends.base import Backend, Write
from .serialization import SerializationError, dumps, loads
from .session import StoreState

if TYPE_CHECKING:
    from .config import StoreConfig
    from .engine import Engine, Op

__all__ = ["index_key", "plan_index", "revoke"]

#: Index keys start with a character no session id has, so no cookie can name one.
_MARK = "~"


def index_key(store: StoreConfig, field: str, raw: bytes) -> str:
    """The key of the index record of ``field`` having the serialized value ``raw``."""
    digest = hashlib.blake2b(field.encode() + b"\0" + raw, digest_size=21).hexdigest()
    return store.key_prefix + _MARK + digest  # as long as a session key


def plan_index(
    engine: Engine,
    states: Sequence[StoreState],
    fields_after: Sequence[Mapping[str, bytes]],
    sids_after: Sequence[str | None],
    ops: list[Op],
    writes: Sequence[Op | None],
) -> list[Op]:
    """The save's ops with the index writes that keep every indexed store's index current.

    ``sids_after`` is each store's session id once the save is done (``None``: no record),
    ``writes`` each store's session write among ``ops``. A write that gives a session a new
    indexed value (a login) runs only once its index entry is in: a session is never
    logged in without being listed, and a failed index write fails the save.
    """
    from .engine import Op

    ids = {store.name: sid for store, sid in zip(engine.stores, sids_after, strict=True)
           if sid is not None and isinstance(store.backend, Backend)}
    ids_before = {store.name: state.sid for store, state in zip(engine.stores, states,
                                                                 strict=True)
                  if state.sid is not None and state.loaded}
    wrote = any(op.kind == "store" for op in ops)
    index_ops: list[Op] = []
    now = round(time.time(), 3)
    for i, store in enumerate(engine.stores):
        state = states[i]
        if not store.index_by or state.failed or (state.loaded_foreign and not wrote):
            continue
        gate = _Gate(writes[i])
        # Another library's record was never indexed: its rewrite (this write) indexes it.
        old_sid = state.sid if state.loaded and not state.loaded_foreign else None
        new_sid = sids_after[i]
        for field in store.index_by:
            old = state.loaded.get(field) if old_sid is not None else None
            new = fields_after[i].get(field) if new_sid is not None else None
            adds: dict[str, bytes] = {}
            if new is not None and new_sid is not None and (
                    new != old or new_sid != old_sid or ids != ids_before or wrote):
                adds[new_sid] = dumps({"ids": ids, "at": now})
            removed: list[str] = []
            if old is not None and old_sid is not None and (new != old or new_sid != old_sid):
                if new == old:  # a new id for the same value: one write moves the entry
                    removed = [old_sid]
                else:
                    index_ops.append(Op(store, state, "store", index_key(store, field, old),
                                        Write({}, [old_sid])))
            if adds and new is not None:
                fresh = new_sid != old_sid or new != old
                index_ops += _add(store, state, index_key(store, field, new), adds, removed,
                                  gate if fresh else None)
        if gate.waiting:
            gate.hold(ops)
    return ops + index_ops


class _Gate:
    """Holds a session write back until every index entry it needs is written."""

    def __init__(self, write: Op | None) -> None:
        self.write = write
        self.waiting = 0

    def hold(self, ops: list[Op]) -> None:
        if self.write is not None:
            ops.remove(self.write)
            self.write.written = False  # until it runs: no cookie announces it before

    def passed(self) -> list[Op]:
        self.waiting -= 1
        return [self.write] if self.waiting == 0 and self.write is not None else []


def _add(store: StoreConfig, state: StoreState, key: str, adds: dict[str, bytes],
         removed: list[str], gate: _Gate | None) -> list[Op]:
    """Merge ``adds`` into the index record, creating it if it is gone. A new entry (a
    login) opens ``gate`` once written, and prunes entries not refreshed within the
    index's lifetime."""
    from .engine import Op

    lifetime = store.index_lifetime
    opened = gate.passed if gate is not None else list

    def create_if_missing(op: Op) -> list[Op]:
        if op.written:
            return opened()
        # No index yet (or it expired). A concurrent first login of the same user may
        # create it in the same instant, and one entry is lost: see the README's limits.
        return [Op(store, state, "store", key, Write(adds, (), True, lifetime, create=True),
                   then=lambda created: opened())]

    ops = [Op(store, state, "store", key, Write(adds, removed, True, lifetime),
              then=create_if_missing)]
    if gate is not None:
        gate.waiting += 1
        ops.append(Op(store, state, "load", key, touch=False,
                      then=lambda op: _prune(store, state, key, op, adds)))
    return ops


def _prune(store: StoreConfig, state: StoreState, key: str, op: Op,
           keep: Mapping[str, bytes]) -> list[Op]:
    from .engine import Op

    if op.result is None:
        return []
    oldest = time.time() - store.index_lifetime
    stale = [sid for sid, raw in op.result.fields.items()
             if sid not in keep and _entry(raw)[1] < oldest]
    return [Op(store, state, "store", key, Write({}, stale))] if stale else []


def _entry(raw: bytes) -> tuple[dict[str, str], float]:
    """An index entry's ids per store and when it was last written (0 if unreadable)."""
    try:
        value = loads(raw)
    except ValueError:
        return {}, 0.0
    if not isinstance(value, dict):
        return {}, 0.0
    ids, at = value.get("ids"), value.get("at")
    if not isinstance(ids, dict) or not isinstance(at, (int, float)):
        return {}, 0.0
    return {k: v for k, v in ids.items() if isinstance(k, str) and isinstance(v, str)}, at


async def revoke(engine: Engine, values: Mapping[str, Any]) -> int:
    """Delete every session whose indexed field has the given value, in every store.

    ``values`` names one field and its value as the app stored it (``42`` and ``"42"`` are
    different values). A listed session is deleted only if its record still holds that
    value, so an entry left behind by a request racing a logout never ends the session of
    whoever holds that id now. Returns how many sessions were deleted.
    """
    from .engine import Op

    if len(values) != 1:
        raise ValueError("name one indexed field: revoke(user_id=...)")
    [(field, value)] = values.items()
    stores = [s for s in engine.stores if field in s.index_by]
    if not stores:
        raise ValueError(f"no store has {field!r} in its index_by: add it to the store "
                         "that keeps the field")
    try:
        raw = dumps(value)
    except SerializationError as exc:
        raise ValueError(f"{field}={value!r} cannot be a session value: {exc}") from exc
    lookups = [Op(s, StoreState(s.name, True), "load", index_key(s, field, raw), touch=False)
               for s in stores]
    await engine.run(lookups)
    engine.raise_errors(lookups)
    checks: list[tuple[Op, dict[str, str]]] = []
    cleanups: list[Op] = []
    for lookup in lookups:
        if lookup.result is None:
            continue
        store = lookup.store
        for sid, entry in lookup.result.fields.items():
            check = Op(store, lookup.state, "load", store.key_prefix + sid, touch=False)
            checks.append((check, _entry(entry)[0]))
        # Only the entries read: a login in this instant keeps its own.
        cleanups.append(Op(store, lookup.state, "store", lookup.key,
                           Write({}, list(lookup.result.fields))))
    await engine.run([check for check, _ in checks])
    engine.raise_errors([check for check, _ in checks])
    by_name = {store.name: store for store in engine.stores}
    deletes: list[Op] = []
    revoked = 0
    for check, ids in checks:
        if check.result is None or check.result.fields.get(field) != raw:
            continue  # gone already, or no longer this value's session
        revoked += 1
        deletes.append(Op(check.store, check.state, "delete", check.key))
        for name, sid in ids.items():
            other = by_name.get(name)
            if other is not None and other is not check.store and isinstance(
                    other.backend, Backend):
                deletes.append(Op(other, check.state, "delete", other.key_prefix + sid))
    await engine.run(deletes + cleanups)
    engine.raise_errors(deletes + cleanups)
    return revoked
