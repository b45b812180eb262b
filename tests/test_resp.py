"""The pipelined RESP client (backends/resp.py) on a real redis-server; when the store uses it."""

from __future__ import annotations

import asyncio
import gc
import shutil
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import anyio
import pytest
import redis
import redis.asyncio
import redis.exceptions
from redis.credentials import UsernamePasswordCredentialProvider

from asyncsessions.backends import resp
from asyncsessions.backends.base import Write, close_loop_clients, run_without_loop
from asyncsessions.backends.redis import RedisBackend, _FastClient
from asyncsessions.backends.resp import RespClient

T = TypeVar("T")
# How long tests pause the server (CLIENT PAUSE cannot be lifted early: it pauses the
# unpause too): far longer than what they wait for meanwhile, so that a stalled machine
# cannot end it before the test has sent what it must.
PAUSE_MS = 1000


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def unique() -> str:
    return f"resp-{uuid.uuid4().hex[:10]}"


def client_for(server: Any, **kwargs: Any) -> RespClient:
    return RespClient(server.host, server.port, **kwargs)


async def connection_id(client: RespClient) -> int:
    ident: int = await client.execute("CLIENT", "ID")
    return ident


@pytest.fixture
def admin(redis_server: Any) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.client_unpause()
    client.close()


@pytest.fixture
def locked_server(tmp_path: Any) -> Iterator[tuple[int, redis.Redis]]:
    """A throwaway redis-server with a password, and an ACL user alice (password wonder)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--requirepass", "secret", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    admin = redis.Redis(host="127.0.0.1", port=port, password="secret")
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                admin.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        admin.acl_setuser("alice", enabled=True, passwords=["+wonder"], keys=["*"],
                          commands=["+@all"])
        yield port, admin
    finally:
        admin.close()
        proc.terminate()
        proc.wait(10)


# pipelining


def test_concurrent_callers_share_one_connection_and_each_get_their_reply(
    redis_server: Any, admin: redis.Redis
) -> None:
    name = unique()

    async def pair(client: RespClient, i: int) -> tuple[int, bytes]:
        incr, got = await asyncio.gather(
            client.execute("INCRBY", f"{name}:{i}", i),
            client.execute("GET", f"{name}:{i}"),
        )
        return incr, got

    async def main() -> tuple[list[tuple[int, bytes]], int]:
        client = client_for(redis_server, client_name=name)
        try:
            replies = list(await asyncio.gather(*(pair(client, i) for i in range(200))))
            return replies, sum(1 for c in admin.client_list() if c.get("name") == name)
        finally:
            await client.aclose()

    replies, connections = run(main())
    assert replies == [(i, str(i).encode()) for i in range(200)]
    assert connections == 1
    assert admin.get(f"{name}:199") == b"199"


def test_commands_are_written_together_on_one_connection(redis_server: Any) -> None:
    async def main() -> tuple[set[int], int]:
        client = client_for(redis_server)
        try:
            await client.execute("PING")
            protocol = client._protocol
            assert protocol is not None
            calls = [connection_id(client) for _ in range(50)]
            waiting = asyncio.gather(*calls)
            await asyncio.sleep(0)  # every call has written its command, none has its reply
            queued = len(protocol.pending)
            return set(await waiting), queued
        finally:
            await client.aclose()

    ids, queued = run(main())
    assert len(ids) == 1
    assert queued == 50


def test_socket_options(redis_server: Any) -> None:
    async def main() -> tuple[int, int]:
        client = client_for(redis_server)
        try:
            await client.execute("PING")
            assert client._protocol is not None
            sock = client._protocol.transport.get_extra_info("socket")
            return (sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
        finally:
            await client.aclose()

    assert all(run(main()))


def test_a_bad_argument_costs_no_slot_in_the_reply_queue(redis_server: Any) -> None:
    key = unique()

    async def main() -> Any:
        client = client_for(redis_server)
        try:
            await client.execute("SET", key, b"v")
            with pytest.raises(TypeError):
                await client.execute("GET", None)  # type: ignore[arg-type]
            return await client.execute("GET", key)
        finally:
            await client.aclose()

    assert run(main()) == b"v"


# connection setup


def test_auth_with_password_user_and_select_and_client_name(
    locked_server: tuple[int, redis.Redis]
) -> None:
    port, admin = locked_server
    name = unique()

    async def main() -> None:
        by_password = RespClient("127.0.0.1", port, password="secret", db=3)
        as_alice = RespClient("127.0.0.1", port, username="alice", password="wonder",
                              db=3, client_name=name)
        nobody = RespClient("127.0.0.1", port)
        wrong = RespClient("127.0.0.1", port, username="alice", password="nope")
        try:
            assert await by_password.execute("SET", "k", b"pw") is not None
            assert await as_alice.execute("GET", "k") == b"pw"
            assert await as_alice.execute("ACL", "WHOAMI") == b"alice"
            assert [c["user"] for c in admin.client_list() if c.get("name") == name] == ["alice"]
            with pytest.raises(redis.exceptions.AuthenticationError):
                await nobody.execute("GET", "k")
            with pytest.raises(redis.exceptions.AuthenticationError):
                await wrong.execute("GET", "k")
        finally:
            for client in (by_password, as_alice, nobody, wrong):
                await client.aclose()

    run(main())
    assert admin.get("k") is None  # db 0
    admin.select(3)
    assert admin.get("k") == b"pw"


def test_store_url_with_credentials_db_and_client_name(
    locked_server: tuple[int, redis.Redis]
) -> None:
    port, admin = locked_server
    name = unique()
    backend = RedisBackend(url=f"redis://alice:wonder@127.0.0.1:{port}/3?client_name={name}")
    assert backend.location == f"redis://127.0.0.1:{port}/3"  # named in errors: no secret

    async def main() -> Any:
        assert isinstance(backend.client, _FastClient)
        assert await backend.store("s:1", Write({"a": b"1"}, (), True, 60, create=True))
        names = [c.get("name") for c in admin.client_list()]
        record = await backend.load("s:1", touch=True)
        await close_loop_clients()
        return record, names

    record, names = run(main())
    assert record.fields == {"a": b"1"}
    assert record.permanent
    assert name in names
    admin.select(3)
    assert admin.hget("s:1", "a") == b"1"


# errors


def test_error_replies_raise_redis_py_exceptions(redis_server: Any) -> None:
    key = unique()

    async def main() -> None:
        client = client_for(redis_server)
        try:
            with pytest.raises(redis.exceptions.NoScriptError):
                await client.execute("EVALSHA", "0" * 40, 0)
            await client.execute("SET", key, b"x")
            with pytest.raises(redis.exceptions.ResponseError, match=r"^WRONGTYPE"):
                await client.execute("HGETALL", key)
            with pytest.raises(redis.exceptions.ResponseError, match="unknown command"):
                await client.execute("NOSUCHCOMMAND")
            assert await client.execute("GET", key) == b"x"  # the connection is still fine
        finally:
            await client.aclose()

    run(main())


def test_commands_sent_together_get_their_replies_in_order_errors_as_objects(
    redis_server: Any,
) -> None:
    key = unique()

    async def main() -> list[Any]:
        client = client_for(redis_server)
        try:
            await client.execute("PING")
            protocol = client._protocol
            assert protocol is not None
            writes = []
            write = protocol.transport.write

            def counted(data: Any) -> None:
                writes.append(data)
                write(data)

            protocol.transport.write = counted  # type: ignore[method-assign]
            replies = await client.execute_all(
                ("SET", key, b"x"), ("HGETALL", key), ("EVALSHA", "0" * 40, 0), ("GET", key))
            assert len(writes) == 1  # one write: the server gets them together
            return replies
        finally:
            await client.aclose()

    ok, wrongtype, noscript, value = run(main())
    assert ok == b"OK"
    assert isinstance(wrongtype, redis.exceptions.ResponseError)
    assert str(wrongtype).startswith("WRONGTYPE")
    assert isinstance(noscript, redis.exceptions.NoScriptError)
    assert value == b"x"


# cancellation


def test_a_cancelled_command_leaves_no_reply_for_the_next_one(
    redis_server: Any, admin: redis.Redis
) -> None:
    a, b = unique(), unique()
    admin.set(a, b"A")
    admin.set(b, b"B")

    async def main() -> tuple[Any, int, int]:
        client = client_for(redis_server)
        try:
            before = await connection_id(client)
            admin.client_pause(PAUSE_MS)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.execute("GET", a), 0.05)
            got = await client.execute("GET", b)  # answered once the pause ends
            return got, before, await connection_id(client)
        finally:
            await client.aclose()

    got, before, after = run(main())
    assert got == b"B"
    assert before == after, "a healthy connection is kept for the other callers"


def test_cancelling_some_of_many_callers_keeps_every_other_reply_paired(
    redis_server: Any, admin: redis.Redis
) -> None:
    name = unique()
    admin.mset({f"{name}:{i}": str(i) for i in range(60)})

    async def main() -> list[Any]:
        client = client_for(redis_server)
        try:
            await client.execute("PING")
            admin.client_pause(PAUSE_MS)
            tasks = [asyncio.ensure_future(client.execute("GET", f"{name}:{i}"))
                     for i in range(60)]
            await asyncio.sleep(0.02)
            for task in tasks[::3]:
                task.cancel()
            return await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await client.aclose()

    results = run(main())
    for i, result in enumerate(results):
        if i % 3 == 0:
            assert isinstance(result, asyncio.CancelledError)
        else:
            assert result == str(i).encode()


def test_a_stalled_connection_is_replaced_when_a_caller_gives_up(
    redis_server: Any, admin: redis.Redis
) -> None:
    a, b = unique(), unique()
    admin.set(b, b"B")

    async def main() -> tuple[Any, Any, int, int]:
        client = client_for(redis_server, stalled_after=0.05)
        try:
            before = await connection_id(client)
            admin.client_pause(PAUSE_MS)
            other = asyncio.ensure_future(client.execute("GET", b))
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.execute("GET", a), 0.1)
            # The waiting caller moves to a new connection (its command is safe to repeat).
            got = await other
            return got, await client.execute("GET", b), before, await connection_id(client)
        finally:
            await client.aclose()

    other, got, before, after = run(main())
    assert other == got == b"B"
    assert before != after


def test_a_store_timeout_never_hands_one_session_another_sessions_record(
    redis_server: Any, admin: redis.Redis
) -> None:
    # The engine bounds each op with anyio.fail_after, which cancels it: the next load on
    # the same connection must read its own session, not the late reply of the cancelled one.
    prefix = unique()
    backend = RedisBackend(url=redis_server.url)

    async def main() -> tuple[Any, Any]:
        await backend.store(f"{prefix}:a", Write({"who": b"a"}, (), False, 60, create=True))
        await backend.store(f"{prefix}:b", Write({"who": b"b"}, (), False, 60, create=True))
        await backend.load(f"{prefix}:b", touch=True)  # the script is cached: EVALSHA answers
        admin.client_pause(PAUSE_MS)
        with pytest.raises(TimeoutError), anyio.fail_after(0.05):
            await backend.load(f"{prefix}:a", touch=True)
        b = await backend.load(f"{prefix}:b", touch=True)
        a = await backend.load(f"{prefix}:a", touch=False)
        await close_loop_clients()
        return a, b

    a, b = run(main())
    assert a.fields == {"who": b"a"}
    assert b.fields == {"who": b"b"}


# lost connections


def test_server_killed_then_restarted(redis_server: Any) -> None:
    key = unique()

    async def main() -> Any:
        client = client_for(redis_server)
        try:
            await client.execute("SET", key, b"1")
            with redis_server.down(kill=True), pytest.raises(redis.exceptions.ConnectionError):
                await client.execute("GET", key)
            await client.execute("SET", key, b"2")
            return await client.execute("GET", key)
        finally:
            await client.aclose()

    assert run(main()) == b"2"


def test_connection_closed_while_idle_is_replaced_by_the_next_command(
    redis_server: Any, admin: redis.Redis
) -> None:
    # As in the Flask bridge, the loop does not run between requests: the server's close is
    # only noticed when the next command is sent, which then goes out again on a new connection.
    name = unique()

    async def main() -> tuple[int, int, Any]:
        client = client_for(redis_server, client_name=name)
        try:
            before = await connection_id(client)
            assert admin.client_kill_filter(_id=before) == 1
            time.sleep(0.1)  # blocks the loop on purpose
            return before, await connection_id(client), await client.execute("PING")
        finally:
            await client.aclose()

    before, after, pong = run(main())
    assert before != after
    assert pong == b"PONG"


def test_close_fails_waiting_callers_and_a_later_command_reconnects(
    redis_server: Any, admin: redis.Redis
) -> None:
    async def main() -> tuple[int, int]:
        client = client_for(redis_server)
        before = await connection_id(client)
        admin.client_pause(PAUSE_MS)
        waiting = asyncio.ensure_future(client.execute("PING"))
        await asyncio.sleep(0.01)
        await client.aclose()
        with pytest.raises(redis.exceptions.ConnectionError, match="closed by the client"):
            await waiting
        after = await connection_id(client)
        await client.aclose()
        return before, after

    before, after = run(main())
    assert before != after


def test_connect_errors_are_redis_py_errors() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed

    async def main() -> None:
        client = RespClient("127.0.0.1", port)
        with pytest.raises(redis.exceptions.ConnectionError, match=f"127.0.0.1:{port}"):
            await client.execute("PING")
        await client.aclose()

    run(main())


def test_connection_setup_is_bounded_by_the_connect_timeout() -> None:
    with socket.socket() as listener:  # the kernel accepts; nobody ever answers the AUTH
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]

        async def main() -> float:
            client = RespClient("127.0.0.1", port, password="x", connect_timeout=0.2)
            started = time.monotonic()
            with pytest.raises(redis.exceptions.TimeoutError):
                await client.execute("PING")
            await client.aclose()
            return time.monotonic() - started

        assert run(main()) < 2


def test_closed_client_leaves_nothing_unclosed(redis_server: Any) -> None:
    async def main() -> None:
        client = client_for(redis_server)
        await client.execute("PING")
        await client.aclose()

    gc.collect()  # only this test's garbage counts
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(main())
        gc.collect()
    assert not [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


# which client the redis store uses


def store_client(backend: RedisBackend) -> Any:
    async def main() -> Any:
        client = backend.client
        await close_loop_clients()
        return client

    return run(main())


@pytest.mark.parametrize(
    "make",
    [
        lambda url: RedisBackend(url=url),
        lambda url: RedisBackend(url=url.replace("/0", "/3") + "?client_name=x&socket_timeout=2"),
        lambda url: RedisBackend(),
        lambda url: RedisBackend(client=redis.asyncio.Redis.from_url(url)),
        lambda url: RedisBackend(client=redis.asyncio.Redis(host="h", port=1, db=2,
                                                            username="u", password="p",
                                                            client_name="n")),
        lambda url: RedisBackend(client=redis.Redis.from_url(url, decode_responses=True)),
        lambda url: RedisBackend(client=redis.Redis()),
    ],
    ids=["url", "url-options", "default", "async-client", "async-settings", "sync-url",
         "sync-default"],
)
def test_plain_tcp_settings_use_the_fast_client(make: Any, redis_server: Any) -> None:
    assert isinstance(store_client(make(redis_server.url)), _FastClient)


@pytest.mark.parametrize(
    "make",
    [
        lambda url: RedisBackend(url=url.replace("redis://", "rediss://")),
        lambda url: RedisBackend(url="unix:///tmp/redis.sock?db=1"),
        lambda url: RedisBackend(url=url + "?protocol=3"),
        lambda url: RedisBackend(client=redis.asyncio.Redis(
            credential_provider=UsernamePasswordCredentialProvider("u", "p"))),
        lambda url: RedisBackend(client=redis.asyncio.Redis(ssl=True)),
        lambda url: RedisBackend(client=redis.asyncio.Redis(
            socket_keepalive_options={socket.TCP_KEEPIDLE: 5})),
        lambda url: RedisBackend(client=redis.Redis(encoding="latin-1")),
        lambda url: RedisBackend(client=redis.asyncio.Redis(redis_connect_func=print)),
    ],
    ids=["tls-url", "unix-url", "resp3", "credential-provider", "tls-client", "keepalive",
         "latin-1", "connect-hook"],
)
def test_other_settings_keep_redis_py(make: Any, redis_server: Any) -> None:
    assert type(store_client(make(redis_server.url))) is redis.asyncio.Redis


def test_cluster_keeps_redis_py() -> None:
    backend = RedisBackend(url="redis://127.0.0.1:1/0", cluster=True)  # connects lazily
    assert type(store_client(backend)) is redis.asyncio.RedisCluster


def test_without_hiredis_redis_py_does_everything(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resp, "AVAILABLE", False)
    assert type(store_client(RedisBackend(url=redis_server.url))) is redis.asyncio.Redis


# outside any event loop: blocking exchanges (stores that run without a loop)


def blocking(coro: Coroutine[Any, Any, T], seconds: float = 5.0) -> T:
    return run_without_loop(coro, seconds)


def test_outside_a_loop_commands_are_blocking_exchanges_on_one_socket(
    redis_server: Any, admin: redis.Redis
) -> None:
    name = unique()
    client = client_for(redis_server, client_name=name, db=2)
    try:
        assert blocking(client.execute("SET", "k", b"v")) == b"OK"
        assert blocking(client.execute_all(("GET", "k"), ("HGET", "k", "f"), ("PING",)))[::2] == [
            b"v", b"PONG"]
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            blocking(client.execute("HGET", "k", "f"))
        assert len([c for c in admin.client_list() if c.get("name") == name]) == 1
    finally:
        blocking(client.aclose())
    deadline = time.monotonic() + 5  # the server drops a closed client on its next turn
    while [c for c in admin.client_list() if c.get("name") == name]:
        assert time.monotonic() < deadline, "the socket was not closed"
        time.sleep(0.02)
    admin.select(2)
    assert admin.get("k") == b"v"


def test_outside_a_loop_a_socket_closed_while_idle_is_replaced(
    redis_server: Any, admin: redis.Redis
) -> None:
    client = client_for(redis_server)
    try:
        before = blocking(connection_id(client))
        assert admin.client_kill_filter(_id=before) == 1
        after = blocking(connection_id(client))
        assert before != after
    finally:
        blocking(client.aclose())


def test_outside_a_loop_auth_errors_and_down_servers_are_redis_py_errors(
    locked_server: tuple[int, redis.Redis]
) -> None:
    port, _ = locked_server
    wrong = RespClient("127.0.0.1", port, username="alice", password="nope")
    with pytest.raises(redis.exceptions.AuthenticationError):
        blocking(wrong.execute("PING"))
    alice = RespClient("127.0.0.1", port, username="alice", password="wonder")
    assert blocking(alice.execute("ACL", "WHOAMI")) == b"alice"
    blocking(alice.aclose())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with pytest.raises(redis.exceptions.ConnectionError, match=f"127.0.0.1:{closed}"):
        blocking(RespClient("127.0.0.1", closed).execute("PING"))


def test_outside_a_loop_a_silent_server_times_out_at_the_deadline(
    redis_server: Any, admin: redis.Redis
) -> None:
    client = client_for(redis_server)
    try:
        blocking(client.execute("PING"))
        admin.client_pause(PAUSE_MS)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            blocking(client.execute("PING"), 0.2)
        assert 0.15 < time.monotonic() - started < 0.8
        admin.client_unpause()
        # The socket that timed out had a reply still owed: it is dropped, not reused.
        assert blocking(client.execute("ECHO", b"x")) == b"x"
    finally:
        blocking(client.aclose())
