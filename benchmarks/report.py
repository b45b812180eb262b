"""results.md (targets, ratios, absolute numbers, method) and results.png from the results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .inprocess import SCENARIOS

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


def _verdict(ok: bool | None) -> str:
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


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with what was measured, its limit and PASS/MISS."""
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
    """What explains targets 1 and 2: each store alone, and what the added latency costs."""
    lines = []
    singles = {c["kind"]: c["key"] for c in results["configs"]
               if c["lib"] == "asyncsessions" and not c["kind"].startswith("multi")}
    alone = {kind: _median(results, 5, key, "read") for kind, key in singles.items()}
    alone = {k: v for k, v in alone.items() if v is not None}
    ours5, ours0 = (_median(results, lat, "ours-multi", "read") for lat in (5, 0))
    seq5, seq0 = (_median(results, lat, "seq-multi", "read") for lat in (5, 0))
    if alone and ours5 is not None:
        slowest = max(alone, key=lambda k: alone[k])
        each = ", ".join(f"{k} {_ms(v)} ms" for k, v in alone.items())
        lines.append(
            f"1: each store alone, read-only at +5 ms (single-store configs): {each}. The "
            f"concurrent multi-store read takes {_ratio(_div(ours5, alone[slowest]))} the slowest "
            f"store alone ({slowest})"
            + (f"; at +0 ms it takes {_ms(ours0)} ms" if ours0 is not None else "") + "."
        )
    if ours5 is not None and ours0 is not None and seq5 is not None and seq0 is not None:
        lines.append(
            f"1: what +5 ms RTT adds to a multi-store read: concurrent {_ms(ours5 - ours0)} ms "
            f"= {_ratio((ours5 - ours0) / 0.005)} one RTT; sequential {_ms(seq5 - seq0)} ms = "
            f"{_ratio((seq5 - seq0) / 0.005)}."
        )
    ours0, fs0 = (_median(results, 0, key, "read") for key in ("ours-redis", "fs-redis"))
    if ours0 is not None and fs0 is not None:
        lines.append(
            f"2: at +0 ms the same reads take {_ms(ours0)} ms (asyncsessions, 1 round trip) and "
            f"{_ms(fs0)} ms (Flask-Session, 2: GET + SET to refresh the expiry)."
        )
    rtt = results.get("rtt_measured", {}).get("5")
    if rtt:
        lines.append(f"one exchange through the proxy at +5 ms measures {_ms(rtt)} ms.")
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
    lines += ["", "## Targets", "", *_targets_table(results["targets"])]
    context = target_context(results)
    if context:
        lines += ["", "Context:", ""] + [f"- {line}" for line in context]
    lines += ["", "## Ratios: asyncsessions vs each peer and vs sequential"]
    lines += _ratio_tables(results)
    lines += ["", "## Throughput at zero added latency (requests/s)", *_throughput_table(results)]
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
