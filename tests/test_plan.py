"""The engine's plans are data: inspectable without an app, a server or an event loop."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from asyncsessions import Backend, Record, Write
from asyncsessions.config import parse_config
from asyncsessions.engine import Engine
from asyncsessions.serialization import dumps
from asyncsessions.session import MultiStoreSession, StoreState

KEYS = ("secret",)
SID = "A" * 43


class Nowhere(Backend):
    """A store that must never be called: planning does no I/O."""

    def __init__(self, location: str | None = None) -> None:
        self.location = location

    async def load(self, key: str, *, touch: bool) -> Record | None:
        raise AssertionError("planning did I/O")

    async def store(self, key: str, write: Write) -> bool:
        raise AssertionError("planning did I/O")

    async def delete(self, key: str) -> None:
        raise AssertionError("planning did I/O")


def engine(**entry: Any) -> Engine:
    stores = parse_config(
        {"SESSION_CONFIG": [{"cookie_name": "s", "session_type": Nowhere(), **entry}]},
        instance_path="/nonexistent",
    )
    return Engine(stores, refresh_each_request=False)


def loaded_session(fields: dict[str, Any], permanent: bool = False) -> MultiStoreSession:
    state = StoreState(sid=SID, cookie=SID, loaded={k: dumps(v) for k, v in fields.items()},
                       loaded_permanent=permanent)
    return MultiStoreSession(dict(fields), [state], permanent)


def test_a_change_plans_one_conditional_write_of_that_field() -> None:
    session = loaded_session({"a": 1, "b": [2]})
    session["b"].append(3)
    before = copy.deepcopy(session.states)
    plan = engine().plan_save(session, KEYS)
    (op,) = plan.ops
    assert (op.kind, op.key) == ("store", "session:" + SID)
    assert op.write == Write({"b": b"[2,3]"}, [], None, None, create=False)
    assert plan.cookies == []  # same id, browser session: nothing to re-send
    assert session.states == before  # planning changed nothing


def test_a_new_session_plans_a_create_with_its_flag_and_a_cookie() -> None:
    session = MultiStoreSession(None, [StoreState()])
    session["a"] = 1
    session.permanent = True
    plan = engine(session_permanent_lifetime=600).plan_save(session, KEYS)
    (op,) = plan.ops
    assert op.write is not None
    assert (op.write.create, op.write.permanent, op.write.ttl) == (True, True, 600)
    (cookie,) = plan.cookies
    assert cookie.value is not None
    assert op.key == "session:" + cookie.value
    assert cookie.after is op  # the cookie is sent only if that write lands
    assert session.states[0].sid is None


@pytest.mark.parametrize("what", ["nothing", "read", "set and removed", "permanent",
                                  "regenerate", "modified", "clear"])
def test_a_visitor_without_a_cookie_who_keeps_no_field_plans_nothing(what: str) -> None:
    secure = {"cookie_name": "c", "session_type": "secure_cookie", "session_fields": "auto"}
    stores = parse_config({"SESSION_CONFIG": [
        {"cookie_name": "s", "session_type": Nowhere(), "session_fields": ["a"]}, secure,
    ]}, instance_path="/nonexistent")
    ours = Engine(stores, refresh_each_request=True, permanent=True)
    session = ours.finish_open(ours.plan_open({}, KEYS))
    if what == "read":
        assert session.get("a") is None
    elif what == "set and removed":
        session["a"] = 1
        del session["a"]
    elif what == "permanent":
        session.permanent = False
    elif what == "regenerate":
        session.regenerate()
    elif what == "modified":
        session.modified = True
    elif what == "clear":
        session.clear()
    plan = ours.plan_save(session, KEYS)
    assert (plan.ops, plan.cookies) == ([], [])
    # Flask's rule: a response that looked at the session varies by its cookie.
    assert plan.vary is (what not in ("nothing", "modified"))


def test_emptying_plans_a_removal_not_a_delete() -> None:
    session = loaded_session({"a": 1})
    session.clear()
    plan = engine().plan_save(session, KEYS)
    (op,) = plan.ops
    assert op.kind == "store"
    assert op.write == Write({}, ["a"])
    assert [c.value for c in plan.cookies] == [None]


def test_regenerate_plans_delete_then_create_and_leaves_the_state() -> None:
    session = loaded_session({"a": 1})
    session.regenerate()
    plan = engine().plan_save(session, KEYS)
    delete, create = plan.ops
    assert (delete.kind, delete.key) == ("delete", "session:" + SID)
    assert create.write is not None
    assert create.write.create
    assert create.key != delete.key
    assert session.states[0].sid == SID
    assert session.states[0].loaded == {"a": b"1"}


def test_two_stores_on_one_server_with_one_prefix_are_refused() -> None:
    config = {"SESSION_CONFIG": [
        {"cookie_name": "a", "session_type": Nowhere("redis://127.0.0.1:6379/0")},
        {"cookie_name": "b", "session_type": Nowhere("redis://127.0.0.1:6379/0")},
    ]}
    with pytest.raises(ValueError, match=r"SESSION_CONFIG\[1\] 'key_prefix'.*already used by "
                                         r"SESSION_CONFIG\[0\]") as info:
        parse_config(config, instance_path="/nonexistent")
    assert type(info.value) is ValueError  # no private class in the user's traceback
    config["SESSION_CONFIG"][1]["key_prefix"] = "other:"
    assert len(parse_config(config, instance_path="/nonexistent")) == 2


def test_fields_never_read_are_neither_decoded_nor_compared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncsessions.engine
    import asyncsessions.session

    calls: list[str] = []
    real_loads, real_dumps = asyncsessions.session.loads, asyncsessions.engine.dumps
    monkeypatch.setattr(asyncsessions.session, "loads",
                        lambda raw: calls.append("loads") or real_loads(raw))
    monkeypatch.setattr(asyncsessions.engine, "dumps",
                        lambda value: calls.append("dumps") or real_dumps(value))
    fields = {f"f{i}": {"n": i} for i in range(200)}
    state = StoreState(sid=SID, cookie=SID, loaded={k: dumps(v) for k, v in fields.items()})
    session = MultiStoreSession(None, [state], raw=state.loaded)
    assert session["f7"] == {"n": 7}
    assert "f8" in session
    plan = engine().plan_save(session, KEYS)
    assert plan.ops == []
    assert calls == ["loads", "loads", "dumps", "dumps"]  # f7 and f8 only


def test_a_write_serializes_and_compares_only_the_fields_it_touched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncsessions.engine

    dumped: list[Any] = []
    real_dumps = asyncsessions.engine.dumps
    monkeypatch.setattr(asyncsessions.engine, "dumps",
                        lambda value: dumped.append(value) or real_dumps(value))
    state = StoreState(sid=SID, cookie=SID,
                       loaded={f"f{i}": dumps({"n": i}) for i in range(200)})
    session = MultiStoreSession(None, [state], raw=state.loaded)
    session["f1"]["n"] = -1  # nested mutation, no `modified`
    session["new"] = "x"
    session |= {"f2": 2}
    del session["f3"]
    session.pop("f4")
    (op,) = engine().plan_save(session, KEYS).ops
    assert op.write == Write({"f1": b'{"n":-1}', "new": b'"x"', "f2": b"2"}, ["f3", "f4"])
    assert len(dumped) == 3


def test_a_change_behind_the_sessions_back_is_still_saved() -> None:
    state = StoreState(sid=SID, cookie=SID, loaded={"a": b"1", "b": b"2"})
    session = MultiStoreSession(None, [state], raw=state.loaded)
    dict.__setitem__(session, "c", 3)  # bypasses the session's own bookkeeping
    dict.__delitem__(session, "a")
    (op,) = engine().plan_save(session, KEYS).ops
    assert op.write == Write({"c": b"3"}, ["a"])


def test_an_unreadable_field_reads_as_absent_everywhere_and_is_removed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = StoreState("s", sid=SID, cookie=SID, loaded={"bad": b"\x80 not json", "ok": b"1"})
    session = MultiStoreSession(None, [state], raw=state.loaded)
    assert "bad" not in session
    assert session.get("bad", "default") == "default"
    assert dict(session) == {"ok": 1}
    assert "session store 's': dropped unreadable field 'bad'" in caplog.text
    (op,) = engine().plan_save(session, KEYS).ops
    assert op.write == Write({}, ["bad"])


def test_a_record_in_another_format_is_rewritten_whole_at_its_first_write() -> None:
    state = StoreState(sid=SID, cookie=SID, loaded={"a": b"1", "b": b"2"},
                       loaded_permanent=True, loaded_foreign=True)
    session = MultiStoreSession(None, [state], True, raw=state.loaded)
    assert engine().plan_save(session, KEYS).ops == []  # a read-only request writes nothing
    session["b"] = 3
    (op,) = engine(session_permanent_lifetime=900).plan_save(session, KEYS).ops
    assert op.key == "session:" + SID
    assert op.write == Write({"a": b"1", "b": b"3"}, [], True, 900, create=True)
    session.clear()
    (op,) = engine().plan_save(session, KEYS).ops
    assert (op.kind, op.key) == ("delete", "session:" + SID)


class Blocking(Nowhere):
    """A store whose coroutines complete without an event loop (or, if told, wait for one)."""

    runs_without_loop = True

    def __init__(self, waits: bool = False) -> None:
        super().__init__()
        self.waits = waits

    async def load(self, key: str, *, touch: bool) -> Record | None:
        if self.waits:
            await asyncio.sleep(0)  # suspends: there is no loop to resume it
        return Record({"a": dumps(1)}, permanent=False)


def test_one_op_on_a_store_that_needs_no_loop_runs_on_the_calling_thread() -> None:
    eng = engine(session_type=Blocking())
    plan = eng.plan_open({"s": SID}, KEYS)
    assert eng.run_without_loop(plan.ops)
    assert eng.finish_open(plan)["a"] == 1
    # Stores that need a loop, or plans of several ops, are left to Engine.run.
    assert not engine().run_without_loop(engine().plan_open({"s": SID}, KEYS).ops)
    assert not eng.run_without_loop([*plan.ops, *plan.ops])


def test_a_store_that_says_it_needs_no_loop_and_then_waits_for_one_fails_its_op() -> None:
    eng = engine(session_type=Blocking(waits=True))
    plan = eng.plan_open({"s": SID}, KEYS)
    assert eng.run_without_loop(plan.ops)
    (op,) = plan.ops
    assert isinstance(op.error, RuntimeError)
    assert "waited for one" in str(op.error)
