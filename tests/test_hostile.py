"""Hostile cookies and planted store data: never a crash, never another session, never pickle."""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncsessions import Write
from asyncsessions.backends.base import close_loop_clients

ID = re.compile(r"[A-Za-z0-9_-]{43}")

HOSTILE_VALUES = [
    "", "A" * 42, "A" * 44, "A" * 43 + "*", "*", "session:*", "a:b:c", "../" * 20 + "etc/passwd",
    "..%2F..%2Fx", "id with spaces and more spaces to reach 43", "\x00" * 43, "é" * 43,
    "A" * 8200, "%00" * 20, '"quoted"', "A" * 21 + "\\" + "A" * 21, "{}", "[1]", "null",
]


def entry(store: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"cookie_name": "sid", **store, **more}


def stored_keys(store_entry: dict[str, Any], request: pytest.FixtureRequest) -> set[str] | None:
    """Every key the store holds (None: not listable here)."""
    kind = store_entry["session_type"]
    if kind == "redis" and not store_entry.get("cluster"):
        import redis

        probe = redis.Redis.from_url(store_entry["url"])
        return {k.decode() for k in probe.scan_iter(count=1000)}
    if kind == "filesystem":
        return {p.name for p in Path(store_entry["directory"]).glob("*")}
    return None


def well_formed(store_entry: dict[str, Any], key: str) -> bool:
    prefix = store_entry.get("key_prefix", "session:")
    if store_entry["session_type"] == "filesystem":
        # Files are named after the percent-escaped key.
        escaped = "".join(c if c.isalnum() or c in "_-" else f"%{ord(c):02X}" for c in prefix)
        return key.startswith(escaped) and ID.fullmatch(key[len(escaped):-8]) is not None
    return key.startswith(prefix) and ID.fullmatch(key[len(prefix):]) is not None


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=range(len(HOSTILE_VALUES)))
def test_hostile_cookie_values(make_driver: Any, store_entry: Any, value: str) -> None:
    d = make_driver({"SESSION_CONFIG": [entry(store_entry, use_signer=False)]})
    d.post("set", {"victim": "secret"})
    victim = d.cookies()["sid"]
    d.delete_cookie("sid")  # the test client would add its own cookie to the header
    reply = d.get(headers={"Cookie": f"sid={value}"}) if "\x00" not in value else None
    if reply is not None:
        assert reply.status == 200
        assert "victim" not in reply.json
    d.set_cookie("sid", victim)
    assert d.show() == {"victim": "'secret'"}


def test_duplicated_and_tampered_cookies(make_driver: Any, store_entry: Any) -> None:
    d = make_driver({"SESSION_CONFIG": [entry(store_entry)]})
    d.post("set", {"victim": "secret"})
    good = d.cookies()["sid"]
    d.delete_cookie("sid")
    for header in (f"sid={good[:-1]}", f"sid={good[::-1]}", f"sid={good[:20]}",
                   f"sid=forged; sid={good[:-2]}xx", f"sid={good}x"):
        reply = d.get(headers={"Cookie": header})
        assert reply.status == 200
        assert reply.json == {}


def test_badly_signed_ids_are_refused(make_driver: Any, store_entry: Any) -> None:
    if store_entry["session_type"] == "secure_cookie":
        pytest.skip("use_signer applies to id cookies")
    d = make_driver({"SESSION_CONFIG": [entry(store_entry, use_signer=True)]})
    d.post("set", {"victim": "secret"})
    signed = d.cookies()["sid"]
    d.delete_cookie("sid")
    sid = signed.split(".")[0]
    # Change the signature's first character: the last one also carries base64 padding bits,
    # and a change there can decode to the very same signature bytes.
    cut = signed.index(".") + 1
    flipped = signed[:cut] + ("A" if signed[cut] != "A" else "B") + signed[cut + 1:]
    for value in (sid, sid + ".", sid + ".AAAA", flipped, "." + signed):
        reply = d.get(headers={"Cookie": f"sid={value}"})
        assert (reply.status, reply.json) == (200, {})


cookie_text = st.text(
    alphabet=st.characters(min_codepoint=1, max_codepoint=255, exclude_characters="\r\n"),
    max_size=120,
)
cookie_headers = st.one_of(
    cookie_text.map(lambda v: f"sid={v}"),
    st.lists(st.tuples(st.sampled_from(["sid", "SID", "sid ", "x"]), cookie_text),
             max_size=4).map(lambda pairs: "; ".join(f"{k}={v}" for k, v in pairs)),
    st.from_regex(r"sid=[A-Za-z0-9_\-*:./ ]{40,46}", fullmatch=True),
    cookie_text,
)


def test_generated_cookie_headers(
    make_driver: Any, store_entry: Any, request: pytest.FixtureRequest
) -> None:
    d = make_driver({"SESSION_CONFIG": [entry(store_entry)]})
    d.post("set", {"victim": "secret"})
    victim = d.cookies()["sid"]
    d.delete_cookie("sid")
    before = stored_keys(store_entry, request)

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(cookie_headers)
    def attack(header: str) -> None:
        reply = d.get(headers={"Cookie": header})
        assert reply.status == 200
        assert reply.json == {}  # a fresh session, never the victim's
        reply = d.post("set", {"mine": 1}, headers={"Cookie": header})
        assert reply.status == 200
        assert reply.json == {"mine": "1"}
        for name in list(d.cookies()):
            d.delete_cookie(name)

    attack()
    after = stored_keys(store_entry, request)
    if before is not None and after is not None:
        for key in after - before:
            assert well_formed(store_entry, key), key
    d.set_cookie("sid", victim)
    assert d.show() == {"victim": "'secret'"}


class _Boom:
    marker = ""

    def __reduce__(self) -> Any:
        return (os.mkdir, (self.marker,))


def test_planted_pickle_is_never_unpickled(
    make_driver: Any, store_entry: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if store_entry["session_type"] == "secure_cookie":
        pytest.skip("a signed cookie is written only by the app")
    d = make_driver({"SESSION_CONFIG": [entry(store_entry)]})
    d.post("set", {"keep": 1})
    engine = d.app.extensions["asyncsessions"]
    store = engine.stores[0]
    key = store.key_prefix + d.cookies()["sid"]
    boom = _Boom()
    boom.marker = str(tmp_path / "pwned")
    payload = pickle.dumps(boom)

    if store_entry["session_type"] in ("sqlalchemy", "peewee", "elasticsearch"):
        # Their columns hold text (PostgreSQL's without NUL): the pickle as text.
        payload = payload.replace(b"\0", b"").decode("latin-1").encode("utf-8")

    async def plant() -> None:
        try:
            await store.backend.store(key, Write({"evil": payload}))
        finally:
            await close_loop_clients()

    if store_entry["session_type"] == "mongodb":
        import pymongo  # stores text; plant the raw bytes as BSON binary with the driver
        from bson import Binary

        with pymongo.MongoClient(store_entry["url"]) as client:
            client.asyncsessions.sessions.update_one(
                {"_id": key}, {"$set": {"f.evil": Binary(payload)}}
            )
    else:
        asyncio.run(plant())
    with caplog.at_level(logging.WARNING, logger="asyncsessions"):
        shown = d.show()
    assert not (tmp_path / "pwned").exists()
    # Field stores drop the field with a warning; a blob store (memcached) that can no longer
    # parse the record reads as an empty session.
    if shown:
        assert shown == {"keep": "1"}
        assert "dropped unreadable field 'evil'" in caplog.text
    d.post("set", {"keep": 2})  # the next write removes the planted field
    assert d.show() == {"keep": "2"}
    assert not (tmp_path / "pwned").exists()
