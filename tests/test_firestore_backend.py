"""Tests for the Firestore session store, against the official Firestore emulator."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import pytest
from google.api_core.exceptions import ServiceUnavailable
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore
from google.cloud.firestore_v1.async_document import AsyncDocumentReference
from google.cloud.firestore_v1.base_document import DocumentSnapshot

from apps import Driver
from asyncsessions.backends.base import Record, Write, close_loop_clients, masked
from asyncsessions.backends.firestore import FirestoreBackend
from asyncsessions.config import parse_config
from asyncsessions.ids import new_id
from servers import FirestoreEmulator
from storekit import create

SID = "AbC-_123" + "x" * 35
KEY = "session:" + SID
FUTURE = datetime.now(timezone.utc) + timedelta(days=1)


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
    assert await backend.store(KEY, create(fields, permanent=True))
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
    await backend.store(KEY, create(fields))
    assert await backend.load(KEY, touch=False) == Record(fields)
    stored_names = set((await stored(backend, KEY))["f"])
    assert {"a.b", "a%2Fb", "x`y", "__proto__%", "%", ".%", "a%252Fb"} <= stored_names

    # Field paths, not dotted strings: removing "a.b" leaves "a" and "b" alone and vice versa.
    assert await backend.store(KEY, Write({"a": b"1", "b": b"2"}, ["a.b", "x`y", "__proto__", ""]))
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
    await backend.store(key, create({"k": b"1"}))
    assert await backend.load(key, touch=False) == Record({"k": b"1"})
    assert (await stored(backend, doc_id))["f"] == {"k": "1"}


@pytest.mark.anyio
async def test_escaped_keys_stay_distinct(backend: FirestoreBackend) -> None:
    keys = ["a/b", "a%2Fb", "a%252Fb", "__x__", "__x__%"]
    for i, key in enumerate(keys):
        await backend.store(key, create({"i": str(i).encode()}))
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
async def test_update_merges_and_removes_fields(backend: FirestoreBackend) -> None:
    await backend.store(KEY, create({"a": b"1", "b": b"2"}, permanent=True))
    assert await backend.store(KEY, Write({"c": b"3"}, ["a", "missing"]))
    assert await backend.load(KEY, touch=False) == Record({"b": b"2", "c": b"3"}, True)
    # Only the flag changed: the fields must survive a write that names none of them.
    assert await backend.store(KEY, Write({}, (), False, 60))
    assert await backend.load(KEY, touch=False) == Record({"b": b"2", "c": b"3"}, False)
    assert (await stored(backend, KEY))["ttl"] == 60


@pytest.mark.anyio
async def test_concurrent_updates_keep_every_field(project: str) -> None:
    # Two backends, two clients: two worker processes writing one session at once.
    backends = [FirestoreBackend(project=project) for _ in range(2)]
    await backends[0].store(KEY, create({"base": b"0"}))

    async def set_field(i: int) -> None:
        write = Write({f"f{i}": str(i).encode()}, ["base"] if i == 7 else ())
        assert await backends[i % 2].store(KEY, write)

    try:
        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(set_field, i)
        record = await backends[1].load(KEY, touch=False)
    finally:
        await close_loop_clients()
    assert record == Record({f"f{i}": str(i).encode() for i in range(40)})


def rpcs(backend: FirestoreBackend, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the reads and commits the backend's client sends from now on."""
    api, calls = backend.client._firestore_api, []

    def counted(name: str) -> Any:
        real = getattr(api, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return real(*args, **kwargs)

        return call

    for name in ("batch_get_documents", "commit"):
        monkeypatch.setattr(api, name, counted(name))
    return calls


@pytest.mark.anyio
async def test_a_write_after_a_load_is_one_commit(
    backend: FirestoreBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    await backend.store(KEY, create({"a": b"1", "b": b"2"}))
    calls = rpcs(backend, monkeypatch)
    for write in (Write({"c": b"3"}), Write({}, ["a"]), Write({"d": b"4"}, (), True, 600)):
        assert await backend.load(KEY, touch=True) is not None
        assert await backend.store(KEY, write) is True
    assert calls == ["batch_get_documents", "commit"] * 3
    # Without a load first the write reads the record itself.
    other = FirestoreBackend(project=backend.client.project)
    assert await other.store(KEY, Write({"e": b"5"})) is True
    assert await backend.load(KEY, touch=False) == Record(
        {"b": b"2", "c": b"3", "d": b"4", "e": b"5"}, True
    )


# -- expiry -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_expired_document_reads_as_none(backend: FirestoreBackend) -> None:
    await backend.store(KEY, create({"a": b"1"}, ttl=1))
    await anyio.sleep(1.2)
    assert await backend.load(KEY, touch=True) is None
    assert await backend.load(KEY, touch=False) is None
    # Deleting is left to the TTL policy (up to a day late); nothing was refreshed meanwhile.
    data = await stored(backend, KEY)
    assert data["expires"] < datetime.now(timezone.utc)


async def update_time(backend: FirestoreBackend) -> datetime:
    written = (await snapshot(backend, KEY)).update_time
    assert written is not None
    return written


@pytest.mark.anyio
async def test_touch_writes_only_after_half_the_lifetime(backend: FirestoreBackend) -> None:
    await backend.store(KEY, create({"a": b"1"}, permanent=True, ttl=1000))
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
    await backend.store(KEY, create({"a": b"1"}, ttl=1000))
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
    meanwhile.append(lambda: backend.store(KEY, Write({}, (), True, 100_000)))
    assert await backend.load(KEY, touch=True) is not None
    left = (await stored(backend, KEY))["expires"] - datetime.now(timezone.utc)
    assert left > timedelta(seconds=99_000)

    # Another request deleted the session (logout) between our read and our refresh.
    await raw(backend, KEY).update({"expires": datetime.now(timezone.utc) + timedelta(seconds=9)})
    meanwhile.append(lambda: backend.delete(KEY))
    assert await backend.load(KEY, touch=True) is not None  # it was there when read
    assert not (await snapshot(backend, KEY)).exists


# -- documents this store did not write -------------------------------------------------------


def ours(**changes: Any) -> dict[str, Any]:
    """A record of this store's shape with ``changes`` (MISSING: the field left out)."""
    doc = {"f": {"a": '"x"'}, "expires": FUTURE, "ttl": 600, "permanent": False, **changes}
    return {k: v for k, v in doc.items() if v is not MISSING}


MISSING = object()
PICKLE = b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94."
FOREIGN: dict[str, dict[str, Any]] = {
    "another library's": {"id": SID, "val": PICKLE, "expiration": FUTURE},
    "only f": {"f": {"a": "1"}},
    "f not a map": ours(f="not a map"),
    "f a list": ours(f=["a"]),
    "f null": ours(f=None),
    "no expires": ours(expires=MISSING),
    "expires a string": ours(expires="tomorrow"),
    "expires a number": ours(expires=1e12),
    "ttl a string": ours(ttl="600"),
    "ttl negative": ours(ttl=-600),
    "ttl null": ours(ttl=None),
    "ttl a bool": ours(ttl=True),
    "ttl a map": ours(ttl={"s": 600}),
    "ttl a fraction": ours(ttl=600.5),
    "permanent a number": ours(permanent=1),
    "permanent a string": ours(permanent="yes"),
    "no permanent": ours(permanent=MISSING),
    "value a number": ours(f={"a": 5}),
    "value a map": ours(f={"a": {"x": "y"}}),
    "value null": ours(f={"a": None}),
    "name badly escaped": ours(f={"a%41": '"x"'}),
    "name with a stray %": ours(f={"x%": '"x"'}),
    "name not UTF-8 escaped": ours(f={"%FF": '"x"'}),
}


@pytest.mark.anyio
async def test_foreign_documents_read_as_no_session_and_only_a_new_session_replaces_them(
    backend: FirestoreBackend, caplog: pytest.LogCaptureFixture
) -> None:
    backend.bind(name="sid", instance_path="")
    for case, data in FOREIGN.items():
        key = "session:" + new_id()
        await raw(backend, key).set(data)
        before = await snapshot(backend, key)
        caplog.clear()
        with caplog.at_level(logging.WARNING, "asyncsessions"):
            assert await backend.load(key, touch=False) is None, case
            assert await backend.load(key, touch=True) is None, case
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2, case
        assert f"'sid': unreadable record {masked(key)!r}" in warnings[0].getMessage(), case
        # Neither a read nor an update from a request that loaded it touches it.
        assert await backend.store(key, Write({"b": b"1"}, ["a"])) is False, case
        assert await backend.store(key, Write({"b": b"1"}, (), True, 600)) is False, case
        after = await snapshot(backend, key)
        assert (after.to_dict(), after.update_time) == (before.to_dict(), before.update_time)
        # A new session under that key replaces it whole.
        assert await backend.store(key, create({"b": b"1"}, ttl=60)) is True, case
        data = await stored(backend, key)
        assert set(data) == {"f", "expires", "ttl", "permanent"}, case
        assert (data["f"], data["ttl"], data["permanent"]) == ({"b": "1"}, 60, False), case
        assert await backend.load(key, touch=True) == Record({"b": b"1"}), case


@pytest.mark.anyio
async def test_bytes_that_are_no_text_are_a_value(backend: FirestoreBackend) -> None:
    # What the store writes for a value that is not UTF-8; the engine drops what it can't read.
    await raw(backend, KEY).set(ours(f={"p": PICKLE, "ok": '"fine"'}))
    assert await backend.load(KEY, touch=True) == Record({"p": PICKLE, "ok": b'"fine"'})


@pytest.mark.parametrize("case", ["another library's", "f not a map", "ttl a string",
                                  "value a number"])
def test_foreign_document_is_a_fresh_session_with_a_warning(
    make_driver: Any, project: str, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    d = make_driver({"SESSION_CONFIG": [{
        "cookie_name": "sid", "session_type": "firestore", "project": project,
        "key_prefix": "app:",
    }]})
    sid = new_id()
    probe = firestore.Client(project=project)
    try:
        document = probe.collection("sessions").document("app:" + sid)
        document.set(FOREIGN[case])
        before = document.get()
        d.set_cookie("sid", sid)
        with caplog.at_level(logging.WARNING, "asyncsessions"):
            reply = d.get()
        assert (reply.status, reply.json) == (200, {})
        assert f"unreadable record {masked('app:' + sid)!r}" in caplog.text
        assert d.post("set", {"user": "ada"}).status == 200
        new = d.cookies()["sid"]
        assert new != sid  # a fresh session, never the foreign document's id
        written = probe.collection("sessions").document("app:" + new).get().to_dict()
        assert (written or {}).get("f") == {"user": '"ada"'}
        assert d.show() == {"user": "'ada'"}
        after = document.get()  # left as it was
        assert (after.to_dict(), after.update_time) == (before.to_dict(), before.update_time)
    finally:
        probe._firestore_api.transport.close()


# -- the CLI's count, expires_at and purge ----------------------------------------------------


def ago(seconds: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(seconds=seconds)


async def ids(backend: FirestoreBackend) -> set[str]:
    return {doc.id async for doc in backend.client.collection("sessions").select([]).stream()}


async def purged(backend: FirestoreBackend, *, batch: int, dry_run: bool) -> list[int]:
    return [step async for step in backend.purge("session:", batch=batch, dry_run=dry_run)]


@pytest.mark.anyio
async def test_purge_removes_dead_records_in_bounded_batches(backend: FirestoreBackend) -> None:
    for i in range(5):
        await raw(backend, f"other:dead:{i}").set(ours(expires=ago(60 - i)))  # any prefix
    await raw(backend, "foreign:dead").set({"val": PICKLE, "expires": ago(3600)})
    await backend.store(KEY, create({"a": b"1"}))
    steps = await purged(backend, batch=2, dry_run=True)
    assert sum(steps) == 5
    assert max(steps) <= 2
    assert len(await ids(backend)) == 7  # a dry run removes nothing
    steps = await purged(backend, batch=2, dry_run=False)
    assert sum(steps) == 5
    assert max(steps) <= 2
    assert await ids(backend) == {"foreign:dead", KEY}
    assert await purged(backend, batch=2, dry_run=False) == []
    assert await backend.load(KEY, touch=False) == Record({"a": b"1"})


@pytest.mark.anyio
async def test_purge_spares_a_record_written_after_its_query(
    backend: FirestoreBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    await raw(backend, "revived").set(ours(expires=ago(60)))
    await raw(backend, "dead").set(ours(expires=ago(60)))
    real = AsyncDocumentReference.delete

    async def revive_then_delete(self: AsyncDocumentReference, **kwargs: Any) -> Any:
        if self.id == "revived":  # as a write that read it just before its expiry would
            await raw(backend, "revived").update({"expires": FUTURE})
        return await real(self, **kwargs)

    monkeypatch.setattr(AsyncDocumentReference, "delete", revive_then_delete)
    assert await purged(backend, batch=10, dry_run=False) == [1]
    assert await ids(backend) == {"revived"}


@pytest.mark.anyio
async def test_count_and_expires_at(backend: FirestoreBackend) -> None:
    await backend.store(KEY, create({"a": b"1"}))
    await backend.store("session:" + "y" * 43, create({"a": b"1"}))
    await backend.store("other/" + SID, create({"a": b"1"}))  # escaped as other%2F...
    await raw(backend, "session:dead").set(ours(expires=ago(1)))
    assert await backend.count("session:") == 2
    assert await backend.count("other/") == 1
    assert await backend.count("none:") == 0

    await raw(backend, KEY).update({"expires": ago(-100)})  # a touching load would restart it
    at = await backend.expires_at(KEY)
    assert at is not None
    assert abs(at - (datetime.now(timezone.utc).timestamp() + 100)) < 2
    assert await backend.expires_at(KEY) == at  # read, never touched
    assert await backend.expires_at("session:nothing") is None
    await raw(backend, "session:foreign").set({"val": PICKLE, "expires": FUTURE})
    assert await backend.expires_at("session:foreign") is None


# -- clients ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_client_is_cloned_per_loop(project: str) -> None:
    given = firestore.AsyncClient(project=project, database="(default)")
    backend = FirestoreBackend(client=given, collection="apps/web/sessions")
    try:
        await backend.store(KEY, create({"a": b"1"}))
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
        await backend.store(KEY, create({"a": b"1"}))
        assert await backend.load(KEY, touch=False) == Record({"a": b"1"})
    finally:
        await close_loop_clients()


@pytest.mark.anyio
async def test_sync_client_is_adapted(project: str) -> None:
    given = firestore.Client(project=project)
    backend = FirestoreBackend(client=given)
    try:
        await backend.store(KEY, create({"a": b"1"}))
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
        ({"collection": "__sessions__"}, ValueError, r"collection: '__sessions__' is no id"),
        ({"collection": "apps/../sessions"}, ValueError, r"collection: '\.\.' is no id"),
        ({"collection": "s" * 1501}, ValueError, r"at most 1500 bytes"),
    ],
)
def test_bad_options(options: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        FirestoreBackend(**options)


@pytest.mark.parametrize(("options", "location"), [
    (dict, "firestore://(project from the environment)/(default)/sessions"),
    (lambda: {"project": "p", "database": "d", "collection": "apps/web/sessions"},
     "firestore://p/d/apps/web/sessions"),
    (lambda: {"client": firestore.AsyncClient(project="q", credentials=AnonymousCredentials())},
     "firestore://q/(default)/sessions"),
], ids=["environment", "options", "client"])
def test_location_names_project_database_and_collection(
    options: Callable[[], dict[str, Any]], location: str
) -> None:
    # The clients are never used: nothing connects, nothing needs closing.
    assert FirestoreBackend(**options()).location == location


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

    await backend.store(KEY, create({"a": b"1"}))
    with emulator.down(), pytest.raises((TimeoutError, ServiceUnavailable)):
        await load_within(3)
    # The emulator keeps no data across restarts; the same client reconnects.
    assert await backend.load(KEY, touch=False) is None
    await backend.store(KEY, create({"a": b"2"}))
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
            await doc.set({"f": {"b": b"\x80\x04pickle"}}, merge=True)
            await client._firestore_api_internal.transport.close()  # type: ignore[attr-defined]

        anyio.run(plant)
        assert driver.show() == {"a": "1"}
        driver.post("set", {"c": 3})  # the next write removes the planted value
        assert driver.show() == {"a": "1", "c": "3"}
    finally:
        driver.close()
