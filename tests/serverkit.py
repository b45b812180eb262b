"""Real redis, Redis Cluster, memcached, MongoDB-wire and Firestore servers on loopback ports.

Free of pytest, so that the benchmarks (benchmarks/servers.py) start the very same servers as
the test fixtures (tests/servers.py). The make_* functions raise Unavailable for a server
that is not installed; the fixtures turn that into a skip (a failure under CI).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

HOST = "127.0.0.1"
_LIVE: set[Server] = set()
_HANDED_OUT: set[int] = set()


class Unavailable(Exception):
    """A server's program is not installed; ``hint`` says how to install it."""

    def __init__(self, what: str, hint: str = "") -> None:
        super().__init__(f"{what} is not installed" + (f" ({hint})" if hint else ""))
        self.what = what
        self.hint = hint


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago and not handed out before in this run."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<unreadable: {exc}>"
    return text[-limit:]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    # Orphaned zombies still count for killpg() when PID 1 does not reap them; ignore those.
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _signal_and_wait(proc: subprocess.Popen[bytes], sig: signal.Signals, timeout: float) -> bool:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    deadline = time.monotonic() + timeout
    while True:
        proc.poll()
        if not _group_alive(proc.pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


class Restartable:
    """start/stop/kill, plus down() for reliability tests."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def down(self, *, kill: bool = False) -> Iterator[None]:
        """Stop (or kill) for the duration of the block, then start again on the same port."""
        if kill:
            self.kill()
        else:
            self.stop()
        try:
            yield
        finally:
            self.start()


class Server(Restartable):
    """One server process in its own process group, restartable on the same port."""

    name = "server"
    scheme = ""
    ready_timeout = 30.0

    def __init__(
        self, argv: Sequence[str], workdir: Path, port: int, cwd: Path | None = None
    ) -> None:
        """Run ``argv`` in ``cwd`` (default: ``workdir``, which also holds the log)."""
        self._argv = tuple(argv)
        self._workdir = workdir
        self._cwd = cwd or workdir
        self._port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.name}-{port}.log"

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_files(self) -> list[Path]:
        return [self.log_path]

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"

    def is_ready(self) -> bool:
        raise NotImplementedError

    def _before_start(self) -> None:
        """Hook for clearing state a killed process left behind."""

    def start(self) -> None:
        """Start (or restart, on the same port) and wait until the server answers."""
        if self.running:
            return
        self._reap()
        self._before_start()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._argv,
                cwd=self._cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own group: killpg also reaches children (the emulator's java), and the
                # terminal's Ctrl-C goes to pytest (or the benchmark), which then stops us
                # in order.
                start_new_session=True,
            )
        _LIVE.add(self)
        deadline = time.monotonic() + self.ready_timeout
        while True:
            status = self._proc.poll()
            if status is not None:
                raise self._failure(f"exited with status {status} while starting")
            with contextlib.suppress(OSError):
                if self.is_ready():
                    return
            if time.monotonic() > deadline:
                self.kill()
                raise self._failure(f"did not answer within {self.ready_timeout:.0f} s")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group and wait until it is gone (SIGKILL after timeout)."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL the process group, as a crash would."""
        self._end(signal.SIGKILL, 5.0)

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if not _signal_and_wait(proc, sig, timeout):
            _signal_and_wait(proc, signal.SIGKILL, 5.0)
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
        self._proc = None
        _LIVE.discard(self)

    def _failure(self, why: str) -> RuntimeError:
        logs = "\n".join(f"--- {path} ---\n{_tail(path)}" for path in self.log_files)
        return RuntimeError(
            f"{self.name} on {self.host}:{self.port} {why}\n"
            f"command: {shlex.join(self._argv)}\n{logs}"
        )


def _resp(host: str, port: int, *args: str, timeout: float = 1.0) -> bytes:
    """Send one RESP command; return a simple/error line or a bulk string's payload."""
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(payload.encode())
        reader = sock.makefile("rb")
        line = reader.readline().rstrip(b"\r\n")
        if line.startswith(b"$"):
            size = int(line[1:])
            return reader.read(size) if size >= 0 else b""
        return line


class RedisServer(Server):
    name = "redis"
    scheme = "redis"

    def __init__(
        self, binary: str, workdir: Path, extra: Sequence[str] = (), port: int | None = None
    ) -> None:
        port = port or free_port()
        argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        super().__init__([*argv, *extra], workdir, port)

    @property
    def url(self) -> str:
        return f"{super().url}/0"

    def is_ready(self) -> bool:
        return _resp(self.host, self.port, "PING") == b"+PONG"


class RedisCluster(Restartable):
    """Three masters, no replicas; start/stop/kill act on every node."""

    def __init__(self, binary: str, cli: str, workdir: Path, size: int = 3) -> None:
        self._cli = cli
        self._created = False
        self.log_path = workdir / "cluster-create.log"
        servers = []
        for _ in range(size):
            port = free_port()
            extra = ["--cluster-enabled", "yes", "--cluster-node-timeout", "3000"]
            extra += ["--cluster-config-file", str(workdir / f"nodes-{port}.conf")]
            # Explicit bus port: the default port+10000 may be taken or beyond 65535.
            extra += ["--cluster-port", str(free_port())]
            servers.append(RedisServer(binary, workdir, extra, port))
        self.servers: tuple[RedisServer, ...] = tuple(servers)

    @property
    def nodes(self) -> list[tuple[str, int]]:
        return [(s.host, s.port) for s in self.servers]

    @property
    def host(self) -> str:
        return self.servers[0].host

    @property
    def port(self) -> int:
        return self.servers[0].port

    @property
    def url(self) -> str:
        return self.servers[0].url

    def __repr__(self) -> str:
        return f"<RedisCluster {self.nodes}>"

    def start(self) -> None:
        for server in self.servers:
            server.start()
        if not self._created:
            self._create()
        self.wait_ok()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def kill(self) -> None:
        for server in self.servers:
            server.kill()

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every node reports cluster_state:ok with all slots assigned."""
        deadline = time.monotonic() + timeout
        while True:
            infos = []
            for host, port in self.nodes:
                try:
                    infos.append(_resp(host, port, "CLUSTER", "INFO").decode())
                except OSError as exc:
                    infos.append(f"{host}:{port}: {exc}")
            wanted = ("cluster_state:ok", "cluster_slots_assigned:16384")
            if all(w in info for info in infos for w in wanted):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Redis Cluster {self.nodes} not ok after {timeout:.0f} s:\n"
                    + "\n".join(infos)
                    + f"\n--- {self.log_path} ---\n{_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def _create(self) -> None:
        argv = [self._cli, "--cluster", "create", *(f"{h}:{p}" for h, p in self.nodes)]
        argv += ["--cluster-replicas", "0", "--cluster-yes"]
        with self.log_path.open("ab") as log:
            status = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=60
            ).returncode
        if status != 0:
            raise RuntimeError(f"{shlex.join(argv)} exited with {status}:\n{_tail(self.log_path)}")
        self._created = True


class MemcachedServer(Server):
    name = "memcached"
    scheme = "memcached"

    def __init__(self, binary: str, workdir: Path, extra: Sequence[str] = ()) -> None:
        port = free_port()
        argv = [binary, "-l", HOST, "-p", str(port), "-U", "0", *extra]
        if os.geteuid() == 0:
            argv += ["-u", "root"]  # memcached refuses to run as root without it
        super().__init__(argv, workdir, port)

    def is_ready(self) -> bool:
        with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
            sock.sendall(b"version\r\n")
            return sock.recv(64).startswith(b"VERSION")


class MongoServer(Server):
    """nx-27017: the MongoDB wire protocol over in-memory SQLite."""

    name = "nx-27017"
    scheme = "mongodb"

    def __init__(self, binary: str, workdir: Path) -> None:
        port = free_port()
        self.server_log = workdir / f"nx-27017-{port}.server.log"
        # nx-27017 refuses to start while its pid file names a live process; the default
        # /tmp/nx_27017.pid would be shared by every run on the machine.
        self.pid_file = workdir / f"nx-27017-{port}.pid"
        argv = [binary, "--db", "memory", "--host", HOST, "-p", str(port)]
        argv += ["--log-file", str(self.server_log), "--pid-file", str(self.pid_file)]
        super().__init__(argv, workdir, port)

    @property
    def log_files(self) -> list[Path]:
        return [self.log_path, self.server_log]

    def _before_start(self) -> None:
        # A SIGKILLed server leaves its pid file; a recycled pid would block the restart.
        self.pid_file.unlink(missing_ok=True)

    def is_ready(self) -> bool:
        try:
            import pymongo
        except ImportError:
            with socket.create_connection((self.host, self.port), timeout=1.0):
                return True
        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
            self.url, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000
        )
        try:
            return bool(client.admin.command("ping").get("ok"))
        except pymongo.errors.PyMongoError:
            return False
        finally:
            client.close()


class FirestoreEmulator(Server):
    name = "firestore"
    scheme = "http"
    ready_timeout = 90.0  # the JVM can be slow on a cold, loaded machine

    @property
    def host_port(self) -> str:
        """The value for FIRESTORE_EMULATOR_HOST."""
        return f"{self.host}:{self.port}"

    def is_ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/", timeout=1.0) as response:
            return bool(response.status == 200)




# Finding the programs. Each make_* returns a server that is not started yet, or raises
# Unavailable.


def _binary(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise Unavailable(name, hint)
    return path


def _script(name: str) -> str | None:
    """A console script of the running interpreter's environment, else one on PATH."""
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def make_redis(workdir: Path) -> RedisServer:
    return RedisServer(_binary("redis-server", "apt-get install redis-server"), workdir)


def make_redis_cluster(workdir: Path) -> RedisCluster:
    binary = _binary("redis-server", "apt-get install redis-server")
    cli = _binary("redis-cli", "apt-get install redis-tools")
    return RedisCluster(binary, cli, workdir)


def make_memcached(workdir: Path, extra: Sequence[str] = ()) -> MemcachedServer:
    """``extra``: more memcached flags, e.g. ``("-m", "256")`` for a bigger cache."""
    return MemcachedServer(_binary("memcached", "apt-get install memcached"), workdir, extra)


def make_mongo(workdir: Path) -> MongoServer:
    binary = _script("nx-27017")
    if binary is None:
        raise Unavailable("nx-27017", "pip install nx-27017")
    return MongoServer(binary, workdir)


_SDK_ROOTS = ("/usr/lib/google-cloud-sdk", "/usr/share/google-cloud-sdk", "/opt/google-cloud-sdk")
_EMULATOR = "platform/cloud-firestore-emulator/cloud_firestore_emulator"


def _gcloud_emulator() -> str | None:
    roots = [os.environ.get("CLOUDSDK_ROOT_DIR", ""), *_SDK_ROOTS]
    gcloud = shutil.which("gcloud")
    if gcloud:
        roots.append(str(Path(gcloud).resolve().parent.parent))
    for root in filter(None, roots):
        candidate = Path(root) / _EMULATOR
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def make_firestore(workdir: Path) -> FirestoreEmulator:
    java = os.environ.get("JAVA") or shutil.which("java")
    emulator = _gcloud_emulator()
    if emulator:
        if not java:
            raise Unavailable(
                "java (needed by the Firestore emulator)", "apt-get install default-jre-headless"
            )
        port = free_port()
        argv = [emulator, "start", f"--host={HOST}", f"--port={port}"]
        return FirestoreEmulator(argv, workdir, port)
    firebase = shutil.which("firebase")
    cache = Path.home() / ".cache/firebase/emulators"
    # firebase-tools downloads the jar on first use; without it there is nothing to run offline.
    if firebase and java and any(cache.glob("cloud-firestore-emulator-*.jar")):
        port = free_port()
        config = workdir / "firebase.json"
        emulators = {
            "firestore": {"host": HOST, "port": port, "websocketPort": free_port()},
            "hub": {"host": HOST, "port": free_port()},
            "logging": {"host": HOST, "port": free_port()},
            "ui": {"enabled": False},
        }
        config.write_text(json.dumps({"emulators": emulators}))
        argv = [firebase, "emulators:start", "--only", "firestore"]
        argv += ["--project", "demo-test", "--config", str(config)]
        return FirestoreEmulator(argv, workdir, port)
    raise Unavailable(
        "the Firestore emulator",
        "apt-get install google-cloud-cli-firestore-emulator, or firebase-tools with its jar",
    )


@contextlib.contextmanager
def serving(server: Restartable) -> Iterator[None]:
    """Start ``server`` (waiting until it answers); stop it when the block ends."""
    try:
        server.start()
        yield
    finally:
        server.stop()


@atexit.register
def _stop_all() -> None:
    # Safety net for an interrupted run whose teardown never ran.
    for server in list(_LIVE):
        server.kill()
