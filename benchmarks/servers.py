"""The session servers (redis, memcached, nx-27017, Firestore emulator) for a benchmark run.

They are the test suite's servers (tests/serverkit.py): same start, readiness check and
process-group stop; only the choice of flags below is the benchmarks' own.
"""

from __future__ import annotations

import sys
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

__all__ = ["HOST", "Server", "free_port", "make_server"]

_MAKERS: dict[str, Callable[[Path], Server]] = {
    "redis": serverkit.make_redis,
    # 256 MB of item memory instead of memcached's default 64 MB.
    "memcached": lambda workdir: serverkit.make_memcached(workdir, ("-m", "256")),
    "mongodb": serverkit.make_mongo,
    "firestore": serverkit.make_firestore,
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
