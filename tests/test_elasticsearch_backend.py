"""Tests for the Elasticsearch / OpenSearch session store, against osmem-server.

osmem-server (tests/server_opensearch.py) stands in for both products. What differs from the
real servers, as far as these tests go:

- Its search sees every write at once; real servers search what the last refresh (every
  second by default) made visible, so a real cleanup misses documents that expired less than
  a refresh ago until its next run. The tests never rely on a refresh for gets (real-time on
  every server) and call ``_refresh`` before counting.
- Its ``/`` answers with OpenSearch 3.8's version *and* Elasticsearch's product header
  (``X-Elastic-Product: Elasticsearch``), so Elasticsearch's client (which checks that header)
  talks to it; a real OpenSearch is refused by that client, which is why the store defaults
  to plain HTTP and uses a vendor's client only when given one.
- It refuses the compatibility media type (``application/vnd.elasticsearch+json;
  compatible-with=9``) that Elasticsearch's client sends as the Content-Type of every request
  with a body (406, as a real OpenSearch does; a real Elasticsearch of the client's major
  version takes it). The tests through that client switch the client's conversion to that
  media type off (``plain_json``), so they check the store's use of the client, not the
  client's negotiation with a real Elasticsearch.
- It reports two shard copies for a write on one node (``_shards.total: 2``); nothing here
  reads that.
- A mapping update that would switch ``enabled`` on an existing ``f`` is refused with 500
  ``mapper_exception`` (Elasticsearch's MapperException, whose status has varied by
  version); the store takes any 4xx/5xx from index creation as a refusal it reports.

Otherwise it answered every call the store makes as the reference documentation of both
products describes: conditional index/delete on ``if_seq_no``/``if_primary_term`` (409
``version_conflict_engine_exception``, also for a missing document), 404 with
``found: false`` for a missing document and ``index_not_found_exception`` for a missing
index, 400 ``resource_already_exists_exception``, mappings with ``enabled: false`` objects and
``dynamic: false``, and ``_delete_by_query`` with ``max_docs`` and ``conflicts=proceed``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import elasticsearch
import opensearchpy
import pytest

from apps import Driver
from asyncsessions.backends import elasticsearch as es_module
from asyncsessions.backends.base import Record, Write, close_loop_clients, masked
from asyncsessions.backends.elasticsearch import ElasticsearchBackend
from asyncsessions.config import parse_config
from asyncsessions.ids import new_id
from server_opensearch import OpenSearchServer
from serverkit import free_port
from storekit import create

KEY = "session:" + "AbC-_123" + "x" * 35


def now_ms() -> int:
    return int(time.time() * 1000)


class Probe:
    """Raw REST calls to the server, around the store under test."""

    def __init__(self, url: str, index: str) -> None:
        self.url = url
        self.index = index

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def path(self, key: str) -> str:
        return f"/{self.index}/_doc/{urllib.parse.quote(key, safe='')}"

    def get(self, key: str) -> dict[str, Any] | None:
        status, body = self.call("GET", self.path(key))
        return body if status == 200 and body.get("found") else None

    def source(self, key: str) -> dict[str, Any]:
        found = self.get(key)
        assert found is not None, f"no document {key!r}"
        return dict(found["_source"])

    def put(self, key: str, source: dict[str, Any]) -> None:
        status, body = self.call("PUT", self.path(key), source)
        assert status in (200, 201), body

    def edit(self, key: str, **changes: Any) -> None:
        self.put(key, {**self.source(key), **changes})

    def mapping(self) -> dict[str, Any]:
        status, body = self.call("GET", f"/{self.index}/_mapping")
        assert status == 200, body
        return dict(body[self.index]["mappings"])

    def count(self) -> int:
        self.call("POST", f"/{self.index}/_refresh")
        status, body = self.call("GET", f"/{self.index}/_count")
        assert status == 200, body
        return int(body["count"])


@pytest.fixture
def index() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def probe(opensearch_server: OpenSearchServer, index: str) -> Probe:
    return Probe(opensearch_server.url, index)


@pytest.fixture
async def backend(opensearch_server: OpenSearchServer,
                  index: str) -> AsyncIterator[ElasticsearchBackend]:
    backend = ElasticsearchBackend(url=opensearch_server.url, index=index)
    yield backend
    await close_loop_clients()


class Spy:
    """The store's HTTP client for this loop, recording each call (and maybe meddling first)."""

    def __init__(self, inner: Any,
                 before: Callable[[str, str], Awaitable[None] | None] | None) -> None:
        self.inner = inner
        self.before = before
        self.calls: list[str] = []

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        parts = path.split("/")
        self.calls.append(f"{method} {parts[2] if len(parts) > 2 else 'index'}")
        if self.before is not None:
            result = self.before(method, path)
            if result is not None:
                await result
        return await self.inner.request(method, path, **kwargs)

    async def close(self) -> None:
        await self.inner.close()

    def take(self) -> list[str]:
        calls, self.calls = self.calls, []
        return calls


def spy(backend: ElasticsearchBackend,
        before: Callable[[str, str], Awaitable[None] | None] | None = None) -> Spy:
    conn = backend.client
    wrapper = Spy(conn.http, before)
    conn.http = wrapper
    return wrapper


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_round_trip_and_layout(backend: ElasticsearchBackend, probe: Probe) -> None:
    fields = {"user_id": b"42", "name": '"Zo\u00eb"'.encode()}
    assert await backend.store(KEY, create(fields, permanent=True))
    assert await backend.load(KEY, touch=False) == Record(fields, permanent=True)
    assert await backend.load("session:" + "y" * 43, touch=False) is None

    source = probe.source(KEY)
    assert source["f"] == {"user_id": "42", "name": '"Zo\u00eb"'}
    assert (source["ttl"], source["permanent"]) == (600, True)
    assert 590_000 < source["expires"] - now_ms() <= 600_000
    # The index was made at the first write, with field names out of the mapping.
    assert probe.mapping() == {
        "dynamic": "false",
        "properties": {"expires": {"type": "long"}, "f": {"type": "object", "enabled": False}},
    }


NAMES = ["a.b", "a/b", ".", "..", "", " ", "_id", "_source", "f", "expires", "zo\u00eb",
         "\u65e5\u672c", "\U0001f600", "a\nb", "x" * 300, "%", "$where", "a..b", ".a", "a."]


@pytest.mark.anyio
async def test_any_field_name_round_trips_and_never_reaches_the_mapping(
    backend: ElasticsearchBackend, probe: Probe
) -> None:
    fields = {name: f'"{i}"'.encode() for i, name in enumerate(NAMES)}
    assert await backend.store(KEY, create(fields))
    assert await backend.load(KEY, touch=False) == Record(fields)
    assert await backend.store(KEY, Write({"a": b"1"}, ["a.b", "", "."]))
    record = await backend.load(KEY, touch=False)
    assert record is not None
    assert record.fields == {
        **{k: v for k, v in fields.items() if k not in {"a.b", "", "."}}, "a": b"1"
    }
    assert set(probe.mapping()["properties"]) == {"f", "expires"}


@pytest.mark.anyio
@pytest.mark.parametrize("key", ["s/1", "a?b#c", "sp ace", "100%", "+plus", "p:" + "\u00e9" * 20,
                                 "..", "x" * 500])
async def test_keys_are_ids_as_they_are(backend: ElasticsearchBackend, probe: Probe,
                                        key: str) -> None:
    await backend.store(key, create({"k": b"1"}))
    assert await backend.load(key, touch=False) == Record({"k": b"1"})
    found = probe.get(key)
    assert found is not None
    assert found["_id"] == key
    await backend.delete(key)
    assert probe.get(key) is None


def test_key_prefix_must_leave_room_for_the_id(opensearch_server: OpenSearchServer) -> None:
    entry = {"cookie_name": "s", "session_type": ElasticsearchBackend,
             "url": opensearch_server.url, "key_prefix": "p" * 470}
    with pytest.raises(ValueError, match=r"'key_prefix': too long: keys must fit in 512"):
        parse_config({"SESSION_CONFIG": [entry]}, instance_path="/tmp")


@pytest.mark.anyio
async def test_update_merges_and_removes_fields(backend: ElasticsearchBackend) -> None:
    await backend.store(KEY, create({"a": b"1", "b": b"2", "c": b"3"}))
    assert await backend.store(KEY, Write({"b": b"20", "d": b"4"}, ["c"]))
    assert await backend.load(KEY, touch=False) == Record({"a": b"1", "b": b"20", "d": b"4"})


@pytest.mark.anyio
async def test_create_replaces_whatever_was_under_the_key(backend: ElasticsearchBackend,
                                                          probe: Probe) -> None:
    await backend.store(KEY, create({"a": b"1", "b": b"2"}, permanent=True, ttl=900))
    assert await backend.store(KEY, create({"c": b"3"}, ttl=60))
    assert await backend.load(KEY, touch=False) == Record({"c": b"3"})
    source = probe.source(KEY)
    assert (source["ttl"], source["permanent"]) == (60, False)


@pytest.mark.anyio
async def test_a_write_after_a_load_is_one_request(backend: ElasticsearchBackend) -> None:
    await backend.store(KEY, create({"a": b"1"}))
    calls = spy(backend)
    assert await backend.load(KEY, touch=True) == Record({"a": b"1"})
    assert calls.take() == ["GET _doc"]  # read-only: one get, fresh: no touch
    assert await backend.store(KEY, Write({"b": b"2"}))
    assert calls.take() == ["PUT _doc"]  # conditional on the loaded version, no second get
    # Without a load in this process, the write reads first.
    other = ElasticsearchBackend(url=backend.location.rsplit("/", 1)[0], index=backend.index)
    other_calls = spy(other)
    assert await other.store(KEY, Write({"c": b"3"}))
    assert other_calls.take() == ["GET _doc", "PUT _doc"]
    assert await backend.load(KEY, touch=False) == Record({"a": b"1", "b": b"2", "c": b"3"})


# -- the contract's rules ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_update_after_a_delete_writes_nothing(backend: ElasticsearchBackend,
                                                    probe: Probe) -> None:
    await backend.store(KEY, create({"a": b"1"}))
    await backend.delete(KEY)
    assert await backend.store(KEY, Write({"b": b"2"})) is False
    assert await backend.store(KEY, Write({"b": b"2"}, (), True, 600)) is False
    assert probe.get(KEY) is None
    # Deleted by someone else after this process loaded it: the conditional write is refused
    # (409 for a missing document), the reread finds nothing, and nothing is created.
    await backend.store(KEY, create({"a": b"1"}))
    assert await backend.load(KEY, touch=False) is not None
    probe.call("DELETE", probe.path(KEY))
    assert await backend.store(KEY, Write({"b": b"2"}, ["a"])) is False
    assert probe.get(KEY) is None


@pytest.mark.anyio
async def test_emptying_deletes_the_record(backend: ElasticsearchBackend, probe: Probe) -> None:
    await backend.store(KEY, create({"a": b"1", "b": b"2"}))
    assert await backend.load(KEY, touch=False) is not None
    calls = spy(backend)
    assert await backend.store(KEY, Write({}, ["a", "b"]))
    assert calls.take() == ["DELETE _doc"]
    assert probe.get(KEY) is None
    assert await backend.load(KEY, touch=False) is None


@pytest.mark.anyio
async def test_a_field_written_concurrently_keeps_an_emptied_record(
    backend: ElasticsearchBackend, probe: Probe
) -> None:
    await backend.store(KEY, create({"a": b"1"}))
    assert await backend.load(KEY, touch=False) is not None
    source = probe.source(KEY)
    probe.put(KEY, {**source, "f": {**source["f"], "late": "2"}})  # another request's field
    calls = spy(backend)
    assert await backend.store(KEY, Write({}, ["a"]))
    # The conditional delete met the newer version; the reread kept the newcomer.
    assert calls.take() == ["DELETE _doc", "GET _doc", "PUT _doc"]
    assert await backend.load(KEY, touch=False) == Record({"late": b"2"})


@pytest.mark.anyio
async def test_permanent_none_keeps_the_flag_and_restarts_its_own_lifetime(
    backend: ElasticsearchBackend, probe: Probe
) -> None:
    await backend.store(KEY, create({"a": b"1"}, permanent=False, ttl=600))
    assert await backend.load(KEY, touch=False) is not None
    # Another process made it permanent for 31 days after this one loaded it.
    other = ElasticsearchBackend(url=backend.location.rsplit("/", 1)[0], index=backend.index)
    assert await other.store(KEY, Write({}, (), True, 31 * 86400))
    assert await backend.store(KEY, Write({"b": b"2"}))  # did not touch the flag
    assert await backend.load(KEY, touch=False) == Record({"a": b"1", "b": b"2"}, True)
    source = probe.source(KEY)
    assert (source["permanent"], source["ttl"]) == (True, 31 * 86400)
    assert 31 * 86400_000 - 10_000 < source["expires"] - now_ms() <= 31 * 86400_000
    # Setting the flag stores it with the write's lifetime.
    assert await backend.store(KEY, Write({}, (), False, 120))
    source = probe.source(KEY)
    assert (source["permanent"], source["ttl"]) == (False, 120)
    assert 110_000 < source["expires"] - now_ms() <= 120_000


@pytest.mark.anyio
async def test_expired_record_is_neither_read_nor_revived(backend: ElasticsearchBackend,
                                                          probe: Probe) -> None:
    await backend.store(KEY, create({"a": b"1"}, ttl=600))
    assert await backend.load(KEY, touch=False) is not None  # remembered by this process
    probe.edit(KEY, expires=now_ms() - 1)
    before = probe.get(KEY)
    assert await backend.load(KEY, touch=True) is None
    assert await backend.store(KEY, Write({"b": b"2"})) is False
    assert await backend.store(KEY, Write({}, (), True, 600)) is False
    assert probe.get(KEY) == before  # left for the cleanup, unchanged


@pytest.mark.anyio
async def test_expiry_is_checked_on_read_as_time_passes(backend: ElasticsearchBackend) -> None:
    await backend.store(KEY, create({"a": b"1"}, ttl=1))
    assert await backend.load(KEY, touch=False) == Record({"a": b"1"})
    await asyncio.sleep(1.1)
    assert await backend.load(KEY, touch=True) is None
    assert await backend.store(KEY, Write({"b": b"2"})) is False


@pytest.mark.anyio
async def test_touch_writes_only_after_half_the_lifetime(backend: ElasticsearchBackend,
                                                         probe: Probe) -> None:
    await backend.store(KEY, create({"a": b"1"}, ttl=600))
    calls = spy(backend)
    assert await backend.load(KEY, touch=True) == Record({"a": b"1"})
    assert calls.take() == ["GET _doc"]
    probe.edit(KEY, expires=now_ms() + 200_000)  # two thirds of the lifetime gone
    assert await backend.load(KEY, touch=False) == Record({"a": b"1"})
    assert calls.take() == ["GET _doc"]  # no touch, no write
    assert await backend.load(KEY, touch=True) == Record({"a": b"1"})
    assert calls.take() == ["GET _doc", "PUT _doc"]
    source = probe.source(KEY)
    assert 590_000 < source["expires"] - now_ms() <= 600_000
    # The touch's new version is known: the next write needs no get.
    assert await backend.store(KEY, Write({"b": b"2"}))
    assert calls.take() == ["PUT _doc"]


@pytest.mark.anyio
async def test_touch_never_resurrects_nor_overrides(backend: ElasticsearchBackend,
                                                    probe: Probe) -> None:
    await backend.store(KEY, create({"a": b"1"}, ttl=600))
    probe.edit(KEY, expires=now_ms() + 100_000)

    def logout(method: str, path: str) -> None:
        if method == "PUT":
            probe.call("DELETE", probe.path(KEY))  # between the touch's get and its write

    meddling = spy(backend, logout)
    assert await backend.load(KEY, touch=True) == Record({"a": b"1"})
    assert probe.get(KEY) is None
    backend.client.http = meddling.inner

    await backend.store(KEY, create({"a": b"1"}, ttl=600))
    probe.edit(KEY, expires=now_ms() + 100_000)

    def write(method: str, path: str) -> None:
        if method == "PUT":
            probe.edit(KEY, ttl=60, expires=now_ms() + 60_000)  # a write that set its own

    spy(backend, write)
    assert await backend.load(KEY, touch=True) == Record({"a": b"1"})
    source = probe.source(KEY)
    assert source["ttl"] == 60
    assert source["expires"] < now_ms() + 61_000


@pytest.mark.anyio
async def test_fifty_concurrent_writers_of_different_fields(
    opensearch_server: OpenSearchServer, index: str
) -> None:
    # Fifty processes' stores, each having loaded the same version: all but one conflict.
    stores = [ElasticsearchBackend(url=opensearch_server.url, index=index) for _ in range(50)]
    await stores[0].store(KEY, create({"base": b"0"}))
    for store in stores:
        assert await store.load(KEY, touch=False) == Record({"base": b"0"})
    results = await asyncio.gather(
        *(store.store(KEY, Write({f"f{i}": str(i).encode()}, ["base"] if i == 7 else ()))
          for i, store in enumerate(stores))
    )
    assert results == [True] * 50
    record = await stores[0].load(KEY, touch=False)
    assert record == Record({f"f{i}": str(i).encode() for i in range(50)})
    # One store, fifty concurrent writes of its own.
    results = await asyncio.gather(
        *(stores[0].store(KEY, Write({f"g{i}": b"1"})) for i in range(50))
    )
    assert results == [True] * 50
    record = await stores[0].load(KEY, touch=False)
    assert record is not None
    assert len(record.fields) == 100
    await close_loop_clients()


FOREIGN: dict[str, dict[str, Any]] = {
    "another library's": {"data": "gASVpickle", "expiry": "2030-01-01T00:00:00Z"},
    "f not an object": {"f": "x", "permanent": False, "ttl": 60, "expires": 0},
    "ttl a string": {"f": {}, "permanent": False, "ttl": "60", "expires": 0},
    "value a number": {"f": {"a": 1}, "permanent": False, "ttl": 60, "expires": 0},
    "permanent 0": {"f": {"a": "1"}, "permanent": 0, "ttl": 60, "expires": 0},
    "one name more": {"f": {"a": "1"}, "permanent": False, "ttl": 60, "expires": 0, "x": 1},
    "expires missing": {"f": {"a": "1"}, "permanent": False, "ttl": 60},
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", list(FOREIGN))
async def test_foreign_documents_read_as_no_session_and_only_a_new_session_replaces_them(
    backend: ElasticsearchBackend, probe: Probe, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    planted = dict(FOREIGN[case])
    if "expires" in planted:
        planted["expires"] = now_ms() + 600_000
    await backend.store("other", create({"x": b"1"}))  # the index, with our mapping
    probe.put(KEY, planted)
    before = probe.get(KEY)
    with caplog.at_level(logging.WARNING, "asyncsessions"):
        assert await backend.load(KEY, touch=True) is None
    [warning] = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert f"unreadable record {masked(KEY)!r}" in warning.getMessage()
    assert KEY not in warning.getMessage()
    # Neither a read nor an update from a request that loaded it changes it.
    assert await backend.store(KEY, Write({"b": b"1"}, ["a"])) is False
    assert await backend.store(KEY, Write({}, (), True, 600)) is False
    assert await backend.store(KEY, Write({}, ["a"])) is False
    assert probe.get(KEY) == before
    # A new session under that key replaces it whole.
    assert await backend.store(KEY, create({"b": b"1"}, ttl=60))
    source = probe.source(KEY)
    assert set(source) == {"f", "permanent", "ttl", "expires"}
    assert (source["f"], source["permanent"], source["ttl"]) == ({"b": "1"}, False, 60)
    assert await backend.load(KEY, touch=True) == Record({"b": b"1"})


# -- the index and the cleanup ----------------------------------------------------------------


@pytest.mark.anyio
async def test_index_is_made_once_per_store(backend: ElasticsearchBackend) -> None:
    calls = spy(backend)
    await backend.store(KEY, create({"a": b"1"}))
    await backend.store(KEY + "2", create({"a": b"1"}))
    assert calls.take() == ["PUT index", "PUT _doc", "PUT _doc"]
    # A second store (another process) finds it made and puts its mapping on it.
    other = ElasticsearchBackend(url=backend.location.rsplit("/", 1)[0], index=backend.index)
    other_calls = spy(other)
    await other.store(KEY, create({"a": b"1"}))
    assert other_calls.take() == ["PUT index", "PUT _mapping", "PUT _doc"]


@pytest.mark.anyio
async def test_an_existing_index_gets_the_mapping(opensearch_server: OpenSearchServer,
                                                  index: str, probe: Probe) -> None:
    status, _ = probe.call("PUT", f"/{index}", {"settings": {"number_of_replicas": 0}})
    assert status == 200
    backend = ElasticsearchBackend(url=opensearch_server.url, index=index)
    await backend.store(KEY, create({"a.b": b"1"}))
    assert probe.mapping()["properties"]["f"] == {"type": "object", "enabled": False}
    await close_loop_clients()


@pytest.mark.anyio
async def test_a_conflicting_mapping_is_reported_not_raised(
    opensearch_server: OpenSearchServer, index: str, probe: Probe,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An index auto-created by a write of dynamic mapping: f's names became fields.
    probe.put("seed", {"f": {"user": "x"}, "expires": 1})
    backend = ElasticsearchBackend(url=opensearch_server.url, index=index)
    with caplog.at_level(logging.WARNING, "asyncsessions"):
        assert await backend.store(KEY, create({"a": b"1"}))
    assert f"could not create index {index!r} with its mapping" in caplog.text
    assert await backend.load(KEY, touch=False) == Record({"a": b"1"})
    await close_loop_clients()


@pytest.mark.anyio
async def test_create_index_false_leaves_the_index_alone(opensearch_server: OpenSearchServer,
                                                         index: str, probe: Probe) -> None:
    probe.call("PUT", f"/{index}", {"mappings": {"properties": {"expires": {"type": "long"}}}})
    backend = ElasticsearchBackend(url=opensearch_server.url, index=index, create_index=False)
    calls = spy(backend)
    await backend.store(KEY, create({"a": b"1"}))
    assert calls.take() == ["PUT _doc"]
    await close_loop_clients()


@pytest.mark.anyio
async def test_cleanup_deletes_expired_documents_in_bounded_batches(
    opensearch_server: OpenSearchServer, index: str, probe: Probe
) -> None:
    backend = ElasticsearchBackend(url=opensearch_server.url, index=index, cleanup_every=2)
    await backend.store("live", create({"a": b"1"}))  # write 1: makes the index
    for i in range(7):
        probe.put(f"dead{i}", {"f": {"a": "1"}, "permanent": False, "ttl": 1,
                               "expires": now_ms() - 1000})
    probe.put("foreign", {"note": "no expires: never a cleanup's"})
    assert probe.count() == 9
    await backend.store("live", Write({"b": b"2"}))  # write 2: a cleanup of up to 4
    task = backend.client.cleanup
    assert task is not None
    await task
    assert probe.count() == 5
    await backend.store("live", Write({"c": b"3"}))
    await backend.store("live", Write({"d": b"4"}))  # write 4: the next batch
    task = backend.client.cleanup
    assert task is not None
    await task
    assert probe.count() == 2
    assert probe.get("live") is not None
    assert probe.get("foreign") is not None
    await close_loop_clients()


async def purged(backend: ElasticsearchBackend, *, batch: int, dry_run: bool) -> list[int]:
    return [step async for step in backend.purge("session:", batch=batch, dry_run=dry_run)]


def plant_dead(probe: Probe, key: str) -> None:
    probe.put(key, {"f": {"a": "1"}, "permanent": False, "ttl": 1, "expires": now_ms() - 1000})


@pytest.mark.anyio
async def test_purge_removes_expired_documents_in_bounded_batches(
    backend: ElasticsearchBackend, probe: Probe
) -> None:
    assert await purged(backend, batch=2, dry_run=True) == []  # no index yet
    assert await purged(backend, batch=2, dry_run=False) == []
    await backend.store(KEY, create({"a": b"1"}))
    for i in range(5):
        plant_dead(probe, f"other:dead{i}")  # any prefix: dead whatever its key
    probe.put("foreign", {"note": "no expires: never purged"})
    assert await purged(backend, batch=2, dry_run=True) == [5]
    assert probe.count() == 7  # a dry run removes nothing
    assert await purged(backend, batch=2, dry_run=False) == [2, 2, 1]
    assert probe.count() == 2
    assert probe.get("foreign") is not None
    assert await backend.load(KEY, touch=False) == Record({"a": b"1"})
    assert await purged(backend, batch=2, dry_run=False) == []


@pytest.mark.anyio
async def test_count_by_prefix_and_expires_at(
    backend: ElasticsearchBackend, probe: Probe, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await backend.count("session:") == 0  # no index yet
    monkeypatch.setattr(es_module, "_SCROLL_SIZE", 2)  # several pages of the scroll
    first = "session:0" + "x" * 42
    for i in range(3):
        await backend.store(f"session:{i}" + "x" * 42, create({"a": b"1"}))
    await backend.store("other:" + "x" * 43, create({"a": b"1"}))
    plant_dead(probe, "session:dead")
    calls = spy(backend)
    assert await backend.count("session:") == 3
    assert calls.take()[-1] == "DELETE scroll"  # the server's scroll is let go
    assert await backend.count("other:") == 1
    assert await backend.count("none:") == 0

    probe.edit(first, expires=now_ms() + 100_000)  # a touching load would restart it
    at = await backend.expires_at(first)
    assert at is not None
    assert abs(at - (time.time() + 100)) < 2
    assert await backend.expires_at(first) == at  # read, never touched
    assert await backend.expires_at("session:nothing") is None
    probe.put("session:foreign", {"note": "not ours"})
    assert await backend.expires_at("session:foreign") is None


@pytest.mark.anyio
async def test_cleanup_failure_is_logged(opensearch_server: OpenSearchServer, index: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
    backend = ElasticsearchBackend(url=opensearch_server.url, index=index, cleanup_every=1)

    def fail(method: str, path: str) -> None:
        if path.endswith("_delete_by_query"):
            raise aiohttp.ClientConnectionError("cut")

    spy(backend, fail)
    with caplog.at_level(logging.WARNING):
        assert await backend.store(KEY, create({"a": b"1"}))
        task = backend.client.cleanup
        assert task is not None
        await asyncio.gather(task, return_exceptions=True)
    assert "session cleanup in" in caplog.text
    assert "ClientConnectionError: cut" in caplog.text
    await close_loop_clients()


@pytest.mark.anyio
async def test_closing_cancels_a_running_cleanup(backend: ElasticsearchBackend) -> None:
    backend.cleanup_every = 1
    started = asyncio.Event()

    async def hang(method: str, path: str) -> None:
        if path.endswith("_delete_by_query"):
            started.set()
            await asyncio.sleep(60)

    spy(backend, hang)
    await backend.store(KEY, create({"a": b"1"}))
    task = backend.client.cleanup
    assert task is not None
    await started.wait()
    await close_loop_clients()
    assert task.cancelled()


# -- clients ----------------------------------------------------------------------------------


async def exercise(backend: ElasticsearchBackend, other: ElasticsearchBackend) -> None:
    """The contract's core through one store (and another process's): every kind of request."""
    assert await backend.store(KEY, create({"a": b"1", "b": b"2"}))
    assert await backend.load(KEY, touch=True) == Record({"a": b"1", "b": b"2"})
    assert await other.store(KEY, Write({"c": b"3"}, ["a"]))
    assert await backend.store(KEY, Write({"d": b"4"}))  # conflicts once, then merges
    assert await backend.load(KEY, touch=False) == Record({"b": b"2", "c": b"3", "d": b"4"})
    results = await asyncio.gather(*(backend.store(KEY, Write({f"g{i}": b"1"}))
                                     for i in range(10)))
    assert results == [True] * 10
    assert await backend.store(KEY, Write({}, ["b", "c", "d", *(f"g{i}" for i in range(10))]))
    assert await backend.load(KEY, touch=False) is None
    assert await backend.store(KEY, Write({"x": b"1"})) is False
    await backend.delete(KEY)  # a missing record is no error
    backend.cleanup_every = 1
    assert await backend.store(KEY, create({"a": b"1"}))
    task = backend.client.cleanup
    assert task is not None
    await task


def client_of(kind: str, url: str) -> Any:
    if kind == "AsyncElasticsearch":
        return elasticsearch.AsyncElasticsearch(url)
    if kind == "Elasticsearch":
        return elasticsearch.Elasticsearch(url)
    if kind == "AsyncOpenSearch":
        return opensearchpy.AsyncOpenSearch(url)
    return opensearchpy.OpenSearch(url)


CLIENTS = ["AsyncElasticsearch", "Elasticsearch", "AsyncOpenSearch", "OpenSearch"]


@pytest.fixture
def plain_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """Elasticsearch's clients send application/json as it is (see the top of this file)."""
    never = re.compile("(?!)(x)")  # matches nothing; keeps the group the template names
    monkeypatch.setattr(elasticsearch._async.client._base, "_COMPAT_MIMETYPE_RE", never)
    monkeypatch.setattr(elasticsearch._sync.client._base, "_COMPAT_MIMETYPE_RE", never)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.usefixtures("plain_json")
async def test_vendor_clients(opensearch_server: OpenSearchServer, index: str,
                              kind: str) -> None:
    given = client_of(kind, opensearch_server.url)
    backend = ElasticsearchBackend(client=given, index=index)
    assert backend.location == f"{opensearch_server.url}/{index}"
    await exercise(backend, ElasticsearchBackend(client=given, index=index))
    # The store's own client for this loop, of the vendor's async kind, not the given one.
    http = backend.client.http
    inner = getattr(http, "_client", None)
    assert inner is not None
    assert inner is not given
    assert type(inner).__name__ in ("AsyncElasticsearch", "AsyncOpenSearch")
    await close_loop_clients()
    closing = given.close()
    if asyncio.iscoroutine(closing):
        await closing


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.usefixtures("plain_json")
def test_a_client_per_event_loop(opensearch_server: OpenSearchServer, index: str,
                                 kind: str) -> None:
    given = client_of(kind, opensearch_server.url)
    backend = ElasticsearchBackend(client=given, index=index)

    async def use() -> tuple[Record | None, Any]:
        await backend.store(KEY, create({"a": b"1"}))
        try:
            return await backend.load(KEY, touch=True), backend.client
        finally:
            await close_loop_clients()

    first, second = asyncio.run(use()), asyncio.run(use())
    assert first[0] == second[0] == Record({"a": b"1"})
    assert first[1] is not second[1]
    if not kind.startswith("Async"):
        given.close()


def test_elasticsearch_client_keeps_its_auth_headers(opensearch_server: OpenSearchServer,
                                                     index: str) -> None:
    given = elasticsearch.AsyncElasticsearch(opensearch_server.url, basic_auth=("ada", "pw"),
                                             request_timeout=7)
    backend = ElasticsearchBackend(client=given, index=index)

    async def clone() -> Any:
        try:
            return backend.client.http._client  # type: ignore[attr-defined]
        finally:
            await close_loop_clients()

    made = asyncio.run(clone())
    assert made._headers["authorization"] == given._headers["authorization"]
    assert made._request_timeout == 7


@pytest.mark.anyio
async def test_hosts_fail_over_to_a_node_that_answers(opensearch_server: OpenSearchServer,
                                                      index: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    backend = ElasticsearchBackend(hosts=[closed, opensearch_server.url], index=index)
    for _ in range(3):  # whichever node a request starts with
        assert await backend.store(KEY, create({"a": b"1"}))
        assert await backend.load(KEY, touch=False) == Record({"a": b"1"})
    await close_loop_clients()


@pytest.mark.anyio
async def test_unreachable_server_fails_with_the_drivers_error(index: str) -> None:
    backend = ElasticsearchBackend(url=f"http://127.0.0.1:{free_port()}", index=index)
    with pytest.raises(aiohttp.ClientConnectorError):
        await backend.load(KEY, touch=False)
    await close_loop_clients()


@pytest.mark.anyio
async def test_server_errors_carry_the_reason_but_no_session_id_nor_credentials(
    opensearch_server: OpenSearchServer, index: str, probe: Probe
) -> None:
    # An index where f cannot take an object: the server refuses the document.
    probe.call("PUT", f"/{index}", {"mappings": {"properties": {"f": {"type": "keyword"}}}})
    url = opensearch_server.url.replace("http://", "http://ada:secret@")
    backend = ElasticsearchBackend(url=url, index=index, create_index=False)
    with pytest.raises(aiohttp.ClientResponseError) as raised:
        await backend.store(KEY, create({"a": b"1"}))
    error = raised.value
    assert error.status == 400
    assert error.message  # the server's own reason
    text = f"{error} {error!r}"
    assert KEY not in text
    assert urllib.parse.quote(masked(KEY), safe="") in str(error)
    assert "secret" not in text
    assert "Basic" not in text
    await close_loop_clients()


@pytest.mark.anyio
async def test_driver_errors_that_quote_the_url_name_the_key_masked(
    backend: ElasticsearchBackend,
) -> None:
    def cut(method: str, path: str) -> None:
        # What aiohttp raises when the connection drops while a request body is sent.
        if "/_doc/" in path:
            raise aiohttp.ClientOSError(None, f"Can not write request body for http://h{path}")

    spy(backend, cut)
    with pytest.raises(ConnectionError) as raised:
        await backend.store(KEY, create({"a": b"1"}))
    text = str(raised.value)
    assert text.startswith("ClientOSError: [Errno None] Can not write request body for http://h/")
    assert KEY not in text
    assert urllib.parse.quote(KEY, safe="") not in text
    assert urllib.parse.quote(masked(KEY), safe="") in text
    assert raised.value.__suppress_context__


@pytest.mark.anyio
async def test_basic_auth_from_the_url_is_sent_and_never_shown(
    opensearch_server: OpenSearchServer, index: str
) -> None:
    url = opensearch_server.url.replace("http://", "http://ada:s%40cret@")
    backend = ElasticsearchBackend(url=url, index=index)
    assert "ada" not in backend.location
    assert "cret" not in backend.location
    seen: list[str] = []

    async def capture(session: aiohttp.ClientSession, ctx: Any,
                      params: aiohttp.TraceRequestStartParams) -> None:
        seen.append(params.headers.get("Authorization", ""))

    await backend.store(KEY, create({"a": b"1"}))  # opens the session
    http = backend.client.http
    session = http._session  # type: ignore[attr-defined]
    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(capture)
    trace.freeze()
    session._trace_configs.append(trace)
    assert await backend.load(KEY, touch=False) == Record({"a": b"1"})
    assert seen == ["Basic YWRhOnNAY3JldA=="]  # ada:s@cret
    await close_loop_clients()


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("client", object(), r"'client': client must be an elasticsearch\.AsyncElasticsearch "
                             r"or opensearchpy\.AsyncOpenSearch"),
        ("url", 9200, "'url': url must be URLs like"),
        ("url", "127.0.0.1:9200", "'url': url must be http:// or https:// URLs"),
        ("url", "redis://h:1", "'url': url must be http:// or https://"),
        ("url", "http://h:99999", "'url': url must be http:// or https://"),
        ("url", "http://h:9200/?x=1", "'url': url: a URL takes no query"),
        ("hosts", "http://h:9200", "'hosts': hosts must be a non-empty list"),
        ("hosts", [], "'hosts': hosts must be a non-empty list"),
        ("hosts", ["http://h:9200", 5], "'hosts': hosts must be URLs like"),
        ("index", "Sessions", "'index': index must be a lowercase index name"),
        ("index", "_s", "'index': index must be a lowercase"),
        ("index", "a,b", "'index': index must be a lowercase"),
        ("index", "a*", "'index': index must be a lowercase"),
        ("index", "", "'index': index must be a lowercase"),
        ("index", 5, "'index': index must be a str"),
        ("create_index", "no", "'create_index': create_index must be True or False"),
        ("cleanup_every", -1, "'cleanup_every': cleanup_every must be >= 0"),
        ("cleanup_every", 1.5, "'cleanup_every': cleanup_every must be an int"),
    ],
)
def test_bad_options_name_the_key(option: str, value: Any, message: str) -> None:
    entry = {"cookie_name": "s", "session_type": ElasticsearchBackend, option: value}
    with pytest.raises(ValueError, match=r"SESSION_CONFIG\[0\] " + message):
        parse_config({"SESSION_CONFIG": [entry]}, instance_path="/tmp")


def test_one_way_to_the_server_at_a_time() -> None:
    with pytest.raises(ValueError, match="give one of url, hosts or client"):
        ElasticsearchBackend(url="http://h:9200", hosts=["http://h:9200"])
    with pytest.raises(ValueError, match="give one of url, hosts or client"):
        ElasticsearchBackend(url="http://h:9200", client=elasticsearch.Elasticsearch("http://h:1"))


@pytest.mark.parametrize(("options", "location"), [
    ({}, "http://127.0.0.1:9200/sessions"),
    ({"url": "https://ada:secret@es.example.net/proxy/", "index": "app-sessions"},
     "https://es.example.net:443/proxy/app-sessions"),
    ({"hosts": ["http://a:9200", "http://[::1]:9201"]}, "http://a:9200,http://[::1]:9201/sessions"),
    ({"client": elasticsearch.Elasticsearch("https://es:9243", basic_auth=("ada", "secret"))},
     "https://es:9243/sessions"),
    ({"client": opensearchpy.OpenSearch([{"host": "os", "port": 9201}], use_ssl=True,
                                        http_auth=("ada", "secret"))},
     "https://os:9201/sessions"),
], ids=["default", "url", "hosts", "elasticsearch", "opensearch"])
def test_location_names_servers_and_index_never_credentials(
    options: dict[str, Any], location: str
) -> None:
    assert ElasticsearchBackend(**options).location == location


# -- through the app --------------------------------------------------------------------------


def test_through_the_app(make_driver: Any, opensearch_server: OpenSearchServer, probe: Probe,
                         index: str) -> None:
    d = make_driver({"SESSION_CONFIG": [
        {"cookie_name": "sid", "session_type": ElasticsearchBackend,
         "url": opensearch_server.url, "index": index, "key_prefix": "app:",
         "session_fields": ["user", "cart"], "cleanup_every": 1},  # a cleanup per write
        {"cookie_name": "rest", "session_fields": "auto"},
    ]})
    d.post("set", {"user": "zo\u00eb", "cart": [1, 2], "theme": "dark"})
    assert d.show() == {"user": "'zo\u00eb'", "cart": "[1, 2]", "theme": "'dark'"}
    key = "app:" + d.cookies()["sid"]
    source = probe.source(key)
    assert source["f"] == {"user": '"zo\u00eb"', "cart": "[1,2]"}
    d.post("append", {"cart": 3})  # nested mutation is saved without .modified
    d.post("del", {"user": 1})
    d.post("permanent")
    source = probe.source(key)
    assert (source["f"], source["permanent"], source["ttl"]) == (
        {"cart": "[1,2,3]"}, True, 31 * 86400)
    # A planted value that is no JSON is dropped on load and removed by the next write.
    probe.edit(key, f={**source["f"], "user": "gASVpickle"})
    assert d.show() == {"cart": "[1, 2, 3]", "theme": "'dark'"}
    d.post("set", {"theme": "light"})
    source = probe.source(key)
    assert source["f"] == {"cart": "[1,2,3]"}
    d.post("del", {"cart": 1})
    assert probe.get(key) is None  # no fields left: the record is deleted


def test_foreign_document_is_a_fresh_session_with_a_warning(
    make_driver: Any, opensearch_server: OpenSearchServer, probe: Probe, index: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = make_driver({"SESSION_CONFIG": [
        {"cookie_name": "sid", "session_type": ElasticsearchBackend(
            url=opensearch_server.url, index=index), "key_prefix": "app:"},
    ]})
    sid = new_id()
    probe.put("app:" + sid, FOREIGN["another library's"])
    before = probe.get("app:" + sid)
    d.set_cookie("sid", sid)
    with caplog.at_level(logging.WARNING, "asyncsessions"):
        reply = d.get()
    assert (reply.status, reply.json) == (200, {})
    assert f"unreadable record {masked('app:' + sid)!r}" in caplog.text
    assert d.post("set", {"user": "ada"}).status == 200
    new = d.cookies()["sid"]
    assert new != sid
    source = probe.source("app:" + new)
    assert source["f"] == {"user": '"ada"'}
    assert probe.get("app:" + sid) == before


@pytest.mark.parametrize("framework", ["flask", "quart"])
def test_read_only_request_is_one_get(framework: str, opensearch_server: OpenSearchServer,
                                      index: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    original = es_module._AiohttpHttp.request

    async def counted(self: Any, method: str, path: str, **kwargs: Any) -> Any:
        calls.append(f"{method} {path.split('/')[2] if path.count('/') > 1 else 'index'}")
        return await original(self, method, path, **kwargs)

    monkeypatch.setattr(es_module._AiohttpHttp, "request", counted)
    driver = Driver(framework, {"SESSION_CONFIG": [
        {"cookie_name": "sid", "session_type": ElasticsearchBackend,
         "url": opensearch_server.url, "index": index, "key_prefix": "rt:"},
    ]})
    try:
        driver.post("set", {"a": 1})
        calls.clear()
        for _ in range(3):
            assert driver.show() == {"a": "1"}
        assert calls == ["GET _doc"] * 3
        driver.post("set", {"b": 2})
        assert calls[3:] == ["GET _doc", "PUT _doc"]  # the write after its own load
    finally:
        driver.close()
