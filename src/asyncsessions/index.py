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
    wrote: bool,
) -> list[Op]:
    """The index writes that keep every indexed store's index current after a save.

    ``sids_after`` is each store's session id once the save is done (``None``: no record),
    ``wrote`` whether the save writes any record (which restarts the entry's lifetime).
    """
    from .engine import Op

    ids = {store.name: sid for store, sid in zip(engine.stores, sids_after, strict=True)
           if sid is not None and isinstance(store.backend, Backend)}
    ids_before = {store.name: state.sid for store, state in zip(engine.stores, states,
                                                                 strict=True)
                  if state.sid is not None and state.loaded}
    ops: list[Op] = []
    now = round(time.time(), 3)
    for i, store in enumerate(engine.stores):
        state = states[i]
        if not store.index_by or state.failed or (state.loaded_foreign and not wrote):
            continue
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
            if old is not None and old_sid is not None and (new != old or new_sid != old_sid):
                if new == old:  # a new id for the same value: one write moves the entry
                    ops += _add(store, state, index_key(store, field, old), adds, [old_sid],
                                fresh=True)
                    continue
                ops.append(Op(store, state, "store", index_key(store, field, old),
                              Write({}, [old_sid])))
            if adds and new is not None:
                ops += _add(store, state, index_key(store, field, new), adds, [],
                            fresh=new_sid != old_sid or new != old)
    return ops


def _add(store: StoreConfig, state: StoreState, key: str, adds: dict[str, bytes],
         removed: list[str], *, fresh: bool) -> list[Op]:
    """Merge ``adds`` into the index record, creating it if it is gone; a new entry (a
    login) also prunes entries not refreshed within the index's lifetime."""
    from .engine import Op

    lifetime = store.index_lifetime

    def create_if_missing(op: Op) -> list[Op]:
        if op.written:
            return []
        # No index yet (or it expired). A concurrent first login of the same user may
        # create it in the same instant, and one entry is lost: see the README's limits.
        return [Op(store, state, "store", key, Write(adds, (), True, lifetime, create=True))]

    ops = [Op(store, state, "store", key, Write(adds, removed, True, lifetime),
              then=create_if_missing)]
    if fresh:
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

    Returns how many sessions were found (and deleted). ``values`` are field values as the
    app stored them (``42`` and ``"42"`` are different values).
    """
    from .engine import Op

    if not values:
        raise ValueError("name at least one indexed field: revoke(user_id=...)")
    by_name = {store.name: store for store in engine.stores}
    lookups: list[Op] = []
    for field, value in values.items():
        stores = [s for s in engine.stores if field in s.index_by]
        if not stores:
            raise ValueError(f"no store has {field!r} in its index_by: add it to the store "
                             "that keeps the field")
        try:
            raw = dumps(value)
        except SerializationError as exc:
            raise ValueError(f"{field}={value!r} cannot be a session value: {exc}") from exc
        lookups += [Op(s, StoreState(s.name, True), "load", index_key(s, field, raw),
                       touch=False) for s in stores]
    await engine.run(lookups)
    engine.raise_errors(lookups)
    deletes: list[Op] = []
    found: set[tuple[str, str]] = set()
    for lookup in lookups:
        if lookup.result is None:
            continue
        for sid, raw in lookup.result.fields.items():
            found.add((lookup.store.name, sid))
            targets = {lookup.store.name: sid, **_entry(raw)[0]}
            for name, target in targets.items():
                other = by_name.get(name)
                if other is not None and isinstance(other.backend, Backend):
                    deletes.append(Op(other, lookup.state, "delete", other.key_prefix + target))
        # Only the entries read: a login in this instant keeps its own.
        deletes.append(Op(lookup.store, lookup.state, "store", lookup.key,
                          Write({}, list(lookup.result.fields))))
    await engine.run(deletes)
    engine.raise_errors(deletes)
    return len(found)
