"""Time per request against session size: sessions of 1, 20 and 200 fields of ~1 KB.

Each store (redis, mongodb, memcached) is measured as asyncsessions and Flask-Session 0.8
side by side through the latency proxy at +0 ms: a fresh test client puts a session of N
fields in place (``/scale/setup/N``), then requests that read one field
(``GET /scale/read``) or change one field (``POST /scale/write-one``). The two apps are
measured in alternating rounds (ours first, then the peer first, …); a ratio is the median of
the per-round ratios of medians. The proxy also counts the bytes each app sends to its store
per request (target 5: a one-field write in a 200-field session).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from .inprocess import Budget, Cell, Scenario, measure

SIZES = (1, 20, 200)
#: (store, asyncsessions config key, Flask-Session config key, display name)
PAIRS = [
    ("redis", "ours-redis", "fs-redis", "redis"),
    ("mongodb", "ours-mongodb", "fs-mongodb", "mongodb"),
    ("memcache", "ours-memcache", "fs-memcache", "memcached"),
]
KINDS = {"read": "read-only (one field read)", "write": "change one field"}
ROUNDS = 6


def scenario(kind: str, n: int) -> Scenario:
    """The scaling scenario of ``kind`` ('read' or 'write') in a session of ``n`` fields."""
    setup = f"/scale/setup/{n}"
    if kind == "read":
        return Scenario(f"scale-{n}-read", f"{n} fields, {KINDS[kind]}", "GET", "/scale/read",
                        setup=setup)
    return Scenario(f"scale-{n}-write", f"{n} fields, {KINDS[kind]}", "POST",
                    "/scale/write-one", setup=setup)


def round_ratio(ours: Cell, peer: Cell) -> float:
    """Median over the alternating rounds of ours ÷ peer (each round's median)."""
    return statistics.median(a / b for a, b in zip(ours.rounds, peer.rounds, strict=True))


def measure_scaling(apps: dict[str, Any], budget: Budget,
                    counters: dict[str, Callable[[], int]],
                    sent: dict[str, Callable[[], int]], *,
                    log: Callable[[str], None],
                    note: Callable[[str], None]) -> dict[str, Any]:
    """Every store, size and kind: ours and Flask-Session in alternating rounds."""
    rows: list[dict[str, Any]] = []
    for store, ours, peer, name in PAIRS:
        if ours not in apps or peer not in apps:
            note(f"scaling: {name} not measured (no asyncsessions or Flask-Session app)")
            continue
        pair = {ours: apps[ours], peer: apps[peer]}
        for n in SIZES:
            for kind in KINDS:
                sc = scenario(kind, n)
                failures: list[str] = []

                def failed(key: str, exc: Exception, sc: Scenario = sc,
                           failures: list[str] = failures) -> None:
                    failures.append(key)
                    note(f"scaling {sc.key} {key} failed: {type(exc).__name__}: "
                         f"{str(exc)[:300]}")

                cells = measure(pair, sc, budget, counters, rounds=ROUNDS, failed=failed,
                                sent=sent)
                if ours not in cells or peer not in cells:
                    continue
                a, b = cells[ours], cells[peer]
                row = {
                    "store": store, "name": name, "fields": n, "kind": kind,
                    "ours": a.as_dict(), "peer": b.as_dict(), "ratio": round_ratio(a, b),
                }
                rows.append(row)
                log(f"  {name} {n:>3} fields {kind:5}: asyncsessions {a.median * 1000:.2f} ms "
                    f"({a.sent or 0:,.0f} B to store), Flask-Session {b.median * 1000:.2f} ms "
                    f"({b.sent or 0:,.0f} B): {row['ratio']:.2f}\u00d7")
    return {"sizes": list(SIZES), "rows": rows, "rounds": ROUNDS,
            "budget": {"seconds": budget.seconds, "n_min": budget.n_min,
                       "n_max": budget.n_max, "warmup": budget.warmup}}
