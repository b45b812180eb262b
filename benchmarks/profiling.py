"""Where asyncsessions spends its time: pyinstrument on the Flask path, stores direct.

Two sets of profiles (``--profile``), each a pyinstrument text tree in the results folder:

- ``profile-read.txt``, ``profile-write-one.txt``: the standard session (one redis store);
- ``profile-scale200-<store>-<read|write>.txt``: a 200-field session (~1 KB a field) on
  redis, mongodb and memcached, reading or changing one field.

For the 200-field ones the results also list the top costs: each sample's time goes to the
innermost asyncsessions function on its stack, with the library it was in when that was not
asyncsessions (``serialization.py:split_fields → json``); time in the event loop's
``select`` is waiting for the store. Shares are of all the time the requests took.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .apps import Endpoints, build_flask
from .inprocess import SCENARIOS
from .scaling import scenario

REQUESTS = 1500
SCALE_FIELDS = 200
#: Per 200-field profile: at least SCALE_MIN requests, then until SCALE_SECONDS have passed.
SCALE_MIN = 40
SCALE_SECONDS = 5.0
TOP = 10
_STORES = {"redis": "redis", "mongodb": "mongodb", "memcache": "memcached"}


def _profiler() -> Any:
    from pyinstrument import Profiler

    # A timing thread: this machine's clock costs ~0.9 µs a call, which would inflate
    # call-heavy code (the tag walk) under the profiler's per-call hook.
    return Profiler(interval=0.0002, use_timing_thread=True)


WAIT = "(waiting for the store: the event loop's select)"
_WAITS = frozenset({"epoll.poll", "poll.poll", "select.select", "kqueue.control"})
_STDLIB_PACKAGES = ("json", "asyncio", "concurrent", "http", "email", "importlib")


def _library(path: str) -> str:
    """What a frame outside asyncsessions belongs to: a package or a stdlib module name."""
    if "/site-packages/" in path:
        return path.split("/site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    parts = path.rsplit("/", 2)
    if len(parts) >= 2 and parts[-2] in _STDLIB_PACKAGES:
        return parts[-2]
    return parts[-1].removesuffix(".py") or "?"


def _attribute(root: Any) -> tuple[dict[str, float], float]:
    """Self time per innermost asyncsessions function (``file:function``, with ``→ lib``
    when the time is spent in a library it called), and the total."""
    costs: dict[str, float] = defaultdict(float)
    stack: list[tuple[Any, str | None]] = [(root, None)]
    while stack:
        frame, owner = stack.pop()
        path = (frame.file_path or "").replace("\\", "/")
        if "/asyncsessions/" in path and "/benchmarks/" not in path:
            rel = path.rsplit("/asyncsessions/", 1)[1]
            owner = f"{rel}:{frame.function}"
            key = owner
        elif frame.function in _WAITS or (path.endswith("selectors.py")
                                           and frame.function == "select"):
            key = WAIT
        elif path == "<built-in>":  # a C function: its own name says more than a file
            key = f"{owner or '(outside asyncsessions)'} → {frame.function}"
        else:
            key = f"{owner or '(outside asyncsessions)'} → {_library(path)}"
        costs[key] += frame.total_self_time  # includes its synthetic [self]/[await] children
        for child in frame.children:
            if not child.is_synthetic:
                stack.append((child, owner))
    return dict(costs), root.time if root is not None else 0.0


def _profile_one(app: Any, setup: str, method: str, path: str, seconds: float,
                 out_file: Path) -> dict[str, Any]:
    client = app.test_client()
    client.get(setup).close()
    for _ in range(30):
        client.open(path, method=method).close()
    profiler = _profiler()
    requests = 0
    deadline = time.perf_counter() + seconds
    profiler.start()
    while requests < SCALE_MIN or time.perf_counter() < deadline:
        client.open(path, method=method).close()
        requests += 1
    profiler.stop()
    out_file.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
    costs, total = _attribute(profiler.last_session.root_frame())
    ours = {k: v for k, v in costs.items() if not k.startswith("(")}
    top = sorted(costs.items(), key=lambda kv: -kv[1])[:TOP]
    return {
        "file": out_file.name, "requests": requests, "total_s": total,
        "per_request_us": total / requests * 1e6,
        "asyncsessions_share": sum(ours.values()) / total if total else 0.0,
        "own_share": sum(v for k, v in ours.items() if "→" not in k) / total if total else 0.0,
        "wait_share": costs.get(WAIT, 0.0) / total if total else 0.0,
        "top": [{"where": k, "us": v / requests * 1e6, "share": v / total if total else 0.0}
                for k, v in top],
    }


def profile_scaling(eps: Endpoints, out: Path, note: Callable[[str], None],
                    seconds: float = SCALE_SECONDS) -> list[dict[str, Any]]:
    """Profile 200-field read and write requests on each store, and a read of three redis
    stores (the standard session); their top costs."""
    try:
        _profiler()
    except ImportError:
        note("scaling profile not written: pyinstrument is not installed")
        return []
    found = []
    for store, name in _STORES.items():
        if getattr(eps, name) is None:
            continue
        app = build_flask("asyncsessions", store, eps)
        for kind in ("read", "write"):
            sc = scenario(kind, SCALE_FIELDS)
            out_file = out / f"profile-scale{SCALE_FIELDS}-{store}-{kind}.txt"
            found.append({"store": store, "name": name, "kind": kind,
                          **_profile_one(app, sc.setup, sc.method, sc.path, seconds, out_file)})
    app = build_flask("asyncsessions", "multi:redis+redis@1+redis@2", eps)
    found.append({"store": "redis3", "name": "three redis stores (+ cookie), standard session",
                  "kind": "read-all",
                  **_profile_one(app, "/setup", "GET", "/read", seconds,
                                 out / "profile-redis3-read.txt")})
    return found


def profile_redis(ep: Endpoints, out: Path, note: Callable[[str], None]) -> None:
    """Profile read-only and write-one requests (test client, redis direct, no proxy)."""
    try:
        _profiler()
    except ImportError:
        note("profile not written: pyinstrument is not installed (pip install pyinstrument)")
        return
    app = build_flask("asyncsessions", "redis", ep)
    for sc in SCENARIOS:
        if sc.key not in ("read", "write-one"):
            continue
        client = app.test_client()
        client.get("/setup")
        for _ in range(50):
            client.open(sc.path, method=sc.method)
        profiler = _profiler()
        profiler.start()
        for _ in range(REQUESTS):
            client.open(sc.path, method=sc.method).close()
        profiler.stop()
        path = out / f"profile-{sc.key}.txt"
        path.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
        note(f"pyinstrument profile of {REQUESTS} {sc.key} requests: {path.name}")
