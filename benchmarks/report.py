"""results.md (targets, ratios, absolute numbers, method) and results.png from the results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .inprocess import SCENARIOS
from .scaling import KINDS
from .scaling import PAIRS as SCALING_PAIRS

#: (ours, peer, label) pairs of in-process configs compared in the ratio tables.
COMPARISONS = [
    ("ours-redis", "fs-redis", "redis: asyncsessions ÷ Flask-Session"),
    ("ours-mongodb", "fs-mongodb", "mongodb: asyncsessions ÷ Flask-Session"),
    ("ours-memcache", "fs-memcache", "memcached: asyncsessions ÷ Flask-Session"),
    ("ours-multi", "seq-multi", "multi-store: concurrent ÷ sequential"),
    ("ours-multi-fs", "seq-multi-fs", "multi-store + Firestore: concurrent ÷ sequential"),
]


NA = "\u2013"  # en dash: no value
X = "\u00d7"  # multiplication sign


def _ms(seconds: float | None) -> str:
    return NA if seconds is None else f"{seconds * 1000:.2f}"


def _ratio(value: float | None, digits: int = 2) -> str:
    return NA if value is None else f"{value:.{digits}f}{X}"


def _verdict(ok: bool | str | None) -> str:
    if isinstance(ok, str):
        return ok
    return {True: "**PASS**", False: "**MISS**", None: "not measured"}[ok]


def _cell(results: dict[str, Any], latency: int | float, config: str,
          scenario: str) -> dict[str, Any] | None:
    return results["cells"].get(str(latency), {}).get(config, {}).get(scenario)


def _median(results: dict[str, Any], latency: int | float, config: str,
            scenario: str) -> float | None:
    cell = _cell(results, latency, config, scenario)
    return None if cell is None else float(cell["median"])


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _add(targets: list[dict[str, Any]], number: str, text: str, value: float | None,
         limit: float, shown: str, *, at_most: bool = True) -> None:
    ok = None if value is None else (value <= limit if at_most else value >= limit)
    targets.append({"id": number, "text": text, "measured": shown,
                    "limit": ("≤ " if at_most else "≥ ") + f"{limit:g}", "ok": ok})


#: Flask-Session comparisons of the ratio tables (target 2), and memcached's writing columns:
#: asyncsessions waits for memcached's answer to its CAS write (and its delete) before it
#: sends the cookie, where pymemcache sends Flask-Session's writes with ``noreply``.
FS_ROWS = [c for c in COMPARISONS if c[1].startswith("fs-")]
CAS_WRITES = {("ours-memcache", "write-one"), ("ours-memcache", "write-all"),
              ("ours-memcache", "login")}


def _scaling_rows(results: dict[str, Any], store: str) -> list[dict[str, Any]]:
    return [r for r in results.get("scaling", {}).get("rows", []) if r["store"] == store]


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 10's targets 1 to 6, each with what was measured, its limit and PASS/MISS."""
    targets: list[dict[str, Any]] = []
    # 1: session size, +0 ms, per store.
    for letter, (store, _ours, _peer, name) in zip("abc", SCALING_PAIRS, strict=True):
        rows = _scaling_rows(results, store)
        text = (f"{name}, +0 ms, sessions of 1/20/200 fields (~1 KB each), read-only and "
                "change-one-field: asyncsessions ÷ Flask-Session 0.8 (≤ 1.0; ≤ 0.5 at 200)")
        if not rows:
            _add(targets, f"1{letter}", text, None, 1.0, NA)
            continue
        # Scaled so that one number says pass or miss: each ratio ÷ its own limit.
        worst = max(r["ratio"] / (0.5 if r["fields"] >= 200 else 1.0) for r in rows)
        shown = "; ".join(
            f"{n}: " + " / ".join(_ratio(r["ratio"]) for r in rows if r["fields"] == n)
            for n in sorted({r["fields"] for r in rows})
        ) + " (read / write)"
        targets.append({"id": f"1{letter}", "text": text, "measured": shown,
                        "limit": "≤ 1.0 (200: ≤ 0.5)", "ok": worst <= 1.0})
    # 2: every Flask-Session cell of the +0/+1/+5 ms ratio tables.
    keys = {c["key"] for c in results["configs"]}
    cells: list[tuple[str, float, float]] = []  # (where, ratio, limit)
    cas_cells: list[tuple[str, float]] = []
    measured_latencies = [lat for lat in (0, 1, 5) if str(lat) in results["cells"]]
    for latency in measured_latencies:
        for ours, peer, _label in FS_ROWS:
            if ours not in keys or peer not in keys:
                continue
            for sc in SCENARIOS:
                ratio = _div(_median(results, latency, ours, sc.key),
                             _median(results, latency, peer, sc.key))
                if ratio is None:
                    continue
                where = f"{ours.removeprefix('ours-')} {sc.key} +{latency}"
                if (ours, sc.key) in CAS_WRITES:
                    if latency == 0:
                        cas_cells.append((where, ratio))
                    continue
                cells.append((where, ratio, 1.0))
    over = [(w, r) for w, r, limit in cells if r > limit]
    text = ("every Flask-Session cell of the +0/+1/+5 ms ratio tables (all scenarios, redis, "
            "mongodb, memcached) except memcached's writing requests: asyncsessions ÷ "
            "Flask-Session")
    if cells:
        worst = max(r for _, r, _ in cells)
        shown = (f"{len(cells) - len(over)} of {len(cells)} cells ≤ 1.00{X}; worst "
                 f"{_ratio(worst)}" + ("; over: " + ", ".join(
                     f"{w} {_ratio(r)}" for w, r in sorted(over, key=lambda x: -x[1]))
                     if over else ""))
        _add(targets, "2a", text, worst, 1.0, shown)
    else:
        _add(targets, "2a", text, None, 1.0, NA)
    text = ("memcached's writing requests (write-one, write-all, login: asyncsessions waits for "
            "the CAS write / delete, pymemcache sends noreply) at +0 ms")
    if cas_cells:
        worst = max(r for _, r in cas_cells)
        _add(targets, "2b", text, worst, 1.1,
             ", ".join(f"{w.split()[1]} {_ratio(r)}" for w, r in cas_cells))
    else:
        _add(targets, "2b", text, None, 1.1, NA)
    # 3: Quart req/s.
    quart = [r for r in results.get("throughput", {}).get("rows", [])
             if r["framework"] == "Quart"]
    for letter, scenario in (("a", "read"), ("b", "write-one")):
        row = next((r for r in quart if r["scenario"] == scenario), None)
        text = f"Quart (hypercorn), +0 ms, one redis store, {scenario}: req/s ÷ quart-session"
        if row is None:
            _add(targets, f"3{letter}", text, None, 1.1, NA, at_most=False)
            continue
        _add(targets, f"3{letter}", text, row["ratio"], 1.1,
             f"{row['ours']:,.0f} vs {row['peer']:,.0f} req/s: {_ratio(row['ratio'], 3)}",
             at_most=False)
    # 4: three server stores at +5 ms, read-only, ÷ one round trip (nominal 5 ms).
    three = results.get("three_stores", {})
    for letter, key, what in (("a", "ours-multi", "redis + mongodb + memcached"),
                              ("b", "ours-redis3", "three redis stores (databases 0, 1, 2)")):
        value = three.get("5", {}).get(key, {}).get("median")
        text = f"read-only, {what} (+ signed cookie), +5 ms RTT: total ÷ one RTT (5 ms)"
        _add(targets, f"4{letter}", text, _div(value, 0.005), 1.2,
             NA if value is None else f"{_ms(value)} ms = {_ratio(value / 0.005, 3)}")
    # 5: bytes to the store of a one-field write in a 200-field session.
    for letter, (store, _ours, _peer, name) in zip("abc", SCALING_PAIRS, strict=True):
        row = next((r for r in _scaling_rows(results, store)
                    if r["fields"] == 200 and r["kind"] == "write"), None)
        text = (f"{name}: bytes sent to the store by a one-field write in a 200-field session, "
                "÷ Flask-Session's (at the proxy)")
        ours_b = None if row is None else row["ours"].get("sent")
        peer_b = None if row is None else row["peer"].get("sent")
        ratio = _div(ours_b, peer_b)
        _add(targets, f"5{letter}", text, ratio, 0.02,
             NA if ratio is None else f"{ours_b:,.0f} ÷ {peer_b:,.0f} B = {ratio * 100:.1f} %")
    # 6: memory.
    memory = results.get("memory")
    text = ("gunicorn worker RSS after 100,000 requests of 1,000 sessions ÷ after 10,000 "
            "(no growth: ≤ 1.10)")
    if memory and len(memory["points"]) >= 3:
        first, last = memory["points"][1], memory["points"][-1]
        ratio = last["rss_kib"] / first["rss_kib"]
        if (first["requests"], last["requests"]) != (10_000, 100_000):
            text += f" — quick run: {last['requests']:,} vs {first['requests']:,} requests"
        _add(targets, "6a", text, ratio, 1.10,
             f"{last['rss_kib'] / 1024:.1f} ÷ {first['rss_kib'] / 1024:.1f} MiB = "
             f"{_ratio(ratio, 3)}")
        loops = memory["loops"]
        idle = last.get("idle_loops")
        targets.append({
            "id": "6b", "text": "the bridge's idle loops' cost (reported)",
            "measured": f"{idle} idle loops after the run; one loop with its redis connection "
                        f"≈ {loops['rss_kib_per_loop']:.0f} KiB RSS "
                        f"({loops['heap_kib_per_loop']:.1f} KiB Python heap), "
                        f"{loops['fds_per_loop']:.0f} fds, no CPU while idle "
                        f"({loops['idle_cpu_s_per_s'] * 1000:.2f} ms/s); whole worker idle: "
                        f"{memory['idle_cpu'] * 1000:.2f} ms CPU/s",
            "limit": "reported", "ok": "reported"})
    else:
        _add(targets, "6a", text, None, 1.10, NA)
    return targets


def evaluate_earlier_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The previous performance issue's targets, kept to compare runs with."""
    targets: list[dict[str, Any]] = []

    def add(number: str, text: str, value: float | None, limit: float, shown: str,
            *, at_most: bool = True) -> None:
        ok = None if value is None else (value <= limit if at_most else value >= limit)
        targets.append({"id": number, "text": text, "measured": shown,
                        "limit": ("≤ " if at_most else "≥ ") + f"{limit:g}", "ok": ok})

    multi = next((c for c in results["configs"] if c["key"] == "ours-multi"), None)
    servers = len(multi["stores"]) if multi else 0
    ours = _median(results, 5, "ours-multi", "read")
    seq = _median(results, 5, "seq-multi", "read")
    rtt = 0.005
    add("1a", f"read-only, {servers} server stores at +5 ms RTT: total ÷ one RTT (5 ms)",
        _div(ours, rtt), 1.4, f"{_ms(ours)} ms = {_ratio(_div(ours, rtt), 3)}")
    add("1b", f"read-only, {servers} server stores at +5 ms: asyncsessions ÷ sequential",
        _div(ours, seq), 0.4, f"{_ms(ours)} ÷ {_ms(seq)} ms = {_ratio(_div(ours, seq), 3)}")
    ours = _median(results, 5, "ours-redis", "read")
    peer = _median(results, 5, "fs-redis", "read")
    add("2", "read-only, one redis store at +5 ms: asyncsessions ÷ Flask-Session 0.8",
        _div(ours, peer), 0.55, f"{_ms(ours)} ÷ {_ms(peer)} ms = {_ratio(_div(ours, peer), 3)}")
    for row in results.get("throughput", {}).get("rows", []):
        limit = 0.8 if row["framework"] == "Flask" and row["scenario"] == "write-one" else 1.0
        ratio = row["ratio"]
        add(row["target_id"],
            f"{row['framework']} ({row['server']}), +0 ms, one redis store, {row['scenario']}: "
            f"req/s asyncsessions ÷ {row['peer_name']}", ratio, limit,
            f"{row['ours']:,.0f} vs {row['peer']:,.0f} req/s: {_ratio(ratio, 3)}", at_most=False)
    bridge = results.get("bridge")
    text = "Flask bridge ÷ run_until_complete on the calling thread (no-op store I/O)"
    if bridge:
        ratio = bridge["io"]["bridge"] / bridge["io"]["direct"]
        add("4", text, ratio, 2.0, f"{bridge['io']['bridge'] * 1e6:.1f} ÷ "
            f"{bridge['io']['direct'] * 1e6:.1f} µs = {_ratio(ratio, 3)}")
    else:
        add("4", text, None, 2.0, NA)
    total = 0
    seen = False
    for by_config in results["cells"].values():
        for key, by_scenario in by_config.items():
            cell = by_scenario.get("no-cookie")
            if cell is not None and not key.startswith("fs-"):
                seen = True
                total += round(cell["exchanges"] * cell["n"])
    add("5", "no cookie, session never read: round trips (all asyncsessions configs, "
        "all latencies)", total if seen else None, 0, f"{total} in total")
    return targets


def target_context(results: dict[str, Any]) -> list[str]:
    """What explains targets 2, 4 and 5: exempt cells, each store alone, what +5 ms adds."""
    lines = []
    keys = {c["key"] for c in results["configs"]}
    if "ours-memcache" in keys and "fs-memcache" in keys:
        cells = []
        for latency in (1, 5):
            for ours, scenario in sorted(CAS_WRITES):
                ratio = _div(_median(results, latency, ours, scenario),
                             _median(results, latency, "fs-memcache", scenario))
                if ratio is not None:
                    cells.append(f"{scenario} +{latency} {_ratio(ratio)}")
        if cells:
            lines.append(
                "2: memcached's writing requests at +1/+5 ms, outside the target (one more "
                "round trip than Flask-Session's noreply writes, by design): " + ", ".join(cells)
                + ".")
    alone = {k.removeprefix("ours-"): _median(results, 5, k, "read")
             for k in ("ours-redis", "ours-mongodb", "ours-memcache")}
    alone = {k: v for k, v in alone.items() if v is not None}
    if alone:
        lines.append("4: each store alone, read-only at +5 ms: "
                     + ", ".join(f"{k} {_ms(v)} ms" for k, v in alone.items())
                     + " (nx-27017, the test MongoDB server, spends its own ~3.5 ms per read).")
    three = results.get("three_stores", {})
    for key, what in (("ours-multi", "redis + mongodb + memcached"),
                      ("ours-redis3", "three redis stores")):
        t5 = three.get("5", {}).get(key, {}).get("median")
        t0 = three.get("0", {}).get(key, {}).get("median")
        if t5 is not None and t0 is not None:
            rtt = results.get("rtt_measured", {}).get("5")
            vs_rtt = f" and {_ratio(t5 / rtt)} the measured exchange" if rtt else ""
            lines.append(
                f"4: {what}: {_ms(t0)} ms at +0 ms, {_ms(t5)} ms at +5 ms = "
                f"{_ratio(t5 / 0.005)} the nominal RTT{vs_rtt}; what +5 ms adds: "
                f"{_ms(t5 - t0)} ms = {_ratio((t5 - t0) / 0.005)} one RTT.")
    rtt = results.get("rtt_measured", {}).get("5")
    if rtt:
        lines.append(f"4: one exchange through the proxy at +5 ms measures {_ms(rtt)} ms.")
    for row in results.get("scaling", {}).get("rows", []):
        if row["fields"] == 200 and row["kind"] == "read" and row["peer"].get("sent"):
            lines.append(
                f"5: a read-only request of a 200-field session on {row['name']} sends "
                f"{row['ours'].get('sent', 0):,.0f} B to the store with asyncsessions and "
                f"{row['peer']['sent']:,.0f} B with Flask-Session, which rewrites the whole "
                "session to refresh its expiry on every request.")
    return lines


def _scaling_table(results: dict[str, Any]) -> list[str]:
    scaling = results.get("scaling")
    if not scaling or not scaling.get("rows"):
        return ["", "Not measured."]
    budget = scaling["budget"]
    lines = ["", f"Flask test client, +0 ms through the proxy, one store; a fresh client puts a "
             f"session of N fields of ~1 KB in place, then each request reads one field or "
             f"changes one field. asyncsessions and Flask-Session 0.8 are measured in "
             f"{scaling['rounds']} alternating rounds (≥ {budget['n_min']} requests, ~"
             f"{budget['seconds']:g} s per config and scenario); ms are medians of all requests, "
             "the ratio is the median of the per-round ratios. *B to store*: bytes the app sent "
             "to its store per request, counted at the proxy (protocol framing included).", "",
             "| store | fields | request | asyncsessions ms | Flask-Session ms | ratio | "
             "round trips (ours / FS) | B to store (ours / FS) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in scaling["rows"]:
        ours, peer = row["ours"], row["peer"]
        lines.append(
            f"| {row['name']} | {row['fields']} | {KINDS[row['kind']]} | {_ms(ours['median'])} "
            f"| {_ms(peer['median'])} | {_ratio(row['ratio'])} | "
            f"{ours['exchanges']:.2f} / {peer['exchanges']:.2f} | "
            f"{ours.get('sent', 0):,.0f} / {peer.get('sent', 0):,.0f} |")
    lines += ["", "![time per request vs session size](scaling.png)"]
    return lines


def _three_table(results: dict[str, Any]) -> list[str]:
    three = results.get("three_stores")
    if not three:
        return ["", "Not measured."]
    labels = three.get("labels", {})
    lats = [k for k in ("0", "5") if k in three]
    lines = ["", "Read-only requests (every field read), Flask test client, alternating rounds; "
             "median / p95 ms and round trips per request.", "",
             "| config | " + " | ".join(f"+{k} ms" for k in lats) + " |",
             "|---" * (len(lats) + 1) + "|"]
    for key, label in labels.items():
        cells = []
        for lat in lats:
            cell = three[lat].get(key)
            cells.append(NA if cell is None else f"{_ms(cell['median'])} / {_ms(cell['p95'])} · "
                         f"{cell['exchanges']:.2f} RT")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def sql_cloud_section(results: dict[str, Any]) -> list[str]:
    """The PostgreSQL/DynamoDB section's lines (``## …`` heading included)."""
    from .sql_cloud import LATENCIES, PAIRS, SCENARIO_KEYS

    lines = ["## PostgreSQL and DynamoDB: asyncsessions vs Flask-Session 0.8"]
    data = results.get("sql_cloud")
    if not data or not data.get("labels"):
        return [*lines, "", "Not measured."]
    labels = data["labels"]
    names = {s.key: s.label for s in SCENARIOS}
    lats = [lat for lat in LATENCIES if str(lat) in data]
    lines += ["", "Flask test client, one store each, through the latency proxy; the two "
              f"libraries' apps alternate in {data.get('rounds', 5)} rounds. PostgreSQL: "
              "asyncsessions' `sqlalchemy` store (asyncpg, table `asyncsessions`) vs "
              "Flask-Session's `SESSION_TYPE=\"sqlalchemy\"` (Flask-SQLAlchemy + psycopg2, "
              "table `sessions`), same server; DynamoDB on moto_server: asyncsessions' "
              "`dynamodb` store (aiobotocore) vs Flask-Session's `SESSION_TYPE=\"dynamodb\"` "
              "(a boto3 resource). Ratio: asyncsessions' median ÷ Flask-Session's (below "
              f"1{X} asyncsessions is faster).", "",
              "| store | request | RTT | asyncsessions ms (p95) · RT | "
              "Flask-Session ms (p95) · RT | ratio |", "|---|---|---|---|---|---|"]

    def shown(cell: dict[str, Any] | None) -> str:
        if cell is None:
            return NA
        return f"{_ms(cell['median'])} ({_ms(cell['p95'])}) · {cell['exchanges']:.2f}"

    for ours, peer, _store in PAIRS:
        if ours not in labels and peer not in labels:
            continue
        store_label = (labels.get(ours) or labels[peer]).split(" · ", 1)[1]
        for scenario in SCENARIO_KEYS:
            for lat in lats:
                a = data[str(lat)].get(ours, {}).get(scenario)
                b = data[str(lat)].get(peer, {}).get(scenario)
                ratio = _div(None if a is None else a["median"], None if b is None else b["median"])
                lines.append(f"| {store_label} | {names[scenario]} | +{lat} ms | {shown(a)} | "
                             f"{shown(b)} | {_ratio(ratio)} |")
    return lines


def _memory_section(results: dict[str, Any]) -> list[str]:
    memory = results.get("memory")
    if not memory:
        return ["", "Not measured."]
    lines = ["", f"One gunicorn gthread worker ({memory['clients']} threads), Flask, one redis "
             f"store, {memory['sessions']:,} distinct sessions created first, then requests "
             f"cycling through them ({memory['mix']}) from {memory['clients']} keep-alive "
             "clients; the worker reports itself (`/_bench/stats`).", "",
             "| requests | s | worker RSS MiB | ÷ first checkpoint | bridge idle loops | fds | "
             "threads | gc objects |", "|---|---|---|---|---|---|---|---|"]
    base = memory["points"][1]["rss_kib"] if len(memory["points"]) > 1 else None
    for point in memory["points"]:
        rel = NA if base is None else f"{point['rss_kib'] / base:.3f}"
        lines.append(
            f"| {point['requests']:,} | {point['seconds']:.0f} | {point['rss_kib'] / 1024:.1f} | "
            f"{rel} | {point['idle_loops']} | {point['fds']} | {point['threads']} | "
            f"{point['gc_objects']:,} |")
    loops = memory["loops"]
    lines += [
        "",
        f"- Idle loops: the bridge keeps one idle event loop per thread that was in a session "
        f"hook at once (here up to the worker's {memory['clients']} threads), each with its own "
        f"store connections. {loops['loops']} such loops opened at once in a separate process "
        f"cost {loops['rss_kib_per_loop']:.0f} KiB RSS "
        f"({loops['heap_kib_per_loop']:.1f} KiB of Python heap) and "
        f"{loops['fds_per_loop']:.0f} file descriptors each (epoll, the self-pipe pair, one "
        f"redis socket), and no CPU while idle: an idle loop is not running, so it has no timer "
        f"or wake-up ({loops['idle_cpu_s_per_s'] * 1000:.2f} ms CPU per s for the whole probe "
        "process).",
        f"- The worker with no request coming, over {memory['idle_seconds']:g} s: "
        f"{memory['idle_cpu'] * 1000:.2f} ms CPU per s (gunicorn's own heartbeat included).",
    ]
    return lines


def _serializer_section(results: dict[str, Any]) -> list[str]:
    from .serializer import table

    result = results.get("serializer")
    if not result:
        return ["", "Not measured."]
    versions = ", ".join(f"{k} {v}" for k, v in result.get("versions", {}).items())
    lines = ["", "`asyncsessions.serialization.dumps`/`loads` against encoders of the *same* "
             "tagged format on orjson and msgspec (`benchmarks/serializer.py`, an experiment "
             "nothing else uses"
             + (f"; {versions}" if versions else "") + "). The candidates walk the value once "
             "in Python without copying unless something needs a tag (orjson and msgspec write "
             "tuples as arrays and know no tags), let the compiled encoder write the text, and "
             "skip the untag walk when the text holds no tag (no `{\" ` in it) and too few "
             "brackets to nest 100 deep. µs per call: the fastest of 15 batches (3 interleaved "
             "rounds of 5), as timeit does, since the machine is shared; "
             "the ratio is candidate ÷ asyncsessions. The second column needs no new dependency "
             "(the same walk, untag skip and a splitter on the stdlib's C scanner).", ""]
    return lines + table(result)


def _profile_section(results: dict[str, Any]) -> list[str]:
    profiles = results.get("profile")
    if not profiles:
        return ["", "Not run (`python -m benchmarks --profile`)."]
    lines = ["", "pyinstrument (wall time), Flask test client, stores direct (no proxy), a "
             "200-field session (last: the standard session over three redis stores, for "
             "target 4). Each sample's time goes to the innermost asyncsessions "
             "function on its stack, with `→ library` when it was spent in a library that "
             "function called (`serialization.py:split_fields → json`); the event loop's "
             "`select` is waiting for the store. *Under asyncsessions*: time inside "
             "asyncsessions' calls, waiting excluded; *own code*: asyncsessions' own lines. "
             "Shares are of all the time the requests took (Flask, Werkzeug and the test client "
             "included); the profiler's overhead inflates the µs. Trees: "
             "`profile-scale200-*.txt`.", ""]
    for prof in profiles:
        top = "; ".join(f"`{t['where']}` {t['us']:.0f} µs ({t['share'] * 100:.0f} %)"
                        for t in prof["top"][:8])
        lines.append(
            f"- **{prof['name']}, {KINDS.get(prof['kind'], 'read-only (every field read)')}** "
            f"({prof['requests']} requests): "
            f"{prof['per_request_us']:.0f} µs per request; under asyncsessions "
            f"{prof['asyncsessions_share'] * 100:.0f} %, own code "
            f"{prof.get('own_share', 0) * 100:.0f} %, waiting "
            f"{prof.get('wait_share', 0) * 100:.0f} %. Top: {top}.")
    return lines


def _targets_table(targets: list[dict[str, Any]]) -> list[str]:
    lines = ["| # | target | measured | limit | result |", "|---|---|---|---|---|"]
    for t in targets:
        lines.append(f"| {t['id']} | {t['text']} | {t['measured']} | {t['limit']} | "
                     f"{_verdict(t['ok'])} |")
    return lines


def _ratio_tables(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    header = "| comparison | " + " | ".join(s.label for s in SCENARIOS) + " |"
    keys = {c["key"] for c in results["configs"]}
    for latency in results["latencies"]:
        lines += ["", f"**+{latency} ms RTT** (median per request; below 1{X} asyncsessions is "
                  "faster)", "", header, "|---" * (len(SCENARIOS) + 1) + "|"]
        for ours, peer, label in COMPARISONS:
            if ours not in keys or peer not in keys:
                continue
            ratios = [_ratio(_div(_median(results, latency, ours, s.key),
                                  _median(results, latency, peer, s.key))) for s in SCENARIOS]
            lines.append(f"| {label} | " + " | ".join(ratios) + " |")
    return lines


def _absolute_tables(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    header = "| config | " + " | ".join(s.label for s in SCENARIOS) + " |"
    for latency in results["latencies"]:
        rtt = results.get("rtt_measured", {}).get(str(latency))
        floor = f"; one exchange through the proxy: {_ms(rtt)} ms" if rtt else ""
        lines += ["", f"**+{latency} ms RTT**{floor}", "",
                  "median / p95 ms, and round trips (exchanges) per request", "",
                  header, "|---" * (len(SCENARIOS) + 1) + "|"]
        for config in results["configs"]:
            cells = []
            for s in SCENARIOS:
                cell = _cell(results, latency, config["key"], s.key)
                cells.append(NA if cell is None else
                             f"{_ms(cell['median'])} / {_ms(cell['p95'])} · "
                             f"{cell['exchanges']:.2f} RT")
            lines.append(f"| {config['label']} | " + " | ".join(cells) + " |")
    return lines


def _throughput_table(results: dict[str, Any]) -> list[str]:
    tp = results.get("throughput")
    if not tp or not tp.get("rows"):
        return ["", "Not measured."]
    lines = ["", f"{tp['clients']} concurrent keep-alive clients (`http.client`, one thread "
             f"each, in the benchmark process), {tp['rounds']} rounds of {tp['duration']:g} s "
             f"after {tp['warmup']:g} s warm-up; ours and its peer are measured back to back "
             "in each round (order alternating) and the ratio is the median of the per-round "
             "ratios; req/s are medians of rounds. Apps connect to redis directly (no proxy).",
             "",
             "| framework (server) | scenario | asyncsessions req/s | peer | peer req/s | "
             "ratio | rounds (ours / peer) |", "|---|---|---|---|---|---|---|"]
    for row in tp["rows"]:
        ours_rounds = ", ".join(f"{v:,.0f}" for v in row["ours_rounds"])
        peer_rounds = ", ".join(f"{v:,.0f}" for v in row["peer_rounds"])
        lines.append(
            f"| {row['framework']} ({row['server']}) | {row['scenario']} | {row['ours']:,.0f} | "
            f"{row['peer_name']} | {row['peer']:,.0f} | {_ratio(row['ratio'])}"
            f" | {ours_rounds} / {peer_rounds} |"
        )
    return lines


def _bridge_table(results: dict[str, Any]) -> list[str]:
    bridge = results.get("bridge")
    if not bridge:
        return ["", "Not measured."]
    labels = {
        "bridge": "asyncsessions bridge (pool of loops, `run_until_complete` in the caller)",
        "direct": "`loop.run_until_complete` on the calling thread's own loop (reference)",
        "hop": "hop to a loop thread (`run_coroutine_threadsafe`), for context",
    }
    lines = ["", "A store whose I/O is a no-op (never suspends): the load and the store "
             "coroutine of one request, and a whole `open_session` + `save_session` through "
             "`FlaskSessionInterface`. Medians per request.", "",
             "| way | I/O step µs | ÷ reference | open+save µs | ÷ reference |",
             "|---|---|---|---|---|"]
    for key, label in labels.items():
        io, whole = bridge["io"][key], bridge["open_save"][key]
        lines.append(
            f"| {label} | {io * 1e6:.1f} | {io / bridge['io']['direct']:.2f}{X} | "
            f"{whole * 1e6:.1f} | {whole / bridge['open_save']['direct']:.2f}{X} |"
        )
    return lines


def _machine(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    return [
        f"- date: {m['date']}; mode: {results['mode']}; took {results.get('elapsed', 0):.0f} s",
        f"- CPU: {m['cpu']}; `nproc`: {m['nproc']}; load average at start / end: "
        f"{m['load_start']} / {m.get('load_end', '?')}",
        f"- Python {m['python']} ({m['platform']})",
        f"- servers: {m['servers']}",
        f"- packages: {versions}",
    ]


METHOD = """\
- **Latency**: every server sits behind a loopback TCP proxy (`benchmarks/proxy.py`, its own
  process, threads) that delays each direction by RTT/2 with `time.sleep` (timer slack set to
  1 ns), keeping the byte order. "+0 ms" still goes through the proxy. The measured time of one
  redis PING through the proxy is given above each absolute table.
- **Round trips** are counted by the proxy as request/response *exchanges*: a client→server
  chunk arriving after the server last sent something (or first on its connection) starts a new
  exchange. Pipelined commands sent together count once; ops running concurrently on different
  connections count once each although they overlap in time, so the concurrent and the
  sequential engine show the same count and differ in latency. Counts are per request over the
  measured requests only (pools are warmed first). Every app has its own proxy port per store,
  so another app's driver chatter never counts for it, and PyMongo heartbeats are set to 60 s.
  On Firestore's gRPC (HTTP/2) connection only chunks holding a HEADERS or DATA frame count,
  not PING/SETTINGS acknowledgements or WINDOW_UPDATEs; multiplexed streams may share one
  exchange. pymemcache, which Flask-Session uses, sends `set` with `noreply`: its writes do not
  wait for an answer, so they add no round trip (and no acknowledgement).
- **In-process latency**: Flask's test client, one request at a time, per scenario a fresh
  client that first calls `/setup` (puts a field in every store), then warm-up requests, then
  the measured ones (bounded by count and time). Scenarios: `read` reads every field;
  `write-one` changes `user_data` (redis); `write-all` changes `csrf_token`, `user_data`,
  `cart`, `prefs`, `history` (one per store of the multi-store config); `login` is
  `session.regenerate()` (Flask-Session: `session_interface.regenerate(session)`) then
  `user_id`; `no-cookie` is a cookieless request whose view never touches the session.
- **Configs**: single store = one store takes every field. Multi-store = a signed cookie
  (`'auto'`: `csrf_token`, …) + redis (`user_id`, `user_data`) + MongoDB (`cart`) + memcached
  (`prefs`) (+ Firestore (`history`)). *Sequential* is the same config with
  `Engine.run` overridden to await each store op in turn (`benchmarks/sequential.py`), which is
  what flask-session-plus does. Each library runs with its defaults: Flask-Session 0.8 refreshes
  the expiry with a write on every request (`SESSION_REFRESH_EACH_REQUEST`), asyncsessions
  slides it in the read itself, quart-session does not refresh it.
- **Session size** (`benchmarks/scaling.py`): sessions of 1, 20 and 200 fields of ~1 KB each
  (`benchmarks/values.py`: a dict of strings, numbers, a bool and a list of ten small dicts,
  plain JSON types); `/scale/read` reads one field, `/scale/write-one` replaces one field with
  a value of the same size. asyncsessions and Flask-Session 0.8 on the same store, +0 ms,
  alternating rounds. Flask-Session decodes and (to refresh the expiry) re-encodes and writes
  the whole session on every request; asyncsessions decodes the fields a request reads and
  writes the fields it changed.
- **Bytes to the store**: every byte an app sends towards its store through the proxy
  (commands, keys, values, protocol framing) over the measured requests, per request.
- **Three server stores**: the multi-store config (signed cookie + redis + MongoDB +
  memcached) and the same split over three redis stores (databases 0, 1 and 2 of one
  server), read-only, at +0 and +5 ms, alternating rounds.
- **Memory** (`benchmarks/memory.py`): see its section; the clients are raw keep-alive
  sockets with pre-built requests, so the worker sets the pace.
- **Throughput**: each app is served in its own process (`benchmarks/serve.py`); Flask under
  a threaded WSGI server, Quart under hypercorn; a read-only (`GET /read`) and a writing
  (`POST /write-one`) request per client connection, each client with its own session.
- **Servers**: redis-server, memcached, nx-27017 (MongoDB wire protocol over in-memory
  SQLite, not a real mongod), the Firestore emulator, all started by the benchmark on free
  127.0.0.1 ports and stopped at the end. The machine is shared: other processes (e.g. test
  runs) may add noise; the load averages above tell how busy it was."""


def write_markdown(results: dict[str, Any], path: Path) -> None:
    """Write results.md."""
    lines = ["# asyncsessions benchmarks", ""]
    lines += _machine(results)
    lines += ["", "## Targets (issue 10)", "", *_targets_table(results["targets"])]
    context = target_context(results)
    if context:
        lines += ["", "Context:", ""] + [f"- {line}" for line in context]
    earlier = results.get("earlier_targets")
    if earlier:
        lines += ["", "Earlier targets (the previous performance issue), kept to compare runs:",
                  "", *_targets_table(earlier)]
    lines += ["", "## Session size: time per request vs number of fields", *_scaling_table(results)]
    lines += ["", "## Ratios: asyncsessions vs each peer and vs sequential"]
    lines += _ratio_tables(results)
    lines += ["", "## Three server stores, read-only", *_three_table(results)]
    lines += ["", *sql_cloud_section(results)]
    lines += ["", "## Throughput at zero added latency (requests/s)", *_throughput_table(results)]
    lines += ["", "## Memory: a gunicorn worker over many requests", *_memory_section(results)]
    lines += ["", "## Serializer experiment: stdlib json vs orjson / msgspec, same format",
              *_serializer_section(results)]
    lines += ["", "## Profile: 200-field sessions", *_profile_section(results)]
    lines += ["", "## Flask bridge overhead", *_bridge_table(results)]
    lines += ["", "## Per-request latency (absolute)", *_absolute_tables(results)]
    lines += ["", "## Method", "", METHOD]
    if results["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in results["notes"]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_json(results: dict[str, Any], path: Path) -> None:
    """Write the raw results (results.json), to re-render or compare runs."""
    path.write_text(json.dumps(results, indent=1, sort_keys=True, default=str), encoding="utf-8")


def write_png(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: median latency per scenario and config at each latency, plus req/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latencies = results["latencies"]
    configs = results["configs"]
    panels = len(latencies) + 1
    cols = 2
    rows = (panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(16, 4.8 * rows), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    width = 0.8 / max(1, len(configs))
    for index, latency in enumerate(latencies):
        ax = axes[index // cols][index % cols]
        for j, config in enumerate(configs):
            values = [(_median(results, latency, config["key"], s.key) or 0) * 1000
                      for s in SCENARIOS]
            xs = [i + (j - (len(configs) - 1) / 2) * width for i in range(len(SCENARIOS))]
            ax.bar(xs, values, width, label=config["label"], color=colors[j % len(colors)])
        ax.set_xticks(range(len(SCENARIOS)), [s.key for s in SCENARIOS])
        ax.set_ylabel("median ms per request")
        ax.set_title(f"Flask in-process, +{latency} ms RTT per store")
        ax.grid(axis="y", alpha=0.3)
    ax = axes[len(latencies) // cols][len(latencies) % cols]
    rows_tp = results.get("throughput", {}).get("rows", [])
    if rows_tp:
        labels = [f"{r['framework']}\n{r['scenario']}" for r in rows_tp]
        xs = list(range(len(rows_tp)))
        ax.bar([x - 0.2 for x in xs], [r["ours"] for r in rows_tp], 0.4, label="asyncsessions")
        ax.bar([x + 0.2 for x in xs], [r["peer"] for r in rows_tp], 0.4,
               label="Flask-Session / quart-session")
        ax.set_xticks(xs, labels)
        ax.set_ylabel("requests/s")
        ax.set_title("+0 ms, one redis store, concurrent keep-alive clients")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    else:
        ax.set_visible(False)
    for extra in range(panels, rows * cols):
        axes[extra // cols][extra % cols].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.09 * 2 / rows, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_scaling_png(results: dict[str, Any], path: Path) -> bool:
    """Time per request vs session size (and bytes to the store per write); False if no data."""
    rows = results.get("scaling", {}).get("rows", [])
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    colors = {"redis": "tab:red", "mongodb": "tab:green", "memcache": "tab:blue"}
    stores = [p for p in SCALING_PAIRS if any(r["store"] == p[0] for r in rows)]
    panels = [("read", "median", "read-only (one field read)", "median ms per request"),
              ("write", "median", "change one field", "median ms per request"),
              ("write", "sent", "bytes sent to the store per write", "bytes per request")]
    for ax, (kind, what, title, ylabel) in zip(axes, panels, strict=True):
        for store, _ours, _peer, name in stores:
            picked = sorted((r for r in rows if r["store"] == store and r["kind"] == kind),
                            key=lambda r: r["fields"])
            xs = [r["fields"] for r in picked]
            scale = 1000 if what == "median" else 1
            ax.plot(xs, [(r["ours"].get(what) or 0) * scale for r in picked], "o-",
                    color=colors[store], label=f"asyncsessions · {name}")
            ax.plot(xs, [(r["peer"].get(what) or 0) * scale for r in picked], "s--",
                    color=colors[store], alpha=0.6, label=f"Flask-Session 0.8 · {name}")
        ax.set_xscale("log")
        ax.set_xticks(results["scaling"]["sizes"], [str(n) for n in results["scaling"]["sizes"]])
        ax.set_yscale("log")
        ax.set_xlabel("fields in the session (~1 KB each)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}, +0 ms")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
