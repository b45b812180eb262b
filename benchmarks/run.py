"""The whole benchmark run: servers and proxy up, measurements, report, everything down."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from . import machine, report
from .apps import Endpoints, build_flask
from .bridge_overhead import measure_bridge
from .inprocess import SCENARIOS, Budget, measure
from .load import Target, measure_throughput, start_app_server
from .proxy import LatencyProxy, measure_rtt
from .servers import HOST, Server, make_server

#: The stages of a run, in order (``--only`` picks some).
STAGES = ("bridge", "latency", "scaling", "three-stores", "sql_cloud", "throughput", "memory",
          "serializer", "profile")

#: asyncsessions store → (its backend module, the server it needs).
STORES = {
    "redis": ("asyncsessions.backends.redis", "redis"),
    "mongodb": ("asyncsessions.backends.mongodb", "mongodb"),
    "memcache": ("asyncsessions.backends.memcache", "memcached"),
    "firestore": ("asyncsessions.backends.firestore", "firestore"),
}


@dataclass(frozen=True)
class Settings:
    """How much to measure (``--quick`` or full)."""

    budget: Budget
    bridge_iterations: int
    bridge_rounds: int
    tp_rounds: int
    tp_warmup: float
    tp_duration: float
    scale_budget: Budget


FULL = Settings(Budget(seconds=1.0, n_min=15, n_max=400, warmup=5), 2000, 5, 5, 0.3, 1.5,
                Budget(seconds=0.9, n_min=18, n_max=600, warmup=3))
QUICK = Settings(Budget(seconds=0.1, n_min=5, n_max=40, warmup=2), 300, 2, 1, 0.2, 0.6,
                 Budget(seconds=0.12, n_min=6, n_max=60, warmup=1))


@dataclass(frozen=True)
class Config:
    """One in-process Flask app configuration."""

    key: str
    label: str
    lib: str
    kind: str
    stores: tuple[str, ...]  # server-side stores, i.e. the proxied upstreams it uses


#: The three-redis-stores config of target 4 (databases 0, 1 and 2 of one server).
REDIS3 = Config("ours-redis3", "asyncsessions · cookie+redis+redis+redis", "asyncsessions",
                "multi:redis+redis@1+redis@2", ("redis",))


@dataclass
class Run:
    """Everything a run found and measured; becomes results.json/md/png."""

    mode: str
    latencies: list[int | float]
    notes: list[str] = field(default_factory=list)
    configs: list[Config] = field(default_factory=list)
    cells: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    rtt_measured: dict[str, float] = field(default_factory=dict)
    throughput: dict[str, Any] = field(default_factory=dict)
    bridge: dict[str, Any] | None = None
    scaling: dict[str, Any] = field(default_factory=dict)
    three_stores: dict[str, Any] = field(default_factory=dict)
    sql_cloud: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] | None = None
    serializer: dict[str, Any] | None = None
    profile: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", file=sys.stderr,
              flush=True)

    def note(self, message: str) -> None:
        self.notes.append(message)
        self.log("note: " + message)


def _import_error(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # a backend being written may fail in any way
        return f"{type(exc).__name__}: {exc}"
    return None


def _start_servers(run: Run, workdir: Path, stack: contextlib.ExitStack) -> dict[str, int]:
    """Start the server of every store whose backend imports; their ports by store name."""
    ports: dict[str, int] = {}
    for store, (module, server_kind) in STORES.items():
        error = _import_error(module)
        if error is not None:
            run.note(f"store {store!r} skipped: `{module}` does not import ({error})")
            continue
        server = make_server(server_kind, workdir)
        if isinstance(server, str):
            run.note(f"store {store!r} skipped: {server}")
            continue
        run.log(f"starting {server.name}")
        try:
            server.start()
        except RuntimeError as exc:
            run.note(f"store {store!r} skipped: {exc}")
            continue
        stack.callback(_stop, server)
        ports[store] = server.port
    if "redis" not in ports:
        raise SystemExit("redis is required (redis-server and asyncsessions[redis])")
    return ports


def _stop(server: Server) -> None:
    server.stop()


def _plan_configs(run: Run, stores: list[str]) -> list[Config]:
    peers = {name: _import_error(name) for name in ("flask_session", "pymemcache")}
    if peers["flask_session"]:
        run.note(f"Flask-Session not measured: {peers['flask_session']}")
    configs: list[Config] = []
    for store, peer_name in (("redis", "redis"), ("mongodb", "mongodb"), ("memcache", "memcached")):
        if store not in stores:
            continue
        configs.append(Config(f"ours-{store}", f"asyncsessions · {peer_name}", "asyncsessions",
                              store, (store,)))
        if peers["flask_session"]:
            continue
        if store == "memcache" and peers["pymemcache"]:
            run.note("Flask-Session memcached not measured: it needs pymemcache (or "
                     f"python-memcached), which does not import ({peers['pymemcache']})")
            continue
        configs.append(Config(f"fs-{store}", f"Flask-Session 0.8 · {peer_name}",
                              "flask-session", store, (store,)))
    multi = tuple(s for s in ("redis", "mongodb", "memcache") if s in stores)
    variants = [("multi", multi)]
    if "firestore" in stores:
        variants.append(("multi-fs", (*multi, "firestore")))
    for key, chosen in variants:
        if len(chosen) < 2:
            continue
        kind = "multi:" + "+".join(chosen)
        names = "+".join(("cookie", *chosen))
        configs.append(Config(f"ours-{key}", f"asyncsessions · {names}", "asyncsessions", kind,
                              chosen))
        configs.append(Config(f"seq-{key}", f"sequential · {names}", "sequential", kind, chosen))
    return configs


def _link(config: Config, store: str) -> str:
    """The proxy upstream a config uses for a store: each app has its own listening port, so
    one app's driver chatter (e.g. a sync client's monitor thread) never counts for another.
    Firestore is shared: its emulator address comes from the environment, once per process."""
    return "firestore" if store == "firestore" else f"{config.key}/{STORES[store][1]}"


def _start_proxy(run: Run, ports: dict[str, int], stack: contextlib.ExitStack) -> LatencyProxy:
    upstreams = {"ping": ports["redis"]}
    for config in [*run.configs, REDIS3]:
        for store in config.stores:
            upstreams[_link(config, store)] = ports[store]
    proxy = LatencyProxy(upstreams, http2={"firestore"})
    stack.callback(proxy.close)
    if "firestore" in proxy.ports:
        stack.enter_context(
            _environ("FIRESTORE_EMULATOR_HOST", f"{HOST}:{proxy.ports['firestore']}")
        )
    return proxy


def _build_app(config: Config, proxy: LatencyProxy) -> Any:
    links = {STORES[s][1]: proxy.ports[_link(config, s)] for s in config.stores}
    return build_flask(config.lib, config.kind, Endpoints(**links))


def _build_apps(run: Run, proxy: LatencyProxy) -> dict[str, Any]:
    apps: dict[str, Any] = {}
    for config in list(run.configs):
        try:
            apps[config.key] = _build_app(config, proxy)
        except Exception as exc:
            run.note(f"config {config.label!r} skipped: the app could not be built "
                     f"({type(exc).__name__}: {exc})")
            run.configs.remove(config)
    return apps


def _counters(configs: list[Config], proxy: LatencyProxy) -> tuple[dict[str, Any],
                                                                    dict[str, Any]]:
    """Per config: its exchange counter and its bytes-sent counter at the proxy."""
    counts = {c.key: partial(proxy.count, *(_link(c, s) for s in c.stores)) for c in configs}
    sent = {c.key: partial(proxy.sent, *(_link(c, s) for s in c.stores)) for c in configs}
    return counts, sent


def _set_rtt(run: Run, proxy: LatencyProxy, latency: int | float) -> float:
    proxy.set_rtt(latency)
    rtt = measure_rtt(proxy.ports["ping"])
    run.log(f"+{latency} ms RTT (one redis PING through the proxy: {rtt * 1000:.2f} ms)")
    return rtt


def _latency_matrix(run: Run, settings: Settings, proxy: LatencyProxy,
                    apps: dict[str, Any]) -> None:
    counters, sent = _counters(run.configs, proxy)

    def failed(key: str, exc: Exception) -> None:
        config = next(c for c in run.configs if c.key == key)
        run.note(f"config {config.label!r} dropped: {type(exc).__name__}: {str(exc)[:300]}")
        run.configs.remove(config)
        apps.pop(key, None)
        for by_config in run.cells.values():
            by_config.pop(key, None)

    for latency in run.latencies:
        run.rtt_measured[str(latency)] = _set_rtt(run, proxy, latency)
        by_config = run.cells.setdefault(str(latency), {})
        for scenario in SCENARIOS:
            cells = measure(dict(apps), scenario, settings.budget, counters, failed=failed,
                            sent=sent)
            for key, cell in cells.items():
                by_config.setdefault(key, {})[scenario.key] = cell.as_dict()
            summary = ", ".join(
                f"{key} {cell.median * 1000:.2f} ms/{cell.exchanges:.1f} RT"
                for key, cell in cells.items()
            )
            run.log(f"  {scenario.key}: {summary}")


def _scaling(run: Run, settings: Settings, proxy: LatencyProxy, apps: dict[str, Any]) -> None:
    from .scaling import measure_scaling

    run.rtt_measured.setdefault("0", _set_rtt(run, proxy, 0))
    counters, sent = _counters(run.configs, proxy)
    run.scaling = measure_scaling(apps, settings.scale_budget, counters, sent, log=run.log,
                                  note=run.note)


def _three_stores(run: Run, settings: Settings, proxy: LatencyProxy,
                  apps: dict[str, Any]) -> None:
    """Target 4: read-only requests of three server stores at +0 and +5 ms."""
    chosen = {k: apps[k] for k in ("ours-multi", "ours-redis", "ours-mongodb") if k in apps}
    configs = [c for c in run.configs if c.key in chosen]
    try:
        chosen[REDIS3.key] = _build_app(REDIS3, proxy)
        configs.append(REDIS3)
    except Exception as exc:
        run.note(f"three redis stores not measured: {type(exc).__name__}: {exc}")
    counters, _ = _counters(configs, proxy)
    read = next(s for s in SCENARIOS if s.key == "read")

    def failed(key: str, exc: Exception) -> None:
        run.note(f"three stores: {key} failed: {type(exc).__name__}: {str(exc)[:300]}")

    labels = {c.key: c.label for c in configs}
    run.three_stores = {"labels": labels}
    for latency in (0, 5):
        rtt = _set_rtt(run, proxy, latency)
        run.rtt_measured.setdefault(str(latency), rtt)
        cells = measure(chosen, read, settings.budget, counters, rounds=6, failed=failed)
        run.three_stores[str(latency)] = {k: c.as_dict() for k, c in cells.items()}
        run.log("  read: " + ", ".join(f"{k} {c.median * 1000:.2f} ms/{c.exchanges:.1f} RT"
                                       for k, c in cells.items()))


def _memory(run: Run, redis_port: int, workdir: Path, *, quick: bool, clients: int) -> None:
    from .memory import measure_memory

    missing = _import_error("gunicorn")
    if missing:
        run.note(f"memory scenario not measured: gunicorn does not import ({missing})")
        return
    run.memory = measure_memory(redis_port, workdir, clients=clients, quick=quick, log=run.log)


def _serializer(run: Run, *, quick: bool) -> None:
    from .serializer import measure as measure_serializer

    result = measure_serializer(quick=quick)
    for missing in result["missing"]:
        run.note(f"serializer experiment: {missing}")
    run.serializer = result
    for row in result["rows"]:
        us = row["us"]
        run.log(f"  {row['value']} {row['op']}: " + ", ".join(
            f"{name} {value:.1f} µs" for name, value in us.items()))


def _throughput(run: Run, settings: Settings, redis_port: int, workdir: Path, *, wsgi: str,
                clients: int) -> None:
    missing = {name: _import_error(name) for name in
               ("flask_session", "quart", "quart_session", "hypercorn", "gunicorn")}
    if wsgi == "auto":
        wsgi = "werkzeug" if missing["gunicorn"] else "gunicorn"
        if missing["gunicorn"]:
            run.note("gunicorn is not installed: Flask throughput uses werkzeug's threaded "
                     "server (`pip install gunicorn` to use gunicorn's gthread worker)")
    pairs: list[tuple[Target, Target, str, tuple[str, str]]] = []  # + target ids
    if not missing["flask_session"]:
        pairs.append((Target("Flask", wsgi, "asyncsessions"),
                      Target("Flask", wsgi, "flask-session"), "Flask-Session 0.8", ("3a", "3b")))
    if not (missing["quart"] or missing["quart_session"] or missing["hypercorn"]):
        pairs.append((Target("Quart", "hypercorn", "asyncsessions"),
                      Target("Quart", "hypercorn", "quart-session"), "quart-session", ("3c", "3d")))
    else:
        run.note("Quart throughput not measured: quart, quart-session or hypercorn is missing")
    if not pairs:
        return
    scenarios = [("read", "GET", "/read"), ("write-one", "POST", "/write-one")]
    targets = [t for pair in pairs for t in pair[:2]]
    with contextlib.ExitStack() as stack:
        ports = {}
        for target in targets:
            run.log(f"starting {target.label}")
            server = start_app_server(target, redis_port, clients, workdir)
            stack.callback(_stop, server)
            ports[target] = server.port
        result = measure_throughput(
            [(pair[0], pair[1]) for pair in pairs], ports, scenarios,
            rounds=settings.tp_rounds, clients=clients, warmup=settings.tp_warmup,
            duration=settings.tp_duration, log=run.log,
        )
    rows = []
    for ours, peer, peer_name, ids in pairs:
        for key, _, _ in scenarios:
            rows.append({
                "framework": ours.framework, "server": ours.server, "scenario": key,
                "ours": result.rps(ours, key), "peer": result.rps(peer, key),
                "ratio": result.ratio(ours, peer, key),
                "peer_name": peer_name, "target_id": ids[key != "read"],
                "ours_rounds": result.rounds[(ours, key)],
                "peer_rounds": result.rounds[(peer, key)],
            })
    run.throughput = {"rows": rows, "clients": clients, "rounds": settings.tp_rounds,
                      "warmup": settings.tp_warmup, "duration": settings.tp_duration,
                      "wsgi": wsgi}


@contextlib.contextmanager
def _stage(run: Run, name: str) -> Iterator[None]:
    """Log the stage; if it fails, note why and go on, so the report shows the rest."""
    run.log(name)
    try:
        yield
    except Exception as exc:
        run.note(f"{name} failed: {type(exc).__name__}: {str(exc)[:500]}")


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def main(*, quick: bool, latencies: list[int | float], out: Path, wsgi: str, clients: int,
         profile: bool, only: tuple[str, ...] = ()) -> int:
    """Run everything (or the ``only`` stages); write results.md, results.png, scaling.png
    and results.json to ``out``."""
    settings = QUICK if quick else FULL
    run = Run("quick" if quick else "full", latencies)
    stages = set(only or STAGES)
    if not profile and not only:
        stages.discard("profile")
    if only:
        run.note("partial run: only " + ", ".join(s for s in STAGES if s in stages))
    info = machine.describe()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="asyncsessions-bench-") as tmp, \
            contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        ports = _start_servers(run, workdir, stack)
        run.configs = _plan_configs(run, list(ports))
        proxy = _start_proxy(run, ports, stack)
        apps = _build_apps(run, proxy)
        if "bridge" in stages:
            with _stage(run, "bridge overhead"):
                bridge = measure_bridge(settings.bridge_iterations, settings.bridge_rounds)
                run.bridge = bridge.as_dict()
        if "latency" in stages:
            with _stage(run, "latency"):
                _latency_matrix(run, settings, proxy, apps)
        if "scaling" in stages:
            with _stage(run, "scaling (session size, +0 ms)"):
                _scaling(run, settings, proxy, apps)
        if "three-stores" in stages:
            with _stage(run, "three server stores (read-only, +0 and +5 ms)"):
                _three_stores(run, settings, proxy, apps)
        if "sql_cloud" in stages:
            from .sql_cloud import measure_sql_cloud

            with _stage(run, "PostgreSQL and DynamoDB vs Flask-Session (+0 and +5 ms)"):
                run.sql_cloud = measure_sql_cloud(settings.budget, workdir, ports["redis"],
                                                  log=run.log, note=run.note)
        if "throughput" in stages:
            with _stage(run, "throughput"):
                _throughput(run, settings, ports["redis"], workdir, wsgi=wsgi, clients=clients)
        if "memory" in stages:
            with _stage(run, "memory (gunicorn worker RSS)"):
                _memory(run, ports["redis"], workdir, quick=quick, clients=clients)
        if "serializer" in stages:
            with _stage(run, "serializer experiment"):
                _serializer(run, quick=quick)
        if "profile" in stages:
            from .profiling import profile_redis, profile_scaling

            with _stage(run, "profiling"):
                profile_redis(Endpoints(redis=ports["redis"]), out, run.note)
                eps = Endpoints(redis=ports["redis"], mongodb=ports.get("mongodb"),
                                memcached=ports.get("memcache"))
                run.profile = profile_scaling(eps, out, run.note,
                                              seconds=1.5 if quick else 5.0)
    info["load_end"] = machine.load_average()
    results: dict[str, Any] = {
        "mode": run.mode, "latencies": run.latencies, "notes": run.notes, "machine": info,
        "configs": [asdict(c) for c in run.configs], "cells": run.cells,
        "rtt_measured": run.rtt_measured, "throughput": run.throughput, "bridge": run.bridge,
        "scaling": run.scaling, "three_stores": run.three_stores, "sql_cloud": run.sql_cloud,
        "memory": run.memory, "serializer": run.serializer, "profile": run.profile,
        "elapsed": time.monotonic() - run.started,
    }
    results["targets"] = report.evaluate_targets(results)
    results["earlier_targets"] = report.evaluate_earlier_targets(results)
    report.write_json(results, out / "results.json")
    report.write_markdown(results, out / "results.md")
    try:
        report.write_png(results, out / "results.png")
        report.write_scaling_png(results, out / "scaling.png")
    except ImportError as exc:
        run.note(f"results.png / scaling.png not written: {exc}")
        report.write_markdown(results, out / "results.md")
    for target in results["targets"]:
        ok = target["ok"]
        verdict = ok if isinstance(ok, str) else {True: "PASS", False: "MISS", None: "n/a"}[ok]
        run.log(f"target {target['id']}: {verdict}  {target['text']}: {target['measured']} "
                f"({target['limit']})")
    run.log(f"wrote {out / 'results.md'}, results.png and scaling.png "
            f"in {time.monotonic() - run.started:.0f} s")
    return 0
