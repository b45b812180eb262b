"""Real session servers (redis, memcached, nx-27017, Firestore emulator) on loopback ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
_FIRESTORE = "platform/cloud-firestore-emulator/cloud_firestore_emulator"
_SDK_ROOTS = ("/usr/lib/google-cloud-sdk", "/usr/share/google-cloud-sdk", "/opt/google-cloud-sdk")


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """One server process in its own process group."""

    name: str
    argv: Sequence[str]
    port: int
    ready: Callable[[int], bool]
    workdir: Path
    timeout: float = 60.0
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}-{self.port}.log"

    def start(self) -> None:
        """Start and wait until the server answers (RuntimeError with the log otherwise)."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                list(self.argv), cwd=self.cwd or self.workdir, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + self.timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited while starting:\n{self._tail()}")
            with contextlib.suppress(OSError):
                if self.ready(self.port):
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not answer in {self.timeout:.0f} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM the process group; SIGKILL after 10 s."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=wait)
                return

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def _ask(port: int, payload: bytes, expect: bytes) -> bool:
    with socket.create_connection((HOST, port), timeout=1.0) as sock:
        sock.sendall(payload)
        return sock.recv(64).startswith(expect)


def _mongo_ready(port: int) -> bool:
    import pymongo

    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        f"mongodb://{HOST}:{port}", serverSelectionTimeoutMS=1000, connectTimeoutMS=1000
    )
    try:
        return bool(client.admin.command("ping").get("ok"))
    except pymongo.errors.PyMongoError:
        return False
    finally:
        client.close()


def _http_ready(port: int) -> bool:
    with urllib.request.urlopen(f"http://{HOST}:{port}/", timeout=1.0) as response:
        return bool(response.status == 200)


def _script(name: str) -> str | None:
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def _firestore_binary() -> str | None:
    roots = [os.environ.get("CLOUDSDK_ROOT_DIR", ""), *_SDK_ROOTS]
    gcloud = shutil.which("gcloud")
    if gcloud:
        roots.append(str(Path(gcloud).resolve().parent.parent))
    for root in filter(None, roots):
        candidate = Path(root) / _FIRESTORE
        if candidate.is_file() and os.access(candidate, os.X_OK) and shutil.which("java"):
            return str(candidate)
    return None


def make_server(kind: str, workdir: Path) -> Server | str:
    """A (not yet started) server of ``kind``, or why it is unavailable."""
    port = free_port()
    if kind == "redis":
        binary = shutil.which("redis-server")
        if binary is None:
            return "redis-server is not installed (apt-get install redis-server)"
        argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        return Server("redis", argv, port, lambda p: _ask(p, b"PING\r\n", b"+PONG"), workdir)
    if kind == "memcached":
        binary = shutil.which("memcached")
        if binary is None:
            return "memcached is not installed (apt-get install memcached)"
        argv = [binary, "-l", HOST, "-p", str(port), "-U", "0", "-m", "256"]
        if os.geteuid() == 0:
            argv += ["-u", "root"]
        return Server("memcached", argv, port, lambda p: _ask(p, b"version\r\n", b"VERSION"),
                      workdir)
    if kind == "mongodb":
        binary = _script("nx-27017")
        if binary is None:
            return "nx-27017 is not installed (pip install nx-27017)"
        argv = [binary, "--db", "memory", "--host", HOST, "-p", str(port),
                "--log-file", str(workdir / "nx.server.log"),
                "--pid-file", str(workdir / f"nx-{port}.pid")]
        return Server("nx-27017", argv, port, _mongo_ready, workdir)
    if kind == "firestore":
        binary = _firestore_binary()
        if binary is None:
            return "the Firestore emulator (google-cloud-cli-firestore-emulator + java) is missing"
        argv = [binary, "start", f"--host={HOST}", f"--port={port}"]
        return Server("firestore", argv, port, _http_ready, workdir, timeout=120.0)
    raise ValueError(kind)
