"""Tests for the Firestore session store, against the official Firestore emulator."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import pytest
from google.api_core.exceptions import ServiceUnavailable
from google.cloud import firestore
from google.cloud.firestore_v1.async_document import AsyncDocumentReference
from google.cloud.firestore_v1.base_document import DocumentSnapshot

from apps import Driver
from asyncsessions.backends.base import Record, close_loop_clients
from asyncsessions.backends.firestore import FirestoreBackend
from asyncsessions.config import parse_config
from servers import FirestoreEmulator

SID = "AbC-_123" + "x" * 35
KEY = "session:" + SID
FUTURE = datetime.now(timezone.utc) + timedelta(days=1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def emulator(
    firestore_emulator: FirestoreEmulator, monkeypatch: pytest.MonkeyPatch
) -> FirestoreEmulator:
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host_port)
    return firestore_emulator


@pytest.fixture
def project(emulator: FirestoreEmulator) -> str:
    """A project of its own per test: the emulator keeps each project's data apart."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def backend(project: str) -> AsyncIterator[FirestoreBackend]:
    backend = FirestoreBackend(project=project)
    yield backend
    await close_loop_clients()


def raw(backend: FirestoreBackend, doc_id: str) -> AsyncDocumentReference:
    """The document under its stored id, read and written around the backend."""
    return backend.client.collection("sessions").document(doc_id)


async def snapshot(backend: FirestoreBackend, doc_id: str) -> DocumentSnapshot:
    # Not .get(): it leaves the stream open, and grpc then fails in a later test's loop.
    [found] = [s async for s in backend.client.get_all([raw(backend, doc_id)])]
    return found


async def stored(backend: FirestoreBackend, doc_id: str) -> dict[str, Any]:
    data = (await snapshot(backend, doc_id)).to_dict()
    assert data is not None, f"no document {doc_id!r}"
    return data


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_round_trip_and_layout(backend: FirestoreBackend) -> None:
    fields = {"user_id": b"42", "name": '"Zo\u00eb"'.encode(), "not utf-8": b"\xff\x00"}
    await backend.store(KEY, fields, (), permanent=True, ttl=600)
    assert await backend.load(KEY, touch=False) == Record(fields, permanent=True)
    assert await backend.load("session:" + "y" * 43, touch=False) is None

    data = await stored(backend, KEY)
    assert data["f"] == {"user_id": "42", "name": '"Zo\u00eb"', "not utf-8": b"\xff\x00"}
    assert (data["ttl"], data["permanent"]) == (600, True)
    left = data["expires"] - datetime.now(timezone.utc)
    assert timedelta(seconds=590) < left <= timedelta(seconds=600)


NAMES = ["a.b", "a/b", "x`y", "`", "\\", "zo\u00eb", "\u65e5\u672c", "\U0001f600", "__", "___",
         "____", "__proto__", "__x__%", "", ".", "..", "%", "%25", "a%2Fb", " ", "1st", "a\nb"]


@pytest.mark.anyio
async def test_field_names_round_trip(backend: FirestoreBackend) -> None:
    fields = {name: f'"{i}"'.encode() for i, name in enumerate(NAMES)}
    await backend.store(KEY, fields, (), permanent=False, ttl=600)
    assert await backend.load(KEY, touch=False) == Record(fields)
    stored_names = set((await stored(backend, KEY))["f"])
    assert {"a.b", "a%2Fb", "x`y", "__proto__%", "%", ".%", "a%252Fb"} <= stored_names

    # Field paths, not dotted strings: removing "a.b" leaves "a" and "b" alone and vice versa.
    await backend.store(KEY, {"a": b"1", "b": b"2"}, ["a.b", "x`y", "__proto__", ""],
                        permanent=False, ttl=600)
    record = await backend.load(KEY, touch=False)
    assert record is not None
    gone = {"a.b", "x`y", "__proto__", ""}
    assert record.fields == {
        **{k: v for k, v in fields.items() if k not in gone}, "a": b"1", "b": b"2"
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("key", "doc_id"),
    [("s/1", "s%2F1"), (".", ".%"), ("..", "..%"), ("__k__", "__k__%"),
     ("%2F", "%252F"), ("p:" + "\u00e9" * 20, "p:" + "\u00e9" * 20)],
)
async def test_keys_are_escaped(backend: FirestoreBackend, key: str, doc_id: str) -> None:
    await backend.store(key, {"k": b"1"}, (), permanent=False, ttl=600)
    assert await backend.load(key, touch=False) == Record({"k": b"1"})
    assert (await stored(backend, doc_id))["f"] == {"k": "1"}


@pytest.mark.anyio
async def test_escaped_keys_stay_distinct(backend: FirestoreBackend) -> None:
    keys = ["a/b", "a%2Fb", "a%252Fb", "__x__", "__x__%"]
    for i, key in enumerate(keys):
        await backend.store(key, {"i": str(i).encode()}, (), permanent=False, ttl=600)
    for i, key in enumerate(keys):
        assert await backend.load(key, touch=False) == Record({"i": str(i).encode()})
    await backend.delete("a/b")
    assert await backend.load("a/b", touch=False) is None
    assert await backend.load("a%2Fb", touch=False) is not None


def test_key_prefix_must_fit_once_escaped(tmp_path: Any) -> None:
    def config(prefix: str) -> dict[str, Any]:
        entry = {"cookie_name": "s", "session_type": "firestore", "project": "p",
                 "key_prefix": prefix}
        return {"SESSION_CONFIG": [entry]}

    parse_config(config("a" * (1500 - 43)), instance_path=str(tmp_path))
    with pytest.raises(ValueError, match=r"'key_prefix'.*1500 bytes"):
        parse_config(config("/" * 500), instance_path=str(tmp_path))
    with pytest.raises(ValueError, match=r"'key_prefix'"):
        parse_config(config("__" + "a" * (1500 - 45)), instance_path=str(tmp_path))


# -- field-level writes -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_store_merges_and_removes_fields(backend: FirestoreBackend) -> None:
    await backend.store(KEY, {"a": b"1", "b": b"2"}, (), permanent=True, ttl=600)
    await backend.store(KEY, {"c": b"3"}, ["a", "missing"], permanent=True, ttl=600)
    assert await backend.load(KEY, touch=False) == Record({"b": b"2", "c": b"3"}, True)
    # Only the flag changed: the fields must survive a write that names none of them.
    await backend.store(KEY, {}, (), permanent=False, ttl=60)
    assert await backend.load(KEY, touch=False) == Record({"b": b"2", "c": b"3"}, False)
    assert (await stored(backend, KEY))["ttl"] == 60


@pytest.mark.anyio
async def test_concurrent_stores_keep_every_field(project: str) -> None:
    # Two backends, two clients: two worker processes writing one session at once.
    backends = [FirestoreBackend(project=project) for _ in range(2)]
    await backends[0].store(KEY, {"base": b"0"}, (), permanent=False, ttl=600)

    async def set_field(i: int) -> None:
        await backends[i % 2].store(KEY, {f"f{i}": str(i).encode()}, ["base"] if i == 7 else (),
                                    permanent=False, ttl=600)

    try:
        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(set_field, i)
        record = await backends[1].load(KEY, touch=False)
    finally:
        await close_loop_clients()
    assert record == Record({f"f{i}": str(i).encode() for i in range(40)})


@pytest.mark.anyio
async def test_delete(backend: FirestoreBackend) -> None:
    await backend.delete(KEY)  # missing is fine
    await backend.store(KEY, {"a": b"1"}, (), permanent=False, ttl=600)
    await backend.delete(KEY)
    assert await backend.load(KEY, touch=False) is None
    assert not (await snapshot(backend, KEY)).exists


# -- expiry -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_expired_document_reads_as_none(backend: FirestoreBackend) -> None:
    await backend.store(KEY, {"a": b"1"}, (), permanent=False, ttl=1)
    await anyio.sleep(1.2)
    assert await backend.load(KEY, touch=True) is None
    assert await backend.load(KEY, touch=False) is None
    # Deleting is left to the TTL policy (up to a day late); nothing was refreshed meanwhile.
    data = await stored(backend, KEY)
    assert data["expires"] < datetime.now(timezone.utc)


@pytest.mark.anyio
async def test_document_without_expiry_reads_as_none(backend: FirestoreBackend) -> None:
    await raw(backend, KEY).set({"f": {"a": "1"}})
    assert await backend.load(KEY, touch=True) is None


async def update_time(backend: FirestoreBackend) -> datetime:
    written = (await snapshot(backend, KEY)).update_time
    assert written is not None
    return written


@pytest.mark.anyio
async def test_touch_writes_only_after_half_the_lifetime(backend: FirestoreBackend) -> None:
    await backend.store(KEY, {"a": b"1"}, (), permanent=True, ttl=1000)
    written = await update_time(backend)
    for _ in range(3):
        assert await backend.load(KEY, touch=True) == Record({"a": b"1"}, True)
    assert await update_time(backend) == written

    # 600 of 1000 s gone: the next touching read slides the expiry back to the full ttl.
    await raw(backend, KEY).update({"expires": datetime.now(timezone.utc) + timedelta(seconds=400)})
    aged = await update_time(backend)
    assert await backend.load(KEY, touch=False) == Record({"a": b"1"}, True)
    assert await update_time(backend) == aged
    assert await backend.load(KEY, touch=True) == Record({"a": b"1"}, True)
    assert await update_time(backend) > aged
    data = await stored(backend, KEY)
    assert data["expires"] - datetime.now(timezone.utc) > timedelta(seconds=990)
    assert data["f"] == {"a": "1"}
    refreshed = await update_time(backend)
    assert await backend.load(KEY, touch=True) is not None  # fresh again: no write
    assert await update_time(backend) == refreshed


@pytest.mark.anyio
async def test_refresh_never_resurrects_or_overrides(
    backend: FirestoreBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    await backend.store(KEY, {"a": b"1"}, (), permanent=False, ttl=1000)
    await raw(backend, KEY).update({"expires": datetime.now(timezone.utc) + timedelta(seconds=9)})
    original_get_all = backend.client.get_all
    meanwhile: list[Any] = []

    async def get_all_then_interfere(*args: Any, **kw: Any) -> AsyncIterator[Any]:
        async for found in original_get_all(*args, **kw):
            yield found
        if meanwhile:
            await meanwhile.pop()()

    monkeypatch.setattr(backend.client, "get_all", get_all_then_interfere)

    # A request made the session permanent between our read and our refresh.
    meanwhile.append(lambda: backend.store(KEY, {}, (), permanent=True, ttl=100_000))
    assert await backend.load(KEY, touch=True) is not None
    left = (await stored(backend, KEY))["expires"] - datetime.now(timezone.utc)
    assert left > timedelta(seconds=99_000)

    # Another request deleted the session (logout) between our read and our refresh.
    await raw(backend, KEY).update({"expires": datetime.now(timezone.utc) + timedelta(seconds=9)})
    meanwhile.append(lambda: backend.delete(KEY))
    assert await backend.load(KEY, touch=True) is not None  # it was there when read
    assert not (await snapshot(backend, KEY)).exists


# -- garbage ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_planted_values_do_not_crash_load(backend: FirestoreBackend) -> None:
    pickled = b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94."
    await raw(backend, KEY).set({
        "f": {"n": 5, "m": {"x": "y"}, "p": pickled, "ok": '"fine"', "none": None},
        "expires": FUTURE, "ttl": "nonsense", "permanent": "yes",
    })
    assert await backend.load(KEY, touch=True) == Record({"p": pickled, "ok": b'"fine"'})
    await raw(backend, KEY).set({"f": "not a map", "expires": FUTURE})
    assert await backend.load(KEY, touch=False) == Record({})


# -- clients ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_client_is_cloned_per_loop(project: str) -> None:
    given = firestore.AsyncClient(project=project, database="(default)")
    backend = FirestoreBackend(client=given, collection="apps/web/sessions")
    try:
        await backend.store(KEY, {"a": b"1"}, (), permanent=False, ttl=600)
        assert backend.client is not given
        assert (backend.client.project, backend.client._database) == (project, "(default)")
        doc = given.collection("apps/web/sessions").document(KEY)
        [found] = [s async for s in given.get_all([doc])]
        assert (found.to_dict() or {}).get("f") == {"a": "1"}
    finally:
        await close_loop_clients()
        await given._firestore_api_internal.transport.close()  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_clones_keep_talking_to_the_emulator(
    project: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = firestore.AsyncClient(project=project)
    monkeypatch.delenv("FIRESTORE_EMULATOR_HOST")  # after the client chose the emulator
    backend = FirestoreBackend(client=given)
    try:
        await backend.store(KEY, {"a": b"1"}, (), permanent=False, ttl=600)
        assert await backend.load(KEY, touch=False) == Record({"a": b"1"})
    finally:
        await close_loop_clients()


@pytest.mark.anyio
async def test_sync_client_is_adapted(project: str) -> None:
    given = firestore.Client(project=project)
    backend = FirestoreBackend(client=given)
    try:
        await backend.store(KEY, {"a": b"1"}, (), permanent=False, ttl=600)
        assert isinstance(backend.client, firestore.AsyncClient)
        assert backend.client.project == project
        written = given.collection("sessions").document(KEY).get().to_dict()
        assert (written or {}).get("f") == {"a": "1"}
    finally:
        await close_loop_clients()
        given._firestore_api.transport.close()


@pytest.mark.anyio
async def test_closing_closes_the_channel(backend: FirestoreBackend) -> None:
    await backend.delete(KEY)
    client = backend.client
    channel = client._firestore_api.transport.grpc_channel
    await close_loop_clients()
    with pytest.raises(Exception, match="closed"):
        await channel.unary_unary("/x/y")(b"")
    assert backend.client is not client
    assert await backend.load(KEY, touch=False) is None  # a fresh client works


@pytest.mark.anyio
async def test_unused_client_closes_without_connecting(backend: FirestoreBackend) -> None:
    client = backend.client
    await close_loop_clients()
    assert client._firestore_api_internal is None


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"client": object()}, TypeError, r"client must be .*firestore\.AsyncClient\(project="),
        ({"client": "my-project"}, TypeError, r"not str"),
        ({"project": 5}, TypeError, r"project must be a non-empty str"),
        ({"project": ""}, TypeError, r"project must be"),
        ({"database": b"x"}, TypeError, r"database must be"),
        ({"collection": 5}, TypeError, r"collection must be a str"),
        ({"collection": "a/b"}, ValueError, r"collection must be .*'a/b'"),
        ({"collection": ""}, ValueError, r"collection must be"),
    ],
)
def test_bad_options(options: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        FirestoreBackend(**options)


def test_client_with_project_is_refused(emulator: FirestoreEmulator, tmp_path: Any) -> None:
    entry = {"cookie_name": "s", "session_type": "firestore",
             "client": firestore.AsyncClient(project="p"), "database": "other"}
    with pytest.raises(ValueError, match=r"SESSION_CONFIG\[0\] 'client': give client, or"):
        parse_config({"SESSION_CONFIG": [entry]}, instance_path=str(tmp_path))
    entry = {"cookie_name": "s", "session_type": "firestore", "collection": 3}
    with pytest.raises(ValueError, match=r"SESSION_CONFIG\[0\] 'collection'"):
        parse_config({"SESSION_CONFIG": [entry]}, instance_path=str(tmp_path))


@pytest.mark.anyio
async def test_unreachable_emulator_fails_then_recovers(
    backend: FirestoreBackend, emulator: FirestoreEmulator
) -> None:
    async def load_within(seconds: float) -> Record | None:
        with anyio.fail_after(seconds):
            return await backend.load(KEY, touch=False)

    await backend.store(KEY, {"a": b"1"}, (), permanent=False, ttl=600)
    with emulator.down(), pytest.raises((TimeoutError, ServiceUnavailable)):
        await load_within(3)
    # The emulator keeps no data across restarts; the same client reconnects.
    assert await backend.load(KEY, touch=False) is None
    await backend.store(KEY, {"a": b"2"}, (), permanent=False, ttl=600)
    assert await backend.load(KEY, touch=False) == Record({"a": b"2"})


# -- end to end -------------------------------------------------------------------------------


@pytest.mark.parametrize("framework", ["flask", "quart"])
def test_end_to_end(framework: str, project: str) -> None:
    entry = {"cookie_name": "sid", "session_type": "firestore", "project": project,
             "key_prefix": "app/1:"}
    driver = Driver(framework, {"SESSION_CONFIG": [entry]})
    try:
        assert driver.show() == {}
        driver.post("set", {"user.id": 7, "__cart__": ["a"], "when": "now"})
        assert driver.show() == {"user.id": "7", "__cart__": "['a']", "when": "'now'"}
        driver.post("append", {"__cart__": "b"})
        driver.post("del", {"when": None})
        driver.post("permanent")
        assert driver.show() == {"user.id": "7", "__cart__": "['a', 'b']"}
        sid = driver.cookies()["sid"]

        # A second client (another browser) must not see it; an unknown id is never adopted.
        other = Driver(framework, {"SESSION_CONFIG": [entry]})
        try:
            other.set_cookie("sid", sid[:-1] + ("A" if sid[-1] != "A" else "B"))
            assert other.show() == {}
        finally:
            other.close()

        driver.post("clear")
        assert driver.show() == {}
        assert "sid" not in driver.cookies()
    finally:
        driver.close()


@pytest.mark.parametrize("framework", ["flask", "quart"])
def test_end_to_end_drops_a_planted_value(framework: str, project: str) -> None:
    entry = {"cookie_name": "sid", "session_type": "firestore", "project": project}
    driver = Driver(framework, {"SESSION_CONFIG": [entry]})
    try:
        driver.post("set", {"a": 1, "b": 2})
        sid = driver.cookies()["sid"]

        async def plant() -> None:
            client = firestore.AsyncClient(project=project)
            doc = client.collection("sessions").document("session:" + sid)
            await doc.set({"f": {"b": b"\x80\x04pickle", "c": 3}}, merge=True)
            await client._firestore_api_internal.transport.close()  # type: ignore[attr-defined]

        anyio.run(plant)
        assert driver.show() == {"a": "1"}
    finally:
        driver.close()
