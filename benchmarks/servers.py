"""The session servers (redis, memcached, nx-27017, Firestore emulator, PostgreSQL, moto's
DynamoDB) for a benchmark run.

They are the test suite's servers (tests/serverkit.py; moto as in tests/server_dynamodb.py,
which needs pytest, hence the copy below): same start, readiness check and process-group
stop; only the choice of flags below is the benchmarks' own.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import urllib.request
from collections.abc import Callable
from pathlib import Path

# tests/ is not a package (pytest imports its modules by putting the folder on sys.path), so
# its pytest-free server module is importable only with that folder on sys.path; this is the
# one place the benchmarks add it.
_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

import serverkit  # noqa: E402
from serverkit import HOST, Server, Unavailable, free_port  # noqa: E402

__all__ = ["HOST", "MotoServer", "Server", "free_port", "make_server"]


class MotoServer(Server):
    """``moto_server`` (``moto[server]``) speaking DynamoDB's HTTP API on a loopback port;
    it accepts any credentials (the dummy ones below)."""

    name = "moto"
    scheme = "http"
    region_name = "us-east-1"
    aws_access_key_id = "testing"
    aws_secret_access_key = "testing"  # moto checks no signature

    def __init__(self, binary: str, workdir: Path) -> None:
        port = free_port()
        super().__init__([binary, "-H", HOST, "-p", str(port)], workdir, port)

    def is_ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1.0) as response:
            return bool(response.status == 200)


def _make_moto(workdir: Path) -> MotoServer:
    """moto_server of the running interpreter's environment, else one on PATH."""
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / "moto_server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return MotoServer(str(candidate), workdir)
    found = shutil.which("moto_server")
    if found is None:
        raise Unavailable("moto_server", "pip install 'moto[server]'")
    return MotoServer(found, workdir)


_MAKERS: dict[str, Callable[[Path], Server]] = {
    "redis": serverkit.make_redis,
    # 256 MB of item memory instead of memcached's default 64 MB.
    "memcached": lambda workdir: serverkit.make_memcached(workdir, ("-m", "256")),
    "mongodb": serverkit.make_mongo,
    "firestore": serverkit.make_firestore,
    "postgresql": serverkit.make_postgres,
    "moto": _make_moto,
}


def make_server(kind: str, workdir: Path) -> Server | str:
    """A (not yet started) server of ``kind``, or why it is unavailable."""
    if kind not in _MAKERS:
        raise ValueError(kind)
    try:
        server = _MAKERS[kind](workdir)
    except Unavailable as exc:
        return str(exc)
    if kind == "firestore":
        server.ready_timeout = 120.0  # what the benchmarks always allowed (the fixtures: 90 s)
    return server
