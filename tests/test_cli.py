"""The ``flask sessions`` / ``quart sessions`` commands against the real stores."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import flask
import pytest
import quart

from app_fixtures import store_config
from asyncsessions import Session

PURGED = ["filesystem", "sqlalchemy_sqlite", "sqlalchemy_postgresql", "peewee_sqlite",
          "mongodb", "dynamodb", "elasticsearch", "datastore", "firestore"]
LIFETIME = 1  # seconds: the short-lived sessions' lifetime
#: What show prints for a session written a moment ago with an hour's lifetime.
EXPIRY = re.compile(r"expires \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in (35\d\d|3600) s\)")


def _entry(request: pytest.FixtureRequest, kind: str, tmp_path: Any) -> dict[str, Any]:
    entry = store_config(request, kind, tmp_path)
    if kind == "mongodb":
        # A collection of its own without the TTL index, whose monitor (every minute) could
        # delete the expired records between two commands of a test.
        entry.update(collection=f"c{uuid.uuid4().hex[:8]}", create_index=False)
    # purge and count cover the whole table (kind, collection): not the one other tests share.
    if kind.startswith("sqlalchemy_"):
        entry["table"] = f"cli_{uuid.uuid4().hex[:8]}"
    if kind == "datastore":
        entry["kind"] = f"Cli{uuid.uuid4().hex[:8]}"
    if kind == "firestore":
        entry["collection"] = f"cli{uuid.uuid4().hex[:8]}"
    return entry


def _flask_app(entry: dict[str, Any], lifetime: int) -> flask.Flask:
    app = flask.Flask(__name__)
    app.secret_key = "test"
    app.config["SESSION_CONFIG"] = [{**entry, "cookie_name": "s", "session_lifetime": lifetime}]

    @app.get("/set/<value>")
    def set_value(value: str) -> str:
        flask.session["value"] = value
        flask.session["n"] = [1, 2]
        return "ok"

    Session(app)
    return app


def _session_id(client: Any) -> str:
    cookie = client.get_cookie("s")
    assert cookie is not None
    return str(cookie.value).split(".")[0]


def _write(app: flask.Flask, value: str) -> str:
    with app.test_client() as client:
        assert client.get(f"/set/{value}").status_code == 200
        return _session_id(client)


@pytest.mark.parametrize("kind", PURGED)
def test_count_show_purge(request: pytest.FixtureRequest, tmp_path: Any, kind: str) -> None:
    entry = _entry(request, kind, tmp_path)
    short, long = _flask_app(entry, LIFETIME), _flask_app(entry, 3600)
    dead = [_write(short, f"dead{i}") for i in range(3)]
    live = _write(long, "live")
    time.sleep(LIFETIME + 0.3)
    runner = long.test_cli_runner()

    result = runner.invoke(args=["sessions", "count"])
    assert result.exit_code == 0, result.output
    assert ": 1 live" in result.output

    result = runner.invoke(args=["sessions", "show", "--", live])
    assert result.exit_code == 0, result.output
    assert "permanent=False" in result.output
    assert EXPIRY.search(result.output), result.output
    assert "'value': 'live'" in result.output
    assert "'n': [1, 2]" in result.output
    result = runner.invoke(args=["sessions", "show", "--", dead[0]])
    assert result.exit_code == 0, result.output
    assert "no session" in result.output

    result = runner.invoke(args=["sessions", "purge", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would remove 3 expired" in result.output
    result = runner.invoke(args=["sessions", "purge", "--dry-run"])
    assert "would remove 3 expired" in result.output  # nothing was removed

    result = runner.invoke(args=["sessions", "purge", "--batch", "2"])
    assert result.exit_code == 0, result.output
    assert "removed 3 expired" in result.output
    result = runner.invoke(args=["sessions", "purge", "--dry-run"])
    assert "would remove 0 expired" in result.output
    result = runner.invoke(args=["sessions", "count"])
    assert ": 1 live" in result.output
    result = runner.invoke(args=["sessions", "show", "--", live])
    assert "'value': 'live'" in result.output


def test_stores_without_count_or_purge(request: pytest.FixtureRequest, tmp_path: Any) -> None:
    entry = store_config(request, "cachelib", tmp_path)
    app = _flask_app(entry, 3600)
    sid = _write(app, "x")
    runner = app.test_cli_runner()
    assert "cannot count cheaply" in runner.invoke(args=["sessions", "count"]).output
    assert "not purged" in runner.invoke(args=["sessions", "purge"]).output
    shown = runner.invoke(args=["sessions", "show", "--", sid]).output
    assert "'value': 'x'" in shown
    assert EXPIRY.search(shown), shown


def test_cookie_store_is_not_counted() -> None:
    app = _flask_app({"session_type": "secure_cookie"}, 3600)
    result = app.test_cli_runner().invoke(args=["sessions", "count"])
    assert result.exit_code == 0, result.output
    assert "live in the cookie" in result.output


@pytest.mark.parametrize("kind", ["filesystem", "mongodb"])
def test_quart(request: pytest.FixtureRequest, tmp_path: Any, kind: str) -> None:
    entry = _entry(request, kind, tmp_path)
    flask_short = _flask_app(entry, LIFETIME)  # the same store, written through Flask
    dead = _write(flask_short, "dead")
    app = quart.Quart(__name__)
    app.secret_key = "test"
    app.config["SESSION_CONFIG"] = [{**entry, "cookie_name": "s", "session_lifetime": 3600}]
    Session(app)
    live = _write(_flask_app(entry, 3600), "live")
    time.sleep(LIFETIME + 0.3)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["sessions", "count"])
    assert result.exit_code == 0, result.output
    assert ": 1 live" in result.output
    assert "'value': 'live'" in runner.invoke(args=["sessions", "show", "--", live]).output
    assert "no session" in runner.invoke(args=["sessions", "show", "--", dead]).output
    assert "removed 1 expired" in runner.invoke(args=["sessions", "purge"]).output
    assert ": 1 live" in runner.invoke(args=["sessions", "count"]).output


def test_error_exits_nonzero() -> None:
    url = "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300"
    app = _flask_app({"session_type": "mongodb", "url": url}, 3600)
    result = app.test_cli_runner().invoke(args=["sessions", "count"])
    assert result.exit_code == 1
