"""Each server fixture gives a real, working server on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pymongo
import pytest
import redis
import redis.cluster
from google.cloud import firestore

import servers


@pytest.mark.server("redis")
def test_redis(redis_server: servers.RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping()
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
    finally:
        client.close()


@pytest.mark.server("redis")
def test_redis_restarts_on_same_port(redis_server: servers.RedisServer) -> None:
    port = redis_server.port
    client = redis.Redis.from_url(redis_server.url, socket_timeout=2)
    try:
        client.set("survives", "no")
        redis_server.stop()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        redis_server.start()
        assert redis_server.port == port
        assert client.ping()
        assert client.get("survives") is None  # no persistence configured
        with redis_server.down(kill=True):
            assert not redis_server.running
        assert client.ping()
    finally:
        client.close()


@pytest.mark.server("redis_cluster")
def test_redis_cluster(redis_cluster: servers.RedisCluster) -> None:
    host, port = redis_cluster.nodes[0]
    client = redis.cluster.RedisCluster(host=host, port=port)
    try:
        keys = [f"key-{i}" for i in range(30)]
        owners = {client.get_node_from_key(key).port for key in keys}
        assert owners == {p for _, p in redis_cluster.nodes}  # keys spread over all 3 masters
        for key in keys:
            client.set(key, key.upper())
        assert [client.get(key) for key in keys] == [key.upper().encode() for key in keys]
    finally:
        client.close()


@pytest.mark.server("memcached")
def test_memcached(memcached_server: servers.MemcachedServer) -> None:
    address = (memcached_server.host, memcached_server.port)
    with socket.create_connection(address, timeout=2) as sock:
        sock.sendall(b"version\r\n")
        assert sock.recv(64).startswith(b"VERSION ")


@pytest.mark.server("mongodb")
def test_mongo(mongo_server: servers.MongoServer) -> None:
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(mongo_server.url)
    try:
        collection = client["servers_test"]["things"]
        collection.insert_one({"_id": "a", "value": [1, 2]})
        assert collection.find_one({"_id": "a"}) == {"_id": "a", "value": [1, 2]}
    finally:
        client.close()


@pytest.mark.server("firestore")
def test_firestore(
    firestore_emulator: servers.FirestoreEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host_port)
    client = firestore.Client(project="test")
    try:
        document = client.collection("servers_test").document("doc")
        document.set({"value": 1, "nested": {"a": "b"}})
        assert document.get().to_dict() == {"value": 1, "nested": {"a": "b"}}
    finally:
        client.close()


@pytest.mark.parametrize(("ci", "outcome"), [("true", "fail"), ("1", "fail"), ("", "skip")])
def test_missing_binary_skips_or_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: str
) -> None:
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if outcome == "fail" else pytest.skip.Exception
    with pytest.raises(expected, match="not installed"):
        servers.missing("frobnicator")


def test_serverkit_needs_no_pytest() -> None:
    """The benchmarks start their servers with serverkit, outside pytest."""
    code = "import serverkit, sys; assert 'pytest' not in sys.modules, 'pytest imported'"
    tests = str(Path(__file__).parent)
    subprocess.run([sys.executable, "-c", code], cwd=tests, check=True, timeout=60)
