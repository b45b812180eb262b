"""A Flask demo of asyncsessions: which store holds each field, and concurrent store loads."""

from __future__ import annotations

import argparse
import hmac
import json
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from typing import Any, cast

from flask import (
    Flask,
    Request,
    abort,
    flash,
    get_flashed_messages,
    redirect,
    render_template_string,
    request,
    session,
)
from markupsafe import escape
from werkzeug.wrappers import Response

from asyncsessions import MultiStoreSession, Session, SessionBackendError

# How to reach each store type when it appears in --stores: adding a backend is one line.
# `u` holds the connection settings given to create_app (redis_url, mongo_url, ...).
STORE_OPTIONS: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
    "secure_cookie": lambda u: {},
    "filesystem": lambda u: {"directory": u["fs_dir"]},
    "redis": lambda u: {"url": u["redis_url"]},
    "mongodb": lambda u: {"url": u["mongo_url"]},
    "memcache": lambda u: {"host": u["memcache_host"], "port": int(u["memcache_port"])},
    "firestore": lambda u: {"project": "demo"},
    "sqlalchemy": lambda u: {"url": u["sql_url"]},
    "peewee": lambda u: {"database": _peewee(u["sql_url"])},
    "cachelib": lambda u: {"client": _file_cache(u["fs_dir"])},
    "dynamodb": lambda u: {"endpoint_url": u["dynamodb_url"] or None,
                           "region_name": u["aws_region"]},
    "datastore": lambda u: {"project": "demo"},
    "elasticsearch": lambda u: {"url": u["elasticsearch_url"]},
}
DEFAULT_URLS = {
    "redis_url": "redis://127.0.0.1:6379/0",
    "mongo_url": "mongodb://127.0.0.1:27017",
    "memcache_host": "127.0.0.1",
    "memcache_port": "11211",
    "fs_dir": os.path.join(tempfile.gettempdir(), "asyncsessions-demo"),
    "sql_url": "sqlite:///" + os.path.join(tempfile.gettempdir(), "asyncsessions-demo.db"),
    "dynamodb_url": "",
    "aws_region": "us-east-1",
    "elasticsearch_url": "http://127.0.0.1:9200",
}


def _peewee(url: str) -> Any:
    from playhouse.db_url import connect

    return connect(url)


def _file_cache(directory: str) -> Any:
    from cachelib import FileSystemCache

    return FileSystemCache(os.path.join(directory, "cachelib"))
# Fields given to the stores between the first (csrf_token) and the last ('auto').
MIDDLE_FIELDS = ["user_id", "cart", "prefs", "user_data"]


def session_config(stores: str, urls: dict[str, str]) -> list[dict[str, Any]]:
    """SESSION_CONFIG for 'embedded' (the seed's layout) or a comma-separated list of types."""
    if stores == "embedded":
        return [
            {"cookie_name": "csrf", "session_type": "secure_cookie",
             "session_fields": ["csrf_token"]},
            {"cookie_name": "session", "session_type": "filesystem",
             "session_fields": ["user_id", "user_data"], "directory": urls["fs_dir"]},
            {"cookie_name": "data", "session_type": "secure_cookie", "session_fields": "auto"},
        ]
    types = [t.strip() for t in stores.split(",") if t.strip()]
    if len(types) == 1:  # one store: it takes every field
        return [{"cookie_name": "session", "session_type": types[0], "session_fields": [],
                 **_options(types[0], urls)}]
    entries = []
    fields: list[str] | str
    for i, kind in enumerate(types):
        if i == 0:
            name, fields = "csrf", ["csrf_token"]
        elif i == len(types) - 1:
            name, fields = "data", "auto"
        else:
            field = MIDDLE_FIELDS[i - 1] if i <= len(MIDDLE_FIELDS) else f"field{i}"
            name, fields = f"s{i}_{kind}", [field]
        entries.append({"cookie_name": name, "session_type": kind, "session_fields": fields,
                        **_options(kind, urls)})
    return entries


def _options(kind: str, urls: dict[str, str]) -> dict[str, Any]:
    # An unknown type gets no options: SESSION_CONFIG parsing then names the problem.
    return STORE_OPTIONS[kind](urls) if kind in STORE_OPTIONS else {}


def _multi() -> MultiStoreSession:
    """flask.session, typed as what asyncsessions puts there (Flask types it SessionMixin)."""
    return cast(MultiStoreSession, session)


def _time_open_session(app: Flask) -> None:
    """Record how long open_session took (all store loads together) in the WSGI environ."""
    interface = app.session_interface
    inner = interface.open_session

    def timed(app_: Flask, req: Request) -> Any:
        started = time.perf_counter()
        try:
            return inner(app_, req)
        finally:
            req.environ["demo.open_ms"] = (time.perf_counter() - started) * 1000

    interface.open_session = timed  # type: ignore[method-assign,assignment]


def create_app(stores: str = "embedded", **urls: str) -> Flask:
    """The demo app; urls override DEFAULT_URLS (redis_url, mongo_url, fs_dir)."""
    app = Flask(__name__)
    # Signs the cookies. A fixed string is fine for a local demo, never for production.
    app.secret_key = os.environ.get("DEMO_SECRET_KEY", "asyncsessions-demo-dev-key")
    app.config["SESSION_CONFIG"] = session_config(stores, {**DEFAULT_URLS, **urls})
    Session(app)
    _time_open_session(app)
    engine = app.extensions["asyncsessions"]
    # engine.stores, the SESSION_CONFIG entries and session.states share one index.
    kinds = [entry.get("session_type", "secure_cookie") for entry in app.config["SESSION_CONFIG"]]
    labels = [f"{store.name} ({kind})" for store, kind in zip(engine.stores, kinds, strict=True)]

    @app.errorhandler(SessionBackendError)
    def store_down(exc: SessionBackendError) -> tuple[str, int]:
        # Catches failed loads (raised in the view); a failed save still ends in a plain 500.
        return f"<h1>503</h1><p>{escape(exc)}</p><p>Is that store's server running?</p>", 503

    @app.get("/")
    def index() -> str:
        if "csrf_token" not in session:
            session["csrf_token"] = secrets.token_urlsafe(32)
        # flash() keeps messages in the session too: '_flashes' is unnamed, so 'auto' owns it.
        messages = get_flashed_messages()
        fields = [  # engine._owners(key): the indices of the stores a field is saved to
            (key, repr(value), [labels[i] for i in engine._owners(key)])
            for key, value in sorted(session.items())
        ]
        rows = []
        for store, kind, state in zip(engine.stores, kinds, _multi().states, strict=True):
            ms = None if state.load_seconds is None else state.load_seconds * 1000
            rows.append({"name": store.name, "kind": kind, "fields": _describe(store),
                         "has_cookie": state.cookie is not None, "loaded": bool(state.loaded),
                         "ms": ms, "sid": (state.sid or "")[:10]})
        timed = [r["ms"] for r in rows if r["ms"] is not None]
        return render_template_string(
            PAGE, fields=fields, rows=rows, messages=messages, permanent=session.permanent,
            total_ms=request.environ.get("demo.open_ms"), sum_ms=sum(timed),
            max_ms=max(timed, default=0.0), loads=len(timed), csrf=session["csrf_token"],
        )

    @app.post("/<action>")
    def act(action: str) -> Response:
        expected = session.get("csrf_token")
        sent = request.form.get("csrf_token", "")
        if not expected or not hmac.compare_digest(str(expected).encode(), sent.encode()):
            abort(400, "CSRF token missing or wrong: reload the page")
        key = request.form.get("key", "").strip()
        if action == "set" and key and key != "csrf_token":
            raw = request.form.get("value", "")
            try:
                session[key] = json.loads(raw)
            except ValueError:
                session[key] = raw
            flash(f"set {key!r}")
        elif action == "delete" and key != "csrf_token":
            flash(f"deleted {key!r}" if key in session else f"no field {key!r}")
            session.pop(key, None)
        elif action == "clear":
            session.clear()  # csrf_token too: the next page issues a new one
        elif action == "permanent":
            session.permanent = not session.permanent
        elif action == "regenerate":
            _multi().regenerate()
            flash("new ids for every server-side store; the old records are deleted")
        else:
            abort(400, "unknown action, empty key, or csrf_token (managed by the app)")
        return redirect("/", code=303)

    return app


def _describe(store: Any) -> str:
    mode, names = store.fields.mode, sorted(store.fields.names)
    return {"include": ", ".join(names), "exclude": f"all but {', '.join(names)}",
            "auto": "auto (every field no store names)", "all": "every field"}[mode]


PAGE = """<!doctype html><title>asyncsessions demo</title>
<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}code{background:#eee}</style>
<h1>asyncsessions demo</h1>
{% for m in messages %}<p><em>{{ m }}</em></p>{% endfor %}
<h2>Session fields</h2>
<table><tr><th>field</th><th>value</th><th>stored in (cookie name, type)</th></tr>
{% for key, value, owners in fields %}<tr><td><code>{{ key }}</code></td><td><code>{{ value }}
</code></td><td>{{ owners|join(", ") or "no store: not saved!" }}</td></tr>{% endfor %}</table>
<p>permanent: <b>{{ permanent }}</b></p>
<h2>Stores</h2>
<table><tr><th>cookie</th><th>type</th><th>fields it owns</th><th>cookie sent</th><th>loaded
</th><th>load time</th><th>id</th></tr>{% for r in rows %}<tr><td><code>{{ r.name }}</code></td>
<td>{{ r.kind }}</td><td>{{ r.fields }}</td><td>{{ r.has_cookie }}</td><td>{{ r.loaded }}</td>
<td>{{ "%.2f ms"|format(r.ms) if r.ms is not none else "no load" }}</td>
<td><code>{{ r.sid }}</code></td></tr>{% endfor %}</table>
<p>{% if loads %}{{ loads }} server-side load(s) ran <b>concurrently</b> in one task group: sum
{{ "%.2f"|format(sum_ms) }} ms, slowest {{ "%.2f"|format(max_ms) }} ms, whole open_session
{{ "%.2f"|format(total_ms or 0) }} ms: with several remote stores the total tracks the slowest
load, not the sum.{% else %}No server-side store had a cookie, so nothing was loaded.{% endif %}
Cookie stores are decoded in place and need no load.</p>
<h2>Change the session</h2>
{% macro form(action, label) %}<form method=post action="/{{ action }}" style="display:inline">
<input type=hidden name=csrf_token value="{{ csrf }}">{{ caller() if caller }}
<button>{{ label }}</button></form>{% endmacro %}
{% call form("set", "set") %}<input name=key placeholder=field> <input name=value
placeholder="value (JSON or text)">{% endcall %}
{% call form("delete", "delete") %}<input name=key placeholder=field>{% endcall %}
<p>{{ form("clear", "clear session") }} {{ form("permanent", "toggle permanent") }}
{{ form("regenerate", "regenerate ids") }}</p>
<h2>How fields are routed</h2>
<p>Each store owns the fields its <code>session_fields</code> names; the <code>auto</code> store
takes every field no other store names. With <code>--stores a,b,c,...</code> the first store gets
<code>csrf_token</code>, the last is <code>auto</code>, and each store between gets one field
(<code>user_id</code>, <code>cart</code>, <code>prefs</code>, <code>user_data</code>...).
The CSRF token lives in its own signed cookie: forms check it on every POST, and it never rides
along with (or is lost by) the server-side stores. Try a field named <code>cart</code> or
<code>user_id</code>, then one with any other name.</p>
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stores", default="embedded",
                        help="'embedded' or store types, e.g. secure_cookie,redis,filesystem")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--redis-url", default=DEFAULT_URLS["redis_url"])
    parser.add_argument("--mongo-url", default=DEFAULT_URLS["mongo_url"])
    parser.add_argument("--memcache-port", default=DEFAULT_URLS["memcache_port"])
    parser.add_argument("--sql-url", default=DEFAULT_URLS["sql_url"],
                        help="for sqlalchemy and peewee (default: a SQLite file)")
    parser.add_argument("--dynamodb-url", default=DEFAULT_URLS["dynamodb_url"],
                        help="a DynamoDB endpoint (default: AWS itself)")
    parser.add_argument("--elasticsearch-url", default=DEFAULT_URLS["elasticsearch_url"])
    args = parser.parse_args()
    app = create_app(args.stores, redis_url=args.redis_url, mongo_url=args.mongo_url,
                     memcache_port=args.memcache_port, sql_url=args.sql_url,
                     dynamodb_url=args.dynamodb_url, elasticsearch_url=args.elasticsearch_url)
    app.run(host=args.host, port=args.port)


if __name__ == "__main__":
    main()
