"""Redis Sentinel: the redis store finds the master through the sentinels, and finds it again
after a failover while requests keep coming.

One master, one replica and three sentinels (``redis-server sentinel.conf --sentinel``) on
loopback ports; the master is killed -9 under a running request loop.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.sentinel

from apps import flask_app
from asyncsessions.backends.redis import RedisBackend
from serverkit import HOST, RedisServer, Server, free_port, serving
from servers import missing

SERVICE = "mymaster"


class SentinelServer(Server):
    name = "sentinel"
    scheme = "redis"

    def __init__(self, binary: str, workdir: Path, master_port: int) -> None:
        port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "sentinel.conf"  # sentinel rewrites it: a file of its own
        config.write_text(
            f"port {port}\nbind {HOST}\ndir {workdir}\n"
            f"sentinel monitor {SERVICE} {HOST} {master_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 3000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        super().__init__([binary, str(config), "--sentinel"], workdir, port)

    def is_ready(self) -> bool:
        try:
            with redis.Redis(HOST, self.port, socket_timeout=1) as probe:
                return bool(probe.ping())
        except redis.RedisError:
            return False


class Topology:
    def __init__(self, binary: str, root: Path) -> None:
        self.master = RedisServer(binary, _dir(root / "master"))
        self.replica = RedisServer(
            binary, _dir(root / "replica"), extra=["--replicaof", HOST, str(self.master.port)]
        )
        self.sentinels = [
            SentinelServer(binary, root / f"sentinel{i}", self.master.port) for i in range(3)
        ]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(HOST, s.port) for s in self.sentinels]

    def ask(self, *command: Any) -> list[Any]:
        replies = []
        for s in self.sentinels:
            with redis.Redis(HOST, s.port, socket_timeout=1, decode_responses=True) as probe:
                replies.append(probe.execute_command(*command))
        return replies

    def master_address(self) -> set[tuple[str, int]]:
        found = set()
        for reply in self.ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE):
            found.add((reply[0], int(reply[1])))
        return found

    def wait_settled(self, timeout: float = 20.0) -> None:
        """Until every sentinel knows the replica and the two other sentinels."""
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for reply in self.ask("SENTINEL", "MASTER", SERVICE):
                state = dict(zip(reply[::2], reply[1::2], strict=True)) if isinstance(
                    reply, list) else reply
                states.append(state)
            if all(int(s["num-slaves"]) == 1 and int(s["num-other-sentinels"]) == 2
                   for s in states):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"sentinels did not settle: {states}")
            time.sleep(0.1)


    def wait_replica_up(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        with redis.Redis(HOST, self.replica.port, decode_responses=True) as replica:
            while replica.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise AssertionError("the replica did not sync with the master")
                time.sleep(0.1)


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server", "apt-get install redis-server")
    topo = Topology(binary, tmp_path)
    with serving(topo.master), serving(topo.replica):
        started: list[SentinelServer] = []
        try:
            for s in topo.sentinels:
                s.start()
                started.append(s)
            topo.wait_settled()
            topo.wait_replica_up()
            yield topo
        finally:
            for s in started:
                s.stop()


def _config(topo: Topology, prefix: str, **extra: Any) -> dict[str, Any]:
    return {"SESSION_CONFIG": [{
        "cookie_name": "session", "session_type": "redis", "sentinel": topo.addresses,
        "service_name": SERVICE, "key_prefix": prefix, "timeout": 2.0, **extra,
    }]}


def test_sessions_survive_a_failover(topology: Topology) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    app = flask_app(_config(topology, prefix))
    # Sessions written before the kill, and replicated.
    clients = []
    for i in range(20):
        client = app.test_client()
        assert client.post("/set", json={"who": i}).status_code == 200
        clients.append(client)
    with redis.Redis(HOST, topology.master.port) as master:
        assert len(master.keys(f"{prefix}*")) == 20
        # WAIT counts the replicas that have this connection's last write, and so all before.
        master.set(f"{prefix}marker", b"1")
        assert master.execute_command("WAIT", 1, 5000) == 1

    stop = threading.Event()
    log: list[tuple[float, bool]] = []  # (time, request pair succeeded)

    def loop() -> None:
        client = app.test_client()
        n = 0
        while not stop.is_set():
            n += 1
            try:
                ok = (client.post("/set", json={"n": n}).status_code == 200
                      and client.get("/show").get_json() == {"n": repr(n)})
            except Exception:  # any failure is a failed request here
                ok = False
            log.append((time.monotonic(), ok))
            if not ok:
                time.sleep(0.01)

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    try:
        time.sleep(0.5)
        assert log, "no requests before the kill"
        assert all(ok for _, ok in log), "requests failed before the kill"
        old = (HOST, topology.master.port)
        killed = time.monotonic()
        topology.master.kill()
        # Until the sentinels promote the replica and requests succeed again.
        deadline = killed + 20.0
        while time.monotonic() < deadline:
            recovered = [t for t, ok in log if t > killed and ok]
            failed = [t for t, ok in log if t > killed and not ok]
            if failed and recovered and recovered[-1] > failed[-1] + 1.0:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"no recovery within 20 s: {log[-5:]}")
    finally:
        stop.set()
        worker.join(10)
    assert topology.master_address() == {(HOST, topology.replica.port)} != {old}
    after = [(t, ok) for t, ok in log if t > killed]
    failed = [t for t, ok in after if not ok]
    first_ok = next(t for t, ok in after if ok and t > failed[-1])
    per_second = sum(1 for t, _ in log if t <= killed) / (killed - log[0][0] + 1e-9)
    print(
        f"\nsentinel failover: {len(failed)} failed request pairs of {len(after)} after the "
        f"kill; back {first_ok - killed:.1f} s after it ({per_second:.0f} pairs/s before)"
    )
    # Bounded: fewer failures than the requests of 15 s at the pre-kill rate.
    assert len(failed) < per_second * 15
    # Sessions written before the kill are on the promoted replica.
    for i, client in enumerate(clients):
        assert client.get("/show").get_json() == {"who": repr(i)}
    with redis.Redis(HOST, topology.replica.port) as new_master:
        assert new_master.info("replication")["role"] == "master"


def test_client_from_master_for(topology: Topology) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    for made in (
        redis.asyncio.Sentinel(topology.addresses).master_for(SERVICE),
        redis.sentinel.Sentinel(topology.addresses).master_for(SERVICE),
    ):
        app = flask_app({"SESSION_CONFIG": [{
            "cookie_name": "session", "session_type": "redis", "client": made,
            "key_prefix": prefix,
        }]})
        client = app.test_client()
        assert client.post("/set", json={"a": 1}).status_code == 200
        assert client.get("/show").get_json() == {"a": "1"}
        with redis.Redis(HOST, topology.master.port) as master:
            assert master.keys(f"{prefix}*")


def test_sentinel_options() -> None:
    addresses = [(HOST, 26379), (HOST, 26380)]
    store = RedisBackend(sentinel=addresses, service_name=SERVICE, db=3, password="pw",
                         sentinel_kwargs={"password": "spw"})
    assert store.location == f"redis+sentinel://{HOST}:26379,{HOST}:26380/{SERVICE}/3"
    assert "pw" not in store.location
    tls = RedisBackend(sentinel=addresses, service_name=SERVICE, ssl=True,
                       connection_kwargs={"ssl_ca_certs": "/ca.pem"})
    assert tls.location.startswith("rediss+sentinel://")
    for bad in ("127.0.0.1:26379", [], [(HOST,)], [(HOST, "26379")], [(HOST, 0)],
                [("", 26379)], {HOST: 26379}, [(HOST, True)]):
        with pytest.raises(ValueError, match="sentinel"):
            RedisBackend(sentinel=bad, service_name=SERVICE)
    with pytest.raises(ValueError, match="sentinel or url"):
        RedisBackend(sentinel=addresses, service_name=SERVICE, url="redis://127.0.0.1/0")
    with pytest.raises(ValueError, match="sentinel or client"):
        RedisBackend(sentinel=addresses, service_name=SERVICE, client=redis.asyncio.Redis())
    with pytest.raises(ValueError, match="sentinel or cluster"):
        RedisBackend(sentinel=addresses, service_name=SERVICE, cluster=True)
    with pytest.raises(ValueError, match="service_name"):
        RedisBackend(sentinel=addresses)
    for option in ("service_name", "sentinel_kwargs", "password", "db", "ssl"):
        value: Any = {"service_name": SERVICE, "sentinel_kwargs": {}, "password": "pw",
                      "db": 1, "ssl": True}[option]
        with pytest.raises(ValueError, match=f"{option} goes with sentinel"):
            RedisBackend(url="redis://127.0.0.1/0", **{option: value})
    with pytest.raises(ValueError, match=r"connection_kwargs: unknown .* 'bogus'"):
        RedisBackend(sentinel=addresses, service_name=SERVICE, connection_kwargs={"bogus": 1})
    with pytest.raises(ValueError, match=r"sentinel_kwargs: unknown .* 'bogus'"):
        RedisBackend(sentinel=addresses, service_name=SERVICE, sentinel_kwargs={"bogus": 1})
    with pytest.raises(ValueError, match="db"):
        RedisBackend(sentinel=addresses, service_name=SERVICE, db=-1)
    with pytest.raises(TypeError, match="slave_for"):
        RedisBackend(client=redis.asyncio.Sentinel(addresses).slave_for(SERVICE))
    # Through SESSION_CONFIG the error names the option.
    with pytest.raises(ValueError, match="sentinel"):
        flask_app({"SESSION_CONFIG": [{
            "cookie_name": "s", "session_type": "redis", "sentinel": "127.0.0.1:26379",
            "service_name": SERVICE,
        }]})
