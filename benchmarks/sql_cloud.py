"""PostgreSQL and DynamoDB: asyncsessions' ``sqlalchemy`` and ``dynamodb`` stores against
Flask-Session 0.8's (Flask-SQLAlchemy + psycopg2; boto3), read-only and change-one-field
requests at +0 and +5 ms.

Its own servers (a throwaway PostgreSQL cluster, moto_server) and its own latency proxy, one
upstream per app, so that the rest of a run neither waits for nor counts them. The apps and
the measurement are the other stages' (``apps.build_flask``, ``inprocess.measure``: Flask
test client, the configs interleaved in alternating rounds).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .apps import Endpoints, build_flask
from .inprocess import SCENARIOS, Budget, measure
from .proxy import LatencyProxy, measure_rtt
from .servers import make_server

#: store → (the server it needs, what each library's config imports, the Endpoints field).
STORES = {
    "sqlalchemy": ("postgresql", ("asyncsessions.backends.sqlalchemy", "asyncpg"),
                   ("flask_session.sqlalchemy", "flask_sqlalchemy", "psycopg2")),
    "dynamodb": ("moto", ("asyncsessions.backends.dynamodb",),
                 ("flask_session.dynamodb", "boto3")),
}
LABELS = {"sqlalchemy": "PostgreSQL (sqlalchemy)", "dynamodb": "DynamoDB (moto_server)"}
#: The pairs the section compares: (ours, peer, store).
PAIRS = [("ours-sqlalchemy", "fs-sqlalchemy", "sqlalchemy"),
         ("ours-dynamodb", "fs-dynamodb", "dynamodb")]
SCENARIO_KEYS = ("read", "write-one")
LATENCIES = (0, 5)


def _missing(modules: tuple[str, ...]) -> str | None:
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # any import failure means: not measurable here
            return f"`{module}` does not import ({type(exc).__name__}: {exc})"
    return None


def measure_sql_cloud(budget: Budget, workdir: Path, ping_port: int, *,
                      log: Callable[[str], None], note: Callable[[str], None],
                      rounds: int = 5) -> dict[str, Any]:
    """Start the servers, build the four apps, measure; the per-latency cells by app key."""
    result: dict[str, Any] = {"labels": {}, "rounds": rounds, "rtt_measured": {}}
    with contextlib.ExitStack() as stack:
        ports: dict[str, int] = {}
        for store, (kind, ours_needs, _peer_needs) in STORES.items():
            why = _missing(ours_needs)
            if why is None:
                server = make_server(kind, workdir)
                if isinstance(server, str):
                    why = server
                else:
                    log(f"starting {server.name}")
                    try:
                        server.start()
                    except RuntimeError as exc:
                        why = str(exc)[:300]
                    else:
                        stack.callback(server.remove)  # after stop (LIFO): data dirs
                        stack.callback(server.stop)
                        ports[store] = server.port
            if why is not None:
                note(f"{LABELS[store]} not measured: {why}")
        upstreams = {"ping": ping_port}
        for store, port in ports.items():
            upstreams[f"ours-{store}"] = port
            upstreams[f"fs-{store}"] = port
        proxy = LatencyProxy(upstreams)
        stack.callback(proxy.close)
        apps: dict[str, Any] = {}
        for ours, peer, store in PAIRS:
            if store not in ports:
                continue
            for key, lib, needs in ((ours, "asyncsessions", ()),
                                    (peer, "flask-session", STORES[store][2])):
                why = _missing(needs)
                if why is not None:
                    note(f"Flask-Session {LABELS[store]} not measured: {why}")
                    continue
                field = STORES[store][0]
                try:
                    apps[key] = build_flask(lib, store, Endpoints(**{field: proxy.ports[key]}))
                except Exception as exc:
                    note(f"{key} not built: {type(exc).__name__}: {str(exc)[:300]}")
                    continue
                label = "asyncsessions" if lib == "asyncsessions" else "Flask-Session 0.8"
                result["labels"][key] = f"{label} · {LABELS[store]}"
        counters = {key: (lambda k=key: proxy.count(k)) for key in apps}
        sent = {key: (lambda k=key: proxy.sent(k)) for key in apps}

        def failed(key: str, exc: Exception) -> None:
            note(f"sql_cloud: {key} failed: {type(exc).__name__}: {str(exc)[:300]}")
            apps.pop(key, None)

        for latency in LATENCIES:
            proxy.set_rtt(latency)
            rtt = measure_rtt(proxy.ports["ping"])
            result["rtt_measured"][str(latency)] = rtt
            log(f"+{latency} ms RTT (redis PING through the proxy: {rtt * 1000:.2f} ms)")
            by_key = result.setdefault(str(latency), {})
            for scenario in SCENARIOS:
                if scenario.key not in SCENARIO_KEYS:
                    continue
                cells = measure(dict(apps), scenario, budget, counters, rounds=rounds,
                                failed=failed, sent=sent)
                for key, cell in cells.items():
                    by_key.setdefault(key, {})[scenario.key] = cell.as_dict()
                log(f"  {scenario.key}: " + ", ".join(
                    f"{k} {c.median * 1000:.2f} ms/{c.exchanges:.1f} RT" for k, c in cells.items()))
    return result
