"""Elasticsearch and OpenSearch store: one document per session, updated by compare-and-set.

Plain JSON over aiohttp (or through a vendor client given to it): one code path for both
products and all their majors, where Elasticsearch's client refuses OpenSearch and must match
the server's major version.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import random
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol, TypeGuard

import aiohttp
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from .base import ClientBackend, Record, Write, masked

__all__ = ["ElasticsearchBackend"]

logger = logging.getLogger(__name__)

#: Elasticsearch and OpenSearch refuse a document ``_id`` longer than this, in UTF-8 bytes.
_MAX_ID_BYTES = 512
#: Reads and writes of one update that keeps meeting concurrent writes (each one lands).
_ATTEMPTS = 100
#: Records remembered between a load and the write that follows it; more are forgotten.
_SEEN_LIMIT = 1024
#: The largest value a ``long`` field holds; an absurd lifetime's expiry stops there.
_MAX_LONG = 2**63 - 1
#: Documents one delete-by-query search batch reads (the servers' default).
_SCROLL_SIZE = 1000
#: How long the server keeps a count's scroll between two of its pages.
_SCROLL_KEEP = "1m"
#: Seconds a cleanup may take before it is given up (the next one starts afresh).
_CLEANUP_TIMEOUT = 60.0
#: The index layout. Root ``dynamic: false``: only ``expires`` is indexed (for the cleanup),
#: other top-level names stay in ``_source`` unmapped. ``f`` is never parsed, so session field
#: names never become mappings (no mapping explosion, any name allowed).
_MAPPING: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "f": {"type": "object", "enabled": False},
        "expires": {"type": "long"},
    },
}
_SOURCE_KEYS = frozenset({"f", "permanent", "ttl", "expires"})
# What Elasticsearch and OpenSearch refuse in an index name (plus ":", refused since ES 7).
_BAD_INDEX_CHARS = frozenset('\\/*?"<>| ,#:')


class _Reply(NamedTuple):
    status: int
    body: Any


class _Http(Protocol):
    """One REST call: a reply for 2xx and the statuses in ``ok``; anything else raises."""

    async def request(
        self, method: str, path: str, *, params: Mapping[str, str | int] | None = None,
        body: Any = None, ok: Collection[int] = (),
    ) -> _Reply: ...

    async def close(self) -> None: ...


@dataclass(eq=False)
class _Conn:
    """What the store holds per event loop: its HTTP client and its cleanup task."""

    http: _Http
    cleanup: asyncio.Task[None] | None = None


@dataclass(frozen=True, slots=True)
class _Doc:
    """A record of this store as it is stored at one version (``seq_no``, ``primary_term``)."""

    fields: dict[str, str]
    permanent: bool
    ttl: int
    expires: int  # Unix time in milliseconds, on the app servers' clocks
    seq_no: int
    primary_term: int

    def source(self) -> dict[str, Any]:
        return {"f": self.fields, "permanent": self.permanent, "ttl": self.ttl,
                "expires": self.expires}

    def at(self, reply: _Reply) -> _Doc:
        """This record as the write that answered ``reply`` stored it."""
        seq_no, term = _version(reply.body)
        return _Doc(self.fields, self.permanent, self.ttl, self.expires, seq_no, term)


class ElasticsearchBackend(ClientBackend[_Conn]):
    """Sessions in an Elasticsearch (7.3+, 8, 9) or OpenSearch (1, 2, 3) index.

    Give ``url`` (default ``http://127.0.0.1:9200``; ``https://user:password@host:9200`` for
    basic auth, a path for a proxy prefix; HTTPS is checked against the system's CAs) or
    ``hosts`` (several such URLs, tried in turn when one refuses connections), or, for API
    keys, other CAs, client certificates or AWS signing, ``client``: an ``elasticsearch`` 8+
    ``AsyncElasticsearch`` or ``Elasticsearch``, or an ``opensearch-py`` ``AsyncOpenSearch``
    or ``OpenSearch``. A client's nodes, authentication, TLS and retry settings are reused
    for one async client of the same library per event loop (no sniffing; an AWS signer must
    be the async one), and the store's requests go through its transport, so the vendor's
    own checks apply (Elasticsearch's client talks only to Elasticsearch of its own major
    version). Sessions go to ``index``.

    One document per session, ``_id`` = key::

        {"f": {name: JSON text}, "permanent": bool, "ttl": seconds, "expires": Unix ms}

    The index is created at the first write, mapped with ``dynamic: false`` and ``f`` an
    object with ``enabled: false`` (session field names never become mappings; only
    ``expires`` is indexed), unless ``create_index=False``; an existing index gets the mapping
    added, and a conflicting one is reported with a warning. A document of any other shape
    reads as no session, with a warning, and is left as it is; only a new session's write
    replaces it.

    Every request is one of: get a document (real-time: it sees every write, no refresh
    needed, and returns the document's ``_seq_no`` and ``_primary_term``), index one
    (optionally conditional on those), delete one (same), create the index and put its
    mapping, and delete-by-query: all in Elasticsearch 7.3+ and OpenSearch 1.0+. Nothing
    asks for a refresh.

    - A read is one get. A refreshing read more than half-way through the lifetime restarts
      it with one conditional index, skipped when a write came in between (it set its own).
    - A new session is one index (replacing whatever was under the key).
    - Any other write rewrites the document it read (the load's, if this process made it,
      else one more get) conditional on its ``_seq_no``/``_primary_term``. On a conflict
      (409) it reads again and reapplies its change: concurrent requests that change
      different fields all survive; a document deleted or expired meanwhile is not written
      (``False``). A write that leaves no field is a conditional delete, so a field another
      request added in that instant keeps the record.
    - Expiry is checked on read (``expires`` against the app servers' clocks). Every
      ``cleanup_every`` writes (0: never) a background delete-by-query removes up to twice
      that many documents of the index whose ``expires`` has passed (``conflicts=proceed``:
      one written meanwhile is kept); ``flask sessions purge`` runs it over all of them.
    """

    max_key_length: ClassVar[int | None] = _MAX_ID_BYTES

    def __init__(
        self,
        *,
        url: str | None = None,
        hosts: Sequence[str] | None = None,
        client: Any = None,
        index: str = "sessions",
        create_index: bool = True,
        cleanup_every: int = 100,
    ) -> None:
        super().__init__()
        if sum(option is not None for option in (url, hosts, client)) > 1:
            raise ValueError("give one of url, hosts or client")
        _check_index(index)
        if not isinstance(create_index, bool):
            raise TypeError("create_index must be True or False")
        if not isinstance(cleanup_every, int) or isinstance(cleanup_every, bool):
            raise TypeError(f"cleanup_every must be an int, not {type(cleanup_every).__name__}")
        if cleanup_every < 0:
            raise ValueError(f"cleanup_every must be >= 0 (0: never), not {cleanup_every}")
        self.index = index
        self.cleanup_every = cleanup_every
        self._index_pending = create_index
        if client is not None:
            self._make, servers = _client_factory(client)
        else:
            if hosts is None:
                nodes = [_node("url", url if url is not None else "http://127.0.0.1:9200")]
            elif isinstance(hosts, (str, bytes)) or not isinstance(hosts, Sequence) or not hosts:
                raise TypeError("hosts must be a non-empty list of URLs like "
                                "['http://es1:9200', 'http://es2:9200']")
            else:
                nodes = [_node("hosts", host) for host in hosts]
            self._make = lambda: _AiohttpHttp(nodes)
            servers = ",".join(node.base for node in nodes)
        self.location = f"{servers}/{index}"
        self._path = "/" + urllib.parse.quote(index, safe="")
        self._seen: dict[str, _Doc] = {}
        self._writes = itertools.count(1)

    # -- clients ------------------------------------------------------------------------------

    def _new_client(self) -> _Conn:
        return _Conn(self._make())

    async def _close_client(self, client: _Conn) -> None:
        task = client.cleanup
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await client.http.close()

    async def _send(
        self, http: _Http, method: str, key: str, *,
        params: Mapping[str, str | int] | None = None, body: Any = None,
        ok: Collection[int] = (),
    ) -> _Reply:
        """One request on the document under ``key``; its failures never quote the key.

        A session id is a credential, and errors end up in logs: a driver's message that
        names the request's URL (aiohttp's "Can not write request body for ...") is raised
        again as a ``ConnectionError`` naming the key masked.
        """
        quoted = urllib.parse.quote(key, safe="")
        try:
            return await http.request(method, f"{self._path}/_doc/{quoted}", params=params,
                                      body=body, ok=ok)
        except Exception as exc:
            text = str(exc)
            if key not in text and quoted not in text:
                raise
            shown = masked(key)
            text = text.replace(quoted, urllib.parse.quote(shown, safe="")).replace(key, shown)
            raise ConnectionError(f"{type(exc).__name__}: {text}") from None

    def _remember(self, key: str, doc: _Doc | None) -> None:
        if doc is None:
            self._seen.pop(key, None)
            return
        if len(self._seen) >= _SEEN_LIMIT:
            self._seen.clear()  # a forgotten record costs its next write one get
        self._seen[key] = doc

    # -- the contract -------------------------------------------------------------------------

    async def load(self, key: str, *, touch: bool) -> Record | None:
        http = self.client.http
        reply = await self._send(http, "GET", key, ok=(404,))
        try:
            doc = _parse(reply)
        except _NotOurs as exc:
            self._remember(key, None)
            self.unreadable(key, str(exc))
            return None
        now = _now()
        if doc is None or doc.expires <= now:
            self._remember(key, None)
            return None
        record = Record({name: value.encode("utf-8") for name, value in doc.fields.items()},
                        doc.permanent)
        if touch and _due(doc, now):
            touched = _Doc(doc.fields, doc.permanent, doc.ttl, _expiry(now, doc.ttl),
                           doc.seq_no, doc.primary_term)
            reply = await self._send(http, "PUT", key, params=_if(doc), body=touched.source(),
                                     ok=(404, 409))
            # A conflict: written or deleted since the read, and that write set its own expiry.
            doc = touched.at(reply) if reply.status < 300 else None
        self._remember(key, doc)
        return record

    async def store(self, key: str, write: Write) -> bool:
        conn = self.client
        if write.create:
            written = await self._create(conn.http, key, write)
        else:
            written = await self._update(conn.http, key, write)
        if written and self.cleanup_every and next(self._writes) % self.cleanup_every == 0:
            self._start_cleanup(conn)
        return written

    async def delete(self, key: str) -> None:
        self._remember(key, None)
        await self._send(self.client.http, "DELETE", key, ok=(404,))

    # -- the CLI's (see base.py) --------------------------------------------------------------

    purges_expired = True  # the background cleanup's documents, all at once

    async def count(self, prefix: str) -> int | None:
        # _id takes no prefix query: the live ids are scrolled through and matched here.
        http = self.client.http
        reply = await http.request(
            "POST", f"{self._path}/_search", params={"scroll": _SCROLL_KEEP},
            body={"size": _SCROLL_SIZE, "_source": False, "sort": ["_doc"],
                  "query": {"range": {"expires": {"gt": _now()}}}},
            ok=(404,),  # no index yet: no session
        )
        found, scroll_id = 0, None
        try:
            while reply.status < 300:
                scroll_id = reply.body.get("_scroll_id")
                hits = reply.body.get("hits", {}).get("hits") or []
                found += sum(str(hit.get("_id")).startswith(prefix) for hit in hits)
                if not hits or scroll_id is None:
                    break
                reply = await http.request("POST", "/_search/scroll",
                                           body={"scroll": _SCROLL_KEEP, "scroll_id": scroll_id})
        finally:
            if scroll_id is not None:
                await http.request("DELETE", "/_search/scroll",
                                   body={"scroll_id": [scroll_id]}, ok=(404,))
        return found

    async def expires_at(self, key: str) -> float | None:
        try:
            doc = _parse(await self._send(self.client.http, "GET", key, ok=(404,)))
        except _NotOurs:
            return None
        return None if doc is None else doc.expires / 1000

    async def purge(self, prefix: str, *, batch: int, dry_run: bool) -> AsyncIterator[int]:
        # Every expired document of the index, whatever its prefix, as the cleanup deletes;
        # what expires while it runs is left for the next run, so that it ends.
        http, before = self.client.http, _now()
        if dry_run:
            reply = await http.request("POST", f"{self._path}/_count",
                                       body={"query": _expired(before)}, ok=(404,))
            found = _whole(reply.body, "count")
            if found:
                yield found
            return
        while True:
            removed = await self._delete_expired(http, batch, before, refresh=True)
            if removed:
                yield removed
            if removed < batch:
                return

    # -- writes -------------------------------------------------------------------------------

    async def _create(self, http: _Http, key: str, write: Write) -> bool:
        assert write.permanent is not None  # see Write
        assert write.ttl is not None
        if not write.changed:
            await self.delete(key)  # a record without fields is none
            return True
        if self._index_pending:
            await self._create_index(http)
        # A new id: whatever is under it is another program's, replaced whole.
        doc = _Doc({name: _text(value) for name, value in write.changed.items()},
                   write.permanent, write.ttl, _expiry(_now(), write.ttl), 0, 0)
        reply = await self._send(http, "PUT", key, body=doc.source())
        self._remember(key, doc.at(reply))
        return True

    async def _update(self, http: _Http, key: str, write: Write) -> bool:
        changed = {name: _text(value) for name, value in write.changed.items()}
        removed = frozenset(write.removed)
        doc = self._seen.pop(key, None)
        for attempt in range(_ATTEMPTS):
            now = _now()
            if doc is None or doc.expires <= now:
                try:
                    doc = _parse(await self._send(http, "GET", key, ok=(404,)))
                except _NotOurs:
                    doc = None  # the load that let this write through has warned
                if doc is None or doc.expires <= now:
                    return False  # deleted, expired or not ours: nothing to update
            fields = {name: value for name, value in doc.fields.items()
                      if name not in removed}
            fields.update(changed)
            if not fields:
                reply = await self._send(http, "DELETE", key, params=_if(doc), ok=(404, 409))
                if reply.status < 300:
                    return True
            else:
                if write.permanent is None:
                    permanent, ttl = doc.permanent, doc.ttl  # kept, and its own lifetime
                else:
                    assert write.ttl is not None
                    permanent, ttl = write.permanent, write.ttl
                new = _Doc(fields, permanent, ttl, _expiry(now, ttl), 0, 0)
                reply = await self._send(http, "PUT", key, params=_if(doc), body=new.source(),
                                         ok=(404, 409))
                if reply.status < 300:
                    self._remember(key, new.at(reply))
                    return True
            # Changed or deleted since it was read: read again, and back off a little while
            # many writers of this one record take their turns.
            doc = None
            if attempt:
                await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
        raise RuntimeError(f"gave up updating a session after {_ATTEMPTS} concurrent writes "
                           "overtook this one")

    async def _create_index(self, http: _Http) -> None:
        # Best effort: any refusal (no privilege, a conflicting mapping: 400 or 500 by
        # version) is reported, and the writes go on.
        refusals = range(400, 600)
        reply = await http.request("PUT", self._path, body={"mappings": _MAPPING}, ok=refusals)
        if reply.status == 400 and _error_type(reply.body) == "resource_already_exists_exception":
            # Made by another process, or by hand: make sure our fields are mapped our way.
            reply = await http.request("PUT", f"{self._path}/_mapping", body=_MAPPING,
                                       ok=refusals)
        self._index_pending = False
        if reply.status >= 300:
            logger.warning(
                "could not create index %r with its mapping (%s); sessions still work, but "
                "their field names may be mapped one by one and expired sessions may not be "
                "found for deletion: create it with the mapping %s, or pass create_index=False",
                self.index, _error_reason(reply.body), json.dumps(_MAPPING),
            )

    # -- cleanup ------------------------------------------------------------------------------

    def _start_cleanup(self, conn: _Conn) -> None:
        if conn.cleanup is not None and not conn.cleanup.done():
            return  # one at a time per loop
        task = asyncio.get_running_loop().create_task(
            asyncio.wait_for(self._cleanup(conn.http), _CLEANUP_TIMEOUT)
        )
        task.add_done_callback(self._cleanup_done)
        conn.cleanup = task

    async def _cleanup(self, http: _Http) -> None:
        await self._delete_expired(http, 2 * self.cleanup_every, _now())

    async def _delete_expired(self, http: _Http, limit: int, before: int, *,
                              refresh: bool = False) -> int:
        """Delete up to ``limit`` documents that expired before ``before``; how many went.

        ``conflicts=proceed``: a document written since the search found it is kept.
        """
        params: dict[str, str | int] = {"conflicts": "proceed", "max_docs": limit,
                                        "scroll_size": min(limit, _SCROLL_SIZE)}
        if refresh:
            params["refresh"] = "true"  # so that the next search no longer finds them
        reply = await http.request(
            "POST", f"{self._path}/_delete_by_query", params=params,
            body={"query": _expired(before)},
            ok=(404,),  # no index yet: nothing to clean
        )
        return _whole(reply.body, "deleted")

    def _cleanup_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.warning("session cleanup in %s failed: %s: %s", self.location,
                           type(exc).__name__, exc)


# -- documents --------------------------------------------------------------------------------


class _NotOurs(Exception):
    """A document this store did not write; the message says what gave it away."""


def _parse(reply: _Reply) -> _Doc | None:
    """The record in a get's reply, live or not; ``None`` if there is none."""
    body = reply.body
    if reply.status == 404 or not isinstance(body, dict):
        if reply.status < 300 and not isinstance(body, dict):
            raise ValueError("the server answered a get with no JSON object")
        return None
    if not body.get("found"):
        return None
    source = body.get("_source")
    if not isinstance(source, dict):
        raise _NotOurs("_source is not an object")
    if set(source) != _SOURCE_KEYS:
        raise _NotOurs("its names are not f, permanent, ttl and expires")
    stored, permanent = source["f"], source["permanent"]
    ttl, expires = source["ttl"], source["expires"]
    if not isinstance(permanent, bool):
        raise _NotOurs("permanent is not true or false")
    if not (_is_int(ttl) and ttl > 0):
        raise _NotOurs("ttl is not a positive whole number")
    if not _is_int(expires):
        raise _NotOurs("expires is not a whole number")
    if not isinstance(stored, dict):
        raise _NotOurs("f is not an object")
    if not all(isinstance(value, str) for value in stored.values()):
        raise _NotOurs("a value in f is not a string")
    seq_no, term = _version(body)
    return _Doc(stored, permanent, ttl, expires, seq_no, term)


def _version(body: Any) -> tuple[int, int]:
    seq_no = body.get("_seq_no") if isinstance(body, dict) else None
    term = body.get("_primary_term") if isinstance(body, dict) else None
    if not (_is_int(seq_no) and _is_int(term)):
        raise ValueError("the server's reply has no _seq_no and _primary_term "
                         "(Elasticsearch 7.3+ or OpenSearch 1.0+ needed)")
    return seq_no, term


def _expired(before: int) -> dict[str, Any]:
    return {"range": {"expires": {"lt": before}}}


def _whole(body: Any, name: str) -> int:
    """The count ``name`` in a reply (0 when there is none: no index yet)."""
    value = body.get(name) if isinstance(body, dict) else None
    return value if _is_int(value) else 0


def _if(doc: _Doc) -> dict[str, str | int]:
    return {"if_seq_no": doc.seq_no, "if_primary_term": doc.primary_term}


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: bytes) -> str:
    return value.decode("utf-8")


def _now() -> int:
    return int(time.time() * 1000)


def _expiry(now: int, ttl: int) -> int:
    return min(now + ttl * 1000, _MAX_LONG)


def _due(doc: _Doc, now: int) -> bool:
    """Whether the record's lifetime should restart: more than half of it is gone."""
    return doc.expires - now < doc.ttl * 500 and _expiry(now, doc.ttl) > doc.expires


def _error_type(body: Any) -> str | None:
    error = body.get("error") if isinstance(body, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return kind if isinstance(kind, str) else None


def _error_reason(body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return f"{error.get('type')}: {error.get('reason')}"
    return str(error if error is not None else body)[:200]


# -- settings ---------------------------------------------------------------------------------


def _check_index(index: Any) -> None:
    if not isinstance(index, str):
        raise TypeError(f"index must be a str like 'sessions', not {type(index).__name__}")
    if (not index or index in (".", "..") or index != index.lower()
            or index.startswith(("-", "_", "+")) or _BAD_INDEX_CHARS & set(index)
            or len(index.encode("utf-8")) > 255):
        raise ValueError(
            "index must be a lowercase index name of at most 255 bytes, not starting with "
            "- _ or +, without \\ / * ? \" < > | , # : or spaces"
        )


@dataclass(frozen=True, slots=True)
class _Node:
    base: str  # scheme://host:port/prefix: no credentials, no trailing slash
    headers: Mapping[str, str]


def _node(option: str, url: Any) -> _Node:
    if not isinstance(url, str):
        raise TypeError(f"{option} must be URLs like 'http://127.0.0.1:9200' (str), "
                        f"not {type(url).__name__}")
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
        raise ValueError(f"{option} must be http:// or https:// URLs with a host, like "
                         "'http://127.0.0.1:9200'")
    if parts.query or parts.fragment:
        raise ValueError(f"{option}: a URL takes no query or fragment")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = f"{host}:{port or (443 if parts.scheme == 'https' else 80)}"
    base = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
    headers: dict[str, str] = {}
    if parts.username is not None:
        user, password = parts.username, parts.password or ""
        pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    return _Node(base, headers)


# -- transports -------------------------------------------------------------------------------


class _AiohttpHttp:
    """JSON over one aiohttp session, opened on first use in the loop that uses it."""

    def __init__(self, nodes: Sequence[_Node]) -> None:
        self._nodes = nodes
        self._next = 0
        self._session: aiohttp.ClientSession | None = None

    async def request(
        self, method: str, path: str, *, params: Mapping[str, str | int] | None = None,
        body: Any = None, ok: Collection[int] = (),
    ) -> _Reply:
        session = self._session
        if session is None:
            # No total timeout: the engine bounds every store call with the store's own.
            session = self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None)
            )
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        target = path + ("?" + urllib.parse.urlencode(params) if params else "")
        nodes = self._nodes
        first = self._next
        self._next = (first + 1) % len(nodes)
        for tried in range(len(nodes)):
            node = nodes[(first + tried) % len(nodes)]
            try:
                async with session.request(
                    method, yarl.URL(node.base + target, encoded=True), data=data,
                    headers={**headers, **node.headers},
                ) as response:
                    raw = await response.read()
                    status, reply_headers = response.status, response.headers
            except aiohttp.ClientConnectorError:
                # Never reached the server: safe to send anywhere else, writes included.
                if tried + 1 == len(nodes):
                    raise
                continue
            try:
                decoded = json.loads(raw) if raw else None
            except ValueError:
                decoded = raw.decode("utf-8", "replace")[:200]
            if 200 <= status < 300 or status in ok:
                return _Reply(status, decoded)
            raise _response_error(method, node.base, path, status, decoded, reply_headers)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _response_error(method: str, base: str, path: str, status: int, body: Any,
                    headers: Any) -> aiohttp.ClientResponseError:
    """The error for a refused request, naming no session id and no credentials.

    Errors end up in logs, which travel further than the store: the id in the URL (and in
    the server's reason, which may quote it) is masked, and the request's headers are left out.
    """
    reason = _error_reason(body)
    parts = path.split("/")  # "", index, endpoint, id
    if len(parts) == 4 and parts[2] == "_doc":
        key = urllib.parse.unquote(parts[3])
        parts[3] = urllib.parse.quote(masked(key), safe="")
        reason = reason.replace(key, masked(key))
    url = yarl.URL(base + "/".join(parts), encoded=True)
    info = aiohttp.RequestInfo(url, method, CIMultiDictProxy(CIMultiDict()), url)
    return aiohttp.ClientResponseError(info, (), status=status, message=reason,
                                       headers=headers)


class _ElasticsearchHttp:
    """The REST calls through an ``elasticsearch`` 8+ ``AsyncElasticsearch``."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lenient: dict[tuple[int, ...], Any] = {}

    async def request(
        self, method: str, path: str, *, params: Mapping[str, str | int] | None = None,
        body: Any = None, ok: Collection[int] = (),
    ) -> _Reply:
        statuses = tuple(sorted(ok))
        client = self._lenient.get(statuses)
        if client is None:
            client = self._lenient[statuses] = self._client.options(ignore_status=statuses)
        headers = {"accept": "application/json"}
        if body is not None:
            headers["content-type"] = "application/json"
        response = await client.perform_request(method, path, params=params, headers=headers,
                                                body=body)
        return _Reply(response.meta.status, response.body)

    async def close(self) -> None:
        await self._client.close()


class _OpenSearchHttp:
    """The REST calls through an ``opensearch-py`` ``AsyncOpenSearch``'s transport."""

    def __init__(self, client: Any, error: type[Exception]) -> None:
        self._client = client
        self._error = error  # opensearchpy.TransportError, imported only when used

    async def request(
        self, method: str, path: str, *, params: Mapping[str, str | int] | None = None,
        body: Any = None, ok: Collection[int] = (),
    ) -> _Reply:
        try:
            answer = await self._client.transport.perform_request(
                method, path, params=params, body=body
            )
        except self._error as exc:
            status = getattr(exc, "status_code", None)  # "N/A" when no answer came
            if isinstance(status, int) and status in ok:
                return _Reply(status, getattr(exc, "info", None))
            raise
        return _Reply(200, answer)  # any 2xx: the transport keeps the status to itself

    async def close(self) -> None:
        await self._client.close()


# Per-request settings of an elasticsearch-py 8+ client, as its options() copies them.
_ES_OPTIONS = ("_headers", "_request_timeout", "_ignore_status", "_max_retries",
               "_retry_on_status", "_retry_on_timeout", "_retry_backoff_base",
               "_retry_backoff_cap", "_is_serverless")


def _client_factory(client: Any) -> tuple[Callable[[], _Http], str]:
    """A maker of transports like ``client`` for each event loop, and its servers."""
    module = type(client).__module__.partition(".")[0]
    if module == "elasticsearch" and "elasticsearch" in sys.modules:
        return _elasticsearch_factory(client)
    if module == "opensearchpy" and "opensearchpy" in sys.modules:
        return _opensearch_factory(client)
    raise TypeError(
        "client must be an elasticsearch.AsyncElasticsearch or opensearchpy.AsyncOpenSearch "
        "(or their sync clients), e.g. AsyncElasticsearch('http://127.0.0.1:9200'), "
        f"not {type(client).__qualname__}"
    )


def _elasticsearch_factory(client: Any) -> tuple[Callable[[], _Http], str]:
    import elasticsearch
    from elastic_transport import AsyncTransport

    if not isinstance(client, (elasticsearch.AsyncElasticsearch, elasticsearch.Elasticsearch)):
        raise TypeError("client must be an elasticsearch.AsyncElasticsearch or Elasticsearch, "
                        f"not {type(client).__qualname__}")
    if not hasattr(client, "options") or not hasattr(client.transport, "node_pool"):
        raise TypeError("client must come from elasticsearch-py 8 or later (for older "
                        "servers, give url or hosts)")
    pool = client.transport.node_pool
    configs = [node.config for node in pool.all()]
    # An async client's own node class (aiohttp or httpx); a sync one's cannot run on a loop.
    node_class: Any = (pool.node_class if isinstance(client, elasticsearch.AsyncElasticsearch)
                       else "aiohttp")
    options = {name: getattr(client, name) for name in _ES_OPTIONS if hasattr(client, name)}
    # The client's own, compatibility mimetypes included (the client asks for them).
    serializers = dict(client.transport.serializers.serializers)

    def make() -> _Http:
        clone = elasticsearch.AsyncElasticsearch(
            _transport=AsyncTransport(configs, node_class=node_class, serializers=serializers)
        )
        for name, value in options.items():
            setattr(clone, name, value.copy() if name == "_headers" else value)
        return _ElasticsearchHttp(clone)

    servers = ",".join(f"{c.scheme}://{_bracket(c.host)}:{c.port}{c.path_prefix}"
                       for c in configs)
    return make, servers


def _opensearch_factory(client: Any) -> tuple[Callable[[], _Http], str]:
    import opensearchpy

    if not isinstance(client, (opensearchpy.AsyncOpenSearch, opensearchpy.OpenSearch)):
        raise TypeError("client must be an opensearchpy.AsyncOpenSearch or OpenSearch, "
                        f"not {type(client).__qualname__}")
    transport = client.transport
    hosts = [dict(host) for host in transport.hosts]
    kwargs = dict(transport.kwargs)
    settings: dict[str, Any] = {"max_retries": transport.max_retries,
                "retry_on_status": transport.retry_on_status,
                "retry_on_timeout": transport.retry_on_timeout}

    def make() -> _Http:
        return _OpenSearchHttp(opensearchpy.AsyncOpenSearch(
            hosts=[dict(host) for host in hosts], **settings, **kwargs
        ), opensearchpy.TransportError)

    def shown(host: Mapping[str, Any]) -> str:
        tls = host.get("use_ssl", kwargs.get("use_ssl")) or host.get("scheme") == "https"
        prefix = str(host.get("url_prefix", kwargs.get("url_prefix", ""))).rstrip("/")
        if prefix and not prefix.startswith("/"):
            prefix = "/" + prefix
        port = host.get("port") or (443 if tls else 9200)
        return (f"{'https' if tls else 'http'}://{_bracket(str(host.get('host', 'localhost')))}"
                f":{port}{prefix}")

    return make, ",".join(shown(host) for host in hosts)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host

