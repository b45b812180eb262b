"""Where asyncsessions spends its time: pyinstrument on the zero-latency redis Flask path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .apps import Endpoints, build_flask
from .inprocess import SCENARIOS

REQUESTS = 1500


def profile_redis(ep: Endpoints, out: Path, note: Callable[[str], None]) -> None:
    """Profile read-only and write-one requests (test client, redis direct, no proxy)."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        note("profile not written: pyinstrument is not installed (pip install pyinstrument)")
        return
    app = build_flask("asyncsessions", "redis", ep)
    for scenario in SCENARIOS:
        if scenario.key not in ("read", "write-one"):
            continue
        client = app.test_client()
        client.get("/setup")
        for _ in range(50):
            client.open(scenario.path, method=scenario.method)
        profiler = Profiler(interval=0.0005)
        profiler.start()
        for _ in range(REQUESTS):
            client.open(scenario.path, method=scenario.method).close()
        profiler.stop()
        path = out / f"profile-{scenario.key}.txt"
        path.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
        note(f"pyinstrument profile of {REQUESTS} {scenario.key} requests: {path.name}")
