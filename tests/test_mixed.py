"""Every store type in one app: fields routed, stored where configured, merged on load."""

from __future__ import annotations

from typing import Any

import pytest

from app_fixtures import store_config
from asyncsessions import Backend

KINDS = ["secure_cookie", "redis", "mongodb", "memcache", "firestore", "filesystem"]


def test_six_stores_in_one_app(
    make_driver: Any, request: pytest.FixtureRequest, tmp_path: Any
) -> None:
    config = [
        {"cookie_name": f"c_{kind}", **store_config(request, kind, tmp_path),
         "session_fields": "auto" if kind == "filesystem" else [f"f_{kind}"]}
        for kind in KINDS
    ]
    d = make_driver({"SESSION_CONFIG": config})
    values = {f"f_{kind}": [kind, 1] for kind in KINDS if kind != "filesystem"}
    reply = d.post("set", {**values, "other": {"x": 1}})
    assert sorted(h.split("=")[0] for h in reply.set_cookies) == sorted(f"c_{k}" for k in KINDS)
    expected = {k: repr(v) for k, v in values.items()} | {"other": "{'x': 1}"}
    assert d.show() == expected
    engine = d.app.extensions["asyncsessions"]
    session_states = []

    def capture() -> str:
        session_states.extend(make_driver.session_proxy.states)
        return "ok"

    d2 = make_driver({"SESSION_CONFIG": config}, capture=make_driver.view(capture))
    for name, value in d.cookies().items():
        d2.set_cookie(name, value)
    assert d2.get("/capture").status == 200
    loaded = [s.load_seconds for s in session_states]
    assert all(t is not None for t, st in zip(loaded, engine.stores, strict=True)
               if isinstance(st.backend, Backend))
    # Each store holds only its own fields: drop one cookie, lose exactly its field.
    for kind in KINDS[:-1]:
        d3 = make_driver({"SESSION_CONFIG": config})
        for name, value in d.cookies().items():
            if name != f"c_{kind}":
                d3.set_cookie(name, value)
        shown = d3.show()
        assert f"f_{kind}" not in shown
        assert len(shown) == len(expected) - 1
