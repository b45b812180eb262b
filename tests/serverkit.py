"""Real redis, Redis Cluster, memcached, MongoDB-wire, Firestore, PostgreSQL and MariaDB
servers on loopback ports.

Free of pytest, so that the benchmarks (benchmarks/servers.py) start the very same servers as
the test fixtures (tests/servers.py). The make_* functions raise Unavailable for a server
that is not installed; the fixtures turn that into a skip (a failure under CI).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
_LIVE: set[Server] = set()
_HANDED_OUT: set[int] = set()
#: Data directories outside the test's own temp dir (see _owned_dir), removed at exit.
_DATA_DIRS: set[Path] = set()


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

    def remove(self) -> None:
        """Delete what the server stored on disk (after the last stop)."""

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
    #: The user the process runs as (a database server refuses root); None: as we are.
    user: str | None = None

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
                **_as_user(self.user),
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




def _as_user(user: str | None) -> dict[str, Any]:
    """Popen arguments that run a process as ``user``, without root's groups."""
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def _owned_dir(prefix: str, user: str | None) -> Path:
    """A new directory in the system's temp dir, owned by ``user``; removed at exit.

    Not under the test's temp dir: pytest makes that private to root (mode 0700), and a
    database server running as its own user could not reach its data there.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _DATA_DIRS.add(path)
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def _run_setup(argv: Sequence[str], log_path: Path, cwd: Path, user: str | None) -> None:
    """Run a one-off setup command (initdb, mariadb-install-db); its output goes to the log."""
    with log_path.open("ab") as log:
        status = subprocess.run(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            timeout=120, check=False, **_as_user(user),
        ).returncode
    if status != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited with {status}:\n{_tail(log_path)}")


class PostgresServer(Server):
    """A throwaway PostgreSQL cluster (initdb at first start), trust auth on loopback only.

    The data directory is removed by :meth:`remove`; durability is switched off (fsync,
    synchronous commit, full page writes), as nothing outlives the run.
    """

    name = "postgresql"
    scheme = "postgresql"
    database = "postgres"

    def __init__(self, bindir: Path, workdir: Path, user: str | None) -> None:
        port = free_port()
        self.user = user
        self.data_root = _owned_dir("asyncsessions-pg-", user)
        self.data = self.data_root / "data"
        self._initdb = [str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"]
        argv = [str(bindir / "postgres"), "-D", str(self.data), "-p", str(port),
                "-c", f"listen_addresses={HOST}", "-c", "unix_socket_directories=",
                "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "max_connections=300"]
        # cwd: the server's user may not enter the test's temp dir.
        super().__init__(argv, workdir, port, cwd=self.data_root)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{self.database}"

    def _before_start(self) -> None:
        if not (self.data / "PG_VERSION").exists():
            _run_setup(self._initdb, self.log_path, self.data_root, self.user)

    def stop(self, timeout: float = 10.0) -> None:
        # SIGINT is PostgreSQL's fast shutdown; SIGTERM would wait for every client to leave.
        self._end(signal.SIGINT, timeout)

    def is_ready(self) -> bool:
        # A startup message: the server asks for (or, with trust, grants) authentication
        # once it accepts connections, and answers "starting up" with an error before.
        params = b"user\0postgres\0database\0%s\0\0" % self.database.encode()
        body = struct.pack("!I", 196608) + params  # protocol 3.0
        with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
            sock.sendall(struct.pack("!I", len(body) + 4) + body)
            return sock.recv(1) == b"R"

    def remove(self) -> None:
        shutil.rmtree(self.data_root, ignore_errors=True)
        _DATA_DIRS.discard(self.data_root)


class MariaDBServer(Server):
    """A throwaway MariaDB (mariadb-install-db at first start) on loopback only.

    Its own data directory, socket and port; no binary log, relaxed flushing. A user with a
    password, created at every start by an init file, owns the database the URL names.
    """

    name = "mariadb"
    scheme = "mysql"
    database = "asyncsessions"
    username = "asyncsessions"

    def __init__(self, mariadbd: str, install_db: str, workdir: Path, user: str | None) -> None:
        port = free_port()
        self.password = secrets.token_urlsafe(12)
        self.data_root = _owned_dir("asyncsessions-mariadb-", user)
        self.data = self.data_root / "data"
        self.socket_path = self.data_root / "mariadb.sock"
        self._init_file = self.data_root / "init.sql"
        # mariadbd and mariadb-install-db switch to --user themselves when started as root.
        as_user = [f"--user={user}"] if user else []
        self._install = [install_db, "--no-defaults", f"--datadir={self.data}",
                         "--auth-root-authentication-method=normal", "--skip-test-db",
                         *as_user]
        argv = [mariadbd, "--no-defaults", f"--datadir={self.data}",
                f"--socket={self.socket_path}", f"--port={port}", f"--bind-address={HOST}",
                f"--pid-file={self.data_root / 'mariadb.pid'}",
                f"--init-file={self._init_file}", "--skip-name-resolve", "--skip-log-bin",
                "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
                "--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=0",
                "--max-connections=300", *as_user]
        self._owner = user
        super().__init__(argv, workdir, port, cwd=self.data_root)

    @property
    def url(self) -> str:
        return (f"mysql://{self.username}:{self.password}@{self.host}:{self.port}/"
                f"{self.database}")

    def _before_start(self) -> None:
        if not (self.data / "mysql").is_dir():
            _run_setup(self._install, self.log_path, self.data_root, None)
        # At every start, so that the user exists whatever happened to the data directory.
        self._init_file.write_text(
            f"CREATE DATABASE IF NOT EXISTS {self.database};\n"
            f"CREATE USER IF NOT EXISTS '{self.username}'@'{HOST}' "
            f"IDENTIFIED BY '{self.password}';\n"
            f"GRANT ALL PRIVILEGES ON *.* TO '{self.username}'@'{HOST}';\n"
        )
        if self._owner is not None:
            entry = pwd.getpwnam(self._owner)
            os.chown(self._init_file, entry.pw_uid, entry.pw_gid)

    def is_ready(self) -> bool:
        try:
            import pymysql
        except ImportError:
            # The greeting packet: protocol version 10, not an error packet (0xff).
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                return sock.recv(5)[4:5] == b"\x0a"
        try:
            connection = pymysql.connect(
                host=self.host, port=self.port, user=self.username, password=self.password,
                database=self.database, connect_timeout=1,
            )
        except pymysql.err.OperationalError:
            return False  # the init file has not created the user yet
        connection.close()
        return True

    def remove(self) -> None:
        shutil.rmtree(self.data_root, ignore_errors=True)
        _DATA_DIRS.discard(self.data_root)


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


def _server_user(name: str, what: str) -> str | None:
    """The user to run a database server as: ``name`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise Unavailable(f"a {name!r} user to run {what} as (it refuses to run as root)",
                          "the Debian package creates it") from None
    return name


def make_postgres(workdir: Path) -> PostgresServer:
    """PostgreSQL from Debian's versioned directories (newest first), else from PATH."""
    hint = "apt-get install postgresql"
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit()
                   else 0)
    bindir = Path(found[-1] if found else _binary("postgres", hint)).parent
    if not (bindir / "initdb").is_file():
        raise Unavailable("initdb", hint)
    return PostgresServer(bindir, workdir, _server_user("postgres", "PostgreSQL"))


def make_mariadb(workdir: Path) -> MariaDBServer:
    hint = "apt-get install mariadb-server"
    mariadbd = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin:/sbin")
    if mariadbd is None:
        raise Unavailable("mariadbd", hint)
    install_db = _binary("mariadb-install-db", hint)
    return MariaDBServer(mariadbd, install_db, workdir, _server_user("mysql", "MariaDB"))


@contextlib.contextmanager
def serving(server: Restartable) -> Iterator[None]:
    """Start ``server`` (waiting until it answers); stop it when the block ends."""
    try:
        server.start()
        yield
    finally:
        server.stop()
        server.remove()


@atexit.register
def _stop_all() -> None:
    # Safety net for an interrupted run whose teardown never ran.
    for server in list(_LIVE):
        server.kill()
    for path in list(_DATA_DIRS):
        shutil.rmtree(path, ignore_errors=True)
