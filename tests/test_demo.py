"""The demo app runs on the embedded stores and shows where each field lives."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demo"))

from app import create_app


def test_demo_routes_fields_to_their_stores(tmp_path: Any) -> None:
    app = create_app("embedded", fs_dir=str(tmp_path))
    client = app.test_client()
    page = client.get("/").get_data(as_text=True)
    assert "filesystem" in page
    csrf = client.get_cookie("csrf")
    assert csrf is not None
    with client.session_transaction() as sess:
        token = sess["csrf_token"]
    reply = client.post("/set", data={"csrf_token": token, "key": "user_id", "value": "7"})
    assert reply.status_code == 303
    assert client.post("/set", data={"csrf_token": "forged", "key": "x", "value": "1"}
                       ).status_code == 400
    page = client.get("/").get_data(as_text=True)
    assert "user_id" in page
    assert list(tmp_path.iterdir())  # user_id went to the filesystem store


def test_demo_with_every_store_type(
    tmp_path: Any, redis_server: Any, mongo_server: Any, memcached_server: Any,
    firestore_emulator: Any, monkeypatch: Any,
) -> None:
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host_port)
    app = create_app(
        "secure_cookie,redis,mongodb,memcache,firestore,filesystem",
        redis_url=redis_server.url, mongo_url=mongo_server.url,
        memcache_port=str(memcached_server.port), fs_dir=str(tmp_path),
    )
    client = app.test_client()
    assert client.get("/").status_code == 200
    with client.session_transaction() as sess:
        token = sess["csrf_token"]
    for key in ("user_id", "cart", "prefs", "user_data", "note"):
        reply = client.post("/set", data={"csrf_token": token, "key": key, "value": "[1]"})
        assert reply.status_code == 303
    page = client.get("/").get_data(as_text=True)
    for kind in ("redis", "mongodb", "memcache", "firestore", "filesystem"):
        assert kind in page
    assert page.count("ms") >= 5  # a load time per server-side store


def test_demo_with_the_sql_cache_and_cloud_stores(
    tmp_path: Any, postgres_server: Any, dynamodb_server: Any, opensearch_server: Any,
    datastore_emulator: Any, monkeypatch: Any,
) -> None:
    monkeypatch.setenv("DATASTORE_EMULATOR_HOST", datastore_emulator.host_port)
    for name, value in dynamodb_server.credentials.items():
        if name.startswith("aws_"):
            monkeypatch.setenv(name.upper(), value)
    app = create_app(
        "secure_cookie,sqlalchemy,peewee,dynamodb,datastore,elasticsearch,cachelib",
        sql_url=postgres_server.url, dynamodb_url=dynamodb_server.endpoint_url,
        elasticsearch_url=opensearch_server.url, fs_dir=str(tmp_path),
    )
    client = app.test_client()
    assert client.get("/").status_code == 200
    with client.session_transaction() as sess:
        token = sess["csrf_token"]
    for key in ("user_id", "cart", "prefs", "user_data", "field5", "note"):
        reply = client.post("/set", data={"csrf_token": token, "key": key, "value": "[1]"})
        assert reply.status_code == 303
    page = client.get("/").get_data(as_text=True)
    for kind in ("sqlalchemy", "peewee", "dynamodb", "datastore", "elasticsearch", "cachelib"):
        assert kind in page
