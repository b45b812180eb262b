"""What machine and software a run measured: CPU, cores, Python, versions, load."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import shutil
import subprocess
from typing import Any

_PACKAGES = ["asyncsessions", "Flask", "Werkzeug", "Quart", "Hypercorn", "gunicorn", "anyio",
             "redis", "hiredis", "pymongo", "aiomcache", "google-cloud-firestore",
             "Flask-Session", "quart-session", "pymemcache", "matplotlib"]


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8"):  # noqa: SIM115
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _nproc() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 0


def load_average() -> str:
    """The 1-minute load average, or '?'."""
    with contextlib.suppress(OSError, AttributeError):
        return f"{os.getloadavg()[0]:.2f}"
    return "?"


def _version(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    return None


def describe() -> dict[str, Any]:
    """The machine section of the results."""
    packages = {}
    for name in _PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            packages[name] = importlib.metadata.version(name)
    servers = [v for v in (_version(["redis-server", "--version"]), _version(["memcached", "-V"]))
               if v]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "nproc": _nproc(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "servers": "; ".join(servers) or "?",
        "load_start": load_average(),
    }
