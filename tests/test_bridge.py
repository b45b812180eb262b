"""The Flask bridge against a real redis-server: loops and pools reused, fork, exit, threads.

Most tests give their app a fresh :class:`~asyncsessions.bridge.Bridge` so loop counts are
exact; the fork test uses the process's own bridge, since only that one is reset after fork.
Each test names its redis connections (``client_name``) so ``CLIENT LIST`` counts only them.
"""

from __future__ import annotations

import asyncio
import gc
import http.client
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.cookies import SimpleCookie
from typing import Any

import flask
import pymongo
import pymongo.monitoring
import pytest
import redis
import redis.asyncio
from werkzeug.serving import make_server

import asyncsessions
import asyncsessions.bridge
from apps import flask_app
from asyncsessions.bridge import Bridge, get_bridge

# helpers


def unique() -> str:
    return f"bridge-{uuid.uuid4().hex[:10]}"


def redis_entry(url: str, name: str, *, plain: bool = False, **more: Any) -> dict[str, Any]:
    """A SESSION_CONFIG entry whose connections are named ``name`` on the server.

    RESP3 keeps redis-py's async client, which needs an event loop: the bridge's loops are
    what most tests here are about. ``plain``: a plain connection, whose one-op plans run
    without any loop (section 7).
    """
    query = f"client_name={name}" + ("" if plain else "&protocol=3")
    return {"cookie_name": "sid", "session_type": "redis", "url": f"{url}?{query}",
            "key_prefix": f"{name}:", **more}


def make_app(config: dict[str, Any], bridge: Bridge | None, **extra: Any) -> flask.Flask:
    app = flask_app(config, **extra)
    if bridge is not None:
        app.session_interface.bridge = bridge  # type: ignore[attr-defined]
    return app


def connection_ids(admin: redis.Redis, name: str) -> set[int]:
    """Ids of the server's connections named ``name``."""
    return {int(c["id"]) for c in admin.client_list() if c.get("name") == name}


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``check`` (the server notices closed connections asynchronously)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def threads_back_to(baseline: int, timeout: float = 5.0) -> bool:
    return eventually(lambda: threading.active_count() <= baseline, timeout)


@pytest.fixture
def admin(redis_server: Any) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    fresh = Bridge()
    yield fresh
    fresh.close()


@pytest.fixture
def loop_counter(monkeypatch: pytest.MonkeyPatch) -> list[asyncio.AbstractEventLoop]:
    """Every event loop created from now on (through asyncio.new_event_loop)."""
    made: list[asyncio.AbstractEventLoop] = []
    real = asyncio.new_event_loop

    def counting() -> asyncio.AbstractEventLoop:
        loop = real()
        made.append(loop)
        return loop

    monkeypatch.setattr(asyncio, "new_event_loop", counting)
    return made


# 1. one reused loop, one reused connection


def test_sequential_requests_reuse_one_loop_and_one_connection(
    redis_server: Any, admin: redis.Redis, bridge: Bridge, loop_counter: list[Any]
) -> None:
    name = unique()
    app = make_app({"SESSION_CONFIG": [redis_entry(redis_server.url, name)]}, bridge)
    client = app.test_client()
    for i in range(25):
        assert client.post("/set", json={"n": i}).status_code == 200
        assert client.get("/show").get_json() == {"n": repr(i)}
    assert len(loop_counter) == 1
    assert list(bridge._idle) == loop_counter
    assert len(connection_ids(admin, name)) == 1
    assert admin.keys(f"{name}:*"), "the session lives in redis, not in the cookie"


def test_thread_per_request_reuses_one_loop_and_one_connection(
    redis_server: Any, admin: redis.Redis, bridge: Bridge, loop_counter: list[Any]
) -> None:
    # werkzeug's threaded server runs each request in a new thread: no loop per thread.
    name = unique()
    app = make_app({"SESSION_CONFIG": [redis_entry(redis_server.url, name)]}, bridge)
    client = app.test_client()
    seen: list[Any] = []

    def one_request(i: int) -> None:
        client.post("/set", json={"n": i})
        seen.append(client.get("/show").get_json())

    for i in range(20):
        thread = threading.Thread(target=one_request, args=(i,))
        thread.start()
        thread.join()
    assert seen == [{"n": repr(i)} for i in range(20)]
    assert len(loop_counter) == 1
    assert len(connection_ids(admin, name)) == 1


# 2. client-side stores never reach the bridge


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"SESSION_CONFIG": [{"cookie_name": "sid", "session_type": "secure_cookie"}]},
        {"SESSION_CONFIG": [
            {"cookie_name": "a", "session_type": "secure_cookie", "session_fields": ["user"]},
            {"cookie_name": "b", "session_type": "secure_cookie"},
        ]},
    ],
    ids=["default", "one-secure-cookie", "two-secure-cookies"],
)
def test_client_side_only_config_does_no_async_work(
    config: dict[str, Any], bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_async(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a client-side store reached the event loop")

    monkeypatch.setattr(Bridge, "run", no_async)
    monkeypatch.setattr(asyncio, "new_event_loop", no_async)
    threads = threading.active_count()
    client = make_app(config, bridge).test_client()
    client.post("/set", json={"user": 7, "theme": "dark"})
    assert client.get("/show").get_json() == {"user": "7", "theme": "'dark'"}
    client.post("/del", json={"theme": 1})
    assert client.get("/show").get_json() == {"user": "7"}
    assert client.get("/none").status_code == 200
    assert not bridge._idle
    assert bridge._loop_thread is None
    assert threading.active_count() == threads


# 3. a real thread-per-request WSGI server


def _http(port: int, method: str, path: str, sid: str | None,
          body: Any = None) -> tuple[int, Any, str | None]:
    """One request on a new connection (so the server starts a thread for it)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    headers = {"Connection": "close"}
    data = None
    if sid is not None:
        headers["Cookie"] = f"sid={sid}"
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body)
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        payload = json.loads(response.read())
        new_sid = None
        for header in response.headers.get_all("Set-Cookie") or []:
            jar: SimpleCookie = SimpleCookie()
            jar.load(header)
            if "sid" in jar:
                new_sid = jar["sid"].value
        return response.status, payload, new_sid
    finally:
        conn.close()


def test_threaded_wsgi_server_isolates_clients_and_bounds_loops_and_connections(
    redis_server: Any, admin: redis.Redis, bridge: Bridge, loop_counter: list[Any]
) -> None:
    clients, rounds = 16, 7  # 16 * 7 * 2 = 224 requests
    name = unique()
    app = make_app({"SESSION_CONFIG": [redis_entry(redis_server.url, name)]}, bridge)

    active = peak = 0
    lock = threading.Lock()
    real_run = bridge.run

    def measured_run(factory: Any) -> Any:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        try:
            return real_run(factory)
        finally:
            with lock:
                active -= 1

    bridge.run = measured_run  # type: ignore[method-assign]

    baseline = threading.active_count()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    serving.start()
    try:
        def browse(who: int) -> int:
            sid = None
            for n in range(rounds):
                status, body, new_sid = _http(server.port, "POST", "/set", sid,
                                              {"who": who, "n": n})
                assert status == 200, body
                sid = new_sid or sid
                assert sid is not None
                status, body, _ = _http(server.port, "GET", "/show", sid)
                assert status == 200, body
                assert body == {"who": repr(who), "n": repr(n)}, f"client {who} saw {body}"
            return who

        with ThreadPoolExecutor(clients) as pool:
            assert sorted(pool.map(browse, range(clients))) == list(range(clients))
    finally:
        server.shutdown()
        server.server_close()
        serving.join(timeout=10)

    assert 1 <= len(bridge._idle) <= peak <= clients
    assert len(loop_counter) == len(bridge._idle), "no loop was made and then thrown away"
    # One session op at a time per loop: at most one pooled connection per loop, all kept.
    assert 1 <= len(connection_ids(admin, name)) <= len(bridge._idle)
    assert threads_back_to(baseline), (threading.active_count(), baseline)


@pytest.mark.parametrize(
    "how", ["url", "client"],
)
def test_loops_closed_over_the_cap_close_their_connections(
    how: str, redis_server: Any, admin: redis.Redis, bridge: Bridge,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    # Over MAX_IDLE_LOOPS concurrent threads, loops are closed when given back; their
    # connections must go with them, or a busy server leaks a connection per request.
    monkeypatch.setattr(asyncsessions.bridge, "MAX_IDLE_LOOPS", 0)
    name = unique()
    entry = redis_entry(redis_server.url, name)
    if how == "client":
        del entry["url"]
        entry["client"] = redis.asyncio.Redis.from_url(redis_server.url, client_name=name,
                                                       protocol=3)
    client = make_app({"SESSION_CONFIG": [entry]}, bridge).test_client()
    gc.disable()  # a leaked connection would otherwise close whenever gc happens to run
    try:
        for i in range(10):
            client.post("/set", json={"n": i})
            assert client.get("/show").get_json() == {"n": repr(i)}
        assert not bridge._idle
        assert eventually(lambda: not connection_ids(admin, name), timeout=2), (
            f"{len(connection_ids(admin, name))} connections left open"
        )
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()  # reap what leaked here, so no other test reports it
        gc.enable()


# 4. Flask async views


def test_async_view_reads_and_writes_the_redis_session(
    redis_server: Any, admin: redis.Redis, bridge: Bridge
) -> None:
    async def visit() -> Any:
        await asyncio.sleep(0)
        visits = flask.session.get("visits", 0) + 1
        flask.session["visits"] = visits
        flask.session.pop("gone", None)
        return {"visits": visits, "seen": sorted(flask.session)}

    name = unique()
    app = make_app({"SESSION_CONFIG": [redis_entry(redis_server.url, name)]}, bridge,
                   visit=visit)
    client = app.test_client()
    client.post("/set", json={"gone": 1, "kept": "k"})
    for n in range(1, 6):
        assert client.get("/visit").get_json() == {"visits": n, "seen": ["kept", "visits"]}
    assert client.get("/show").get_json() == {"visits": "5", "kept": "'k'"}
    assert admin.keys(f"{name}:*")
    assert len(bridge._idle) == 1


# 5. fork


def test_fork_child_uses_fresh_connections_and_parent_is_undisturbed(
    redis_server: Any, admin: redis.Redis
) -> None:
    name = unique()
    app = make_app({"SESSION_CONFIG": [redis_entry(redis_server.url, name)]}, None)
    assert app.session_interface.bridge is get_bridge()  # type: ignore[attr-defined]
    client = app.test_client()
    client.post("/set", json={"who": "parent"})
    assert client.get("/show").get_json() == {"who": "'parent'"}

    async def from_a_running_loop(c: Any) -> Any:
        return c.get("/show").get_json()

    # Also gives the parent a shared loop thread, which the child does not inherit.
    assert asyncio.run(from_a_running_loop(client)) == {"who": "'parent'"}
    parent_ids = connection_ids(admin, name)
    assert parent_ids

    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            signal.alarm(15)  # a hang kills the child, and the parent sees the signal
            # The inherited cookie jar: the parent's session, read over new connections.
            assert client.get("/show").get_json() == {"who": "'parent'"}
            own = app.test_client()
            own.post("/set", json={"who": "child"})
            assert own.get("/show").get_json() == {"who": "'child'"}
            assert asyncio.run(from_a_running_loop(own)) == {"who": "'child'"}
            with redis.Redis.from_url(redis_server.url) as child_admin:
                child_ids = connection_ids(child_admin, name)
            assert child_ids - parent_ids, "the child opened no connection of its own"
            code = 0
        except BaseException:
            traceback.print_exc()
            code = 2
        finally:
            os._exit(code)

    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.02)
    code = os.waitstatus_to_exitcode(status)
    assert code == 0, f"child exit {code} (2: an assertion failed; -14: it hung)"

    # The child's connections died with it; the parent's pooled ones are still in use.
    assert eventually(lambda: connection_ids(admin, name) == parent_ids)
    client.post("/set", json={"after": 1})
    assert client.get("/show").get_json() == {"who": "'parent'", "after": "1"}
    assert connection_ids(admin, name) == parent_ids


# 6. clean exit


EXIT_SCRIPT = textwrap.dedent("""
    import atexit, gc, sys, time
    import redis

    how, url, name = sys.argv[1], sys.argv[2], sys.argv[3]

    @atexit.register  # registered first, so it runs last, after the bridge's own handler
    def check_closed():
        gc.collect()  # surfaces ResourceWarnings for whatever was dropped unclosed
        with redis.Redis.from_url(url) as admin:
            def ours():
                return [c for c in admin.client_list() if c.get("name") == name]
            deadline = time.monotonic() + 3
            while ours() and time.monotonic() < deadline:
                time.sleep(0.02)
            if ours():
                print(f"Unclosed: {len(ours())} redis connections at exit", file=sys.stderr)

    import asyncio
    import flask, redis.asyncio
    from asyncsessions import Session

    entry = {"cookie_name": "sid", "session_type": "redis", "key_prefix": f"{name}:"}
    if how == "async_client":
        entry["client"] = redis.asyncio.Redis.from_url(url, client_name=name)
    elif how == "sync_client":
        entry["client"] = redis.Redis.from_url(url, client_name=name)
    else:
        entry["url"] = f"{url}?client_name={name}"
    app = flask.Flask(__name__)
    app.secret_key = "s"
    app.config["SESSION_CONFIG"] = [entry]
    Session(app)

    @app.route("/set/<value>")
    def put(value):
        flask.session["v"] = value
        return "ok"

    @app.route("/get")
    def get():
        return flask.session.get("v", "")

    def browse(client, value):
        assert client.get(f"/set/{value}").status_code == 200
        for _ in range(3):
            assert client.get("/get").data == value.encode()

    browse(app.test_client(), "a")
    if how == "running_loop":  # also leaves the shared loop thread to shut down
        async def inside():
            browse(app.test_client(), "b")
        asyncio.run(inside())
    print("requests ok")
""")


@pytest.mark.parametrize(
    "how",
    [
        "url",
        "running_loop",
        "async_client",
        "sync_client",
    ],
)
def test_process_exits_cleanly(how: str, redis_server: Any, tmp_path: Any) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "always"}
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "always", "-c", EXIT_SCRIPT, how, redis_server.url,
         unique()],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "requests ok" in done.stdout
    for symptom in ("Task was destroyed", "Event loop is closed", "Unclosed", "unclosed",
                    "ResourceWarning", "Traceback", "Exception ignored"):
        assert symptom not in done.stderr, done.stderr


# 7. called from a thread that already runs a loop


def test_call_from_a_running_loop_uses_the_shared_loop_thread(
    redis_server: Any, admin: redis.Redis, bridge: Bridge
) -> None:
    name = unique()
    app = make_app({"SESSION_CONFIG": [redis_entry(redis_server.url, name)]}, bridge)
    client = app.test_client()
    baseline = threading.active_count()

    async def inside_a_loop() -> Any:
        # Synchronous Flask code called from async code: the loop here is already running.
        client.post("/set", json={"from": "loop"})
        await asyncio.sleep(0)
        return client.get("/show").get_json()

    assert asyncio.run(inside_a_loop()) == {"from": "'loop'"}
    assert bridge._loop_thread is not None
    assert not bridge._idle, "no loop was run inside the running one"
    # The same session, from a plain thread (the calling thread's own pooled loop).
    client.post("/set", json={"plain": 1})
    assert client.get("/show").get_json() == {"from": "'loop'", "plain": "1"}
    assert len(bridge._idle) == 1
    assert len(connection_ids(admin, name)) == 2  # one per loop, reused

    thread = bridge._loop_thread.thread
    bridge.close()
    assert not thread.is_alive()
    assert eventually(lambda: not connection_ids(admin, name))
    assert threads_back_to(baseline)


def test_bridge_close_closes_every_connection(
    redis_server: Any, admin: redis.Redis, bridge: Bridge
) -> None:
    # What atexit does: the server must see the clients go, not wait for the process to die.
    name = unique()
    app = make_app({"SESSION_CONFIG": [redis_entry(redis_server.url, name)]}, bridge)
    clients = [app.test_client() for _ in range(4)]
    barrier = threading.Barrier(len(clients))

    def browse(client: Any) -> None:
        barrier.wait()
        client.post("/set", json={"x": 1})

    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(browse, clients))
    assert connection_ids(admin, name)
    bridge.close()
    assert not bridge._idle
    assert eventually(lambda: not connection_ids(admin, name))


def test_interrupted_call_leaves_its_loop_fit_for_the_next(
    bridge: Bridge, loop_counter: list[asyncio.AbstractEventLoop]
) -> None:
    # Ctrl-C lands while the session I/O is still waiting.
    async def interrupted() -> None:
        asyncio.get_running_loop().call_soon(_raise_keyboard_interrupt)
        await asyncio.sleep(5)

    with pytest.raises(KeyboardInterrupt):
        bridge.run(interrupted)

    async def answer() -> int:
        await asyncio.sleep(0.01)
        return 42

    started = time.monotonic()
    assert bridge.run(answer) == 42  # on the same pooled loop, not stopped by the first
    assert time.monotonic() - started < 1
    assert len(loop_counter) == 1
    assert not asyncio.all_tasks(loop_counter[0])


def _raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


# 7. one op on a plain redis connection: no event loop at all


def test_plain_redis_single_ops_run_without_a_loop_on_one_connection_per_thread(
    redis_server: Any, admin: redis.Redis, bridge: Bridge, loop_counter: list[Any]
) -> None:
    name = unique()
    app = make_app({"SESSION_CONFIG": [redis_entry(redis_server.url, name, plain=True)]},
                   bridge)
    client = app.test_client()
    for i in range(10):
        assert client.post("/set", json={"n": i}).status_code == 200
        assert client.get("/show").get_json() == {"n": repr(i)}
    assert loop_counter == []
    assert not bridge._idle
    mine = connection_ids(admin, name)
    assert len(mine) == 1

    def one_request(i: int) -> None:
        assert client.post("/set", json={"n": i}).status_code == 200

    for i in range(10):  # a thread per request, as werkzeug's threaded server runs them
        thread = threading.Thread(target=one_request, args=(i,))
        thread.start()
        thread.join()
    assert client.get("/show").get_json() == {"n": "9"}
    # Each ended thread's connection is closed when the next thread makes its own.
    assert eventually(lambda: len(connection_ids(admin, name)) <= 2)
    assert mine <= connection_ids(admin, name)
    assert loop_counter == []
    bridge.close()
    assert eventually(lambda: not connection_ids(admin, name))


def test_plain_redis_plan_of_several_ops_goes_through_the_bridge(
    redis_server: Any, bridge: Bridge, loop_counter: list[Any]
) -> None:
    name = unique()
    app = make_app({"SESSION_CONFIG": [redis_entry(redis_server.url, name, plain=True)]},
                   bridge)
    client = app.test_client()
    client.post("/set", json={"n": 1})
    assert loop_counter == []
    # regenerate(): delete the old record and write the new one, concurrently on a loop.
    assert client.post("/regenerate").status_code == 200
    assert client.get("/show").get_json() == {"n": "1"}
    assert len(loop_counter) == 1


def test_plain_redis_that_hangs_times_out_without_a_loop(
    bridge: Bridge, loop_counter: list[Any]
) -> None:
    import socket

    with socket.socket() as black_hole:  # accepts connections, never answers
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen()
        port = black_hole.getsockname()[1]
        app = make_app({"TESTING": True, "SESSION_CONFIG": [{
            "cookie_name": "sid", "session_type": "redis", "timeout": 0.3,
            "url": f"redis://127.0.0.1:{port}/0",
        }]}, bridge)
        client = app.test_client()
        client.set_cookie("sid", "A" * 43)
        started = time.monotonic()
        with pytest.raises(asyncsessions.SessionBackendError, match=r"no answer within 0\.3 s"):
            client.get("/show")
        assert time.monotonic() - started < 2
    assert loop_counter == []


# 8. MongoDB without a loop: PyMongo's sync client, one for all threads


class Pools(pymongo.monitoring.ConnectionPoolListener):
    """Counts the connection pools (one per client and server) made and closed."""

    def __init__(self) -> None:
        self.created = 0
        self.closed = 0

    def pool_created(self, event: Any) -> None:
        self.created += 1

    def pool_closed(self, event: Any) -> None:
        self.closed += 1

    def __getattr__(self, name: str) -> Any:  # the other pool and connection events
        return lambda event: None


def mongodb_entry(mongo_server: Any, **more: Any) -> dict[str, Any]:
    return {"cookie_name": "sid", "session_type": "mongodb", "url": mongo_server.url,
            "collection": f"b{uuid.uuid4().hex[:8]}", **more}


def test_mongodb_single_ops_run_without_a_loop_on_one_client_for_all_threads(
    mongo_server: Any, bridge: Bridge, loop_counter: list[Any]
) -> None:
    pools = Pools()
    user_client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        mongo_server.url, event_listeners=[pools], connect=False)
    entry = mongodb_entry(mongo_server)
    del entry["url"]
    app = make_app({"SESSION_CONFIG": [{**entry, "client": user_client}]}, bridge)
    client = app.test_client()
    for i in range(5):
        assert client.post("/set", json={"n": i}).status_code == 200
        assert client.get("/show").get_json() == {"n": repr(i)}

    def one_request(i: int) -> None:
        assert client.post("/set", json={"n": i}).status_code == 200

    for i in range(5):  # a thread per request, as werkzeug's threaded server runs them
        thread = threading.Thread(target=one_request, args=(i,))
        thread.start()
        thread.join()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: client.get("/show").status_code, range(20)))
    assert client.get("/show").get_json() == {"n": "4"}
    assert loop_counter == []
    assert pools.created == 1  # the user's client made none: it never connected
    bridge.close()
    assert pools.closed == 1
    assert client.get("/show").get_json() == {"n": "4"}  # a later request opens it anew
    user_client.close()


def test_mongodb_that_hangs_times_out_without_a_loop(
    bridge: Bridge, loop_counter: list[Any]
) -> None:
    import socket

    with socket.socket() as black_hole:  # accepts connections, never answers
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen()
        port = black_hole.getsockname()[1]
        app = make_app({"TESTING": True, "SESSION_CONFIG": [{
            "cookie_name": "sid", "session_type": "mongodb", "timeout": 0.3,
            "url": f"mongodb://127.0.0.1:{port}/?directConnection=true",
        }]}, bridge)
        client = app.test_client()
        client.set_cookie("sid", "A" * 43)
        started = time.monotonic()
        with pytest.raises(asyncsessions.SessionBackendError, match=r"no answer within 0\.3 s"):
            client.get("/show")
        assert time.monotonic() - started < 2
    assert loop_counter == []


@pytest.mark.parametrize("kind", ["redis", "memcache", "mongodb"])
def test_an_app_dropped_leaves_no_client_unclosed(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """Test suites make and drop apps: the clients their stores made without a loop are
    closed with them, so ``-W error::ResourceWarning`` suites stay green."""
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
        entry = redis_entry(server.url, unique(), plain=True)
    elif kind == "memcache":
        server = request.getfixturevalue("memcached_server")
        entry = {"cookie_name": "sid", "session_type": "memcache",
                 "servers": [f"{server.host}:{server.port}"], "key_prefix": f"{unique()}:"}
    else:
        entry = mongodb_entry(request.getfixturevalue("mongo_server"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        app = make_app({"SESSION_CONFIG": [entry]}, None)
        client = app.test_client()
        assert client.post("/set", json={"n": 1}).status_code == 200
        assert client.get("/show").get_json() == {"n": "1"}
        del app, client
        gc.collect()
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []
