"""The demo app runs on the embedded stores and shows where each field lives."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demo"))

from app import create_app


def test_demo_routes_fields_to_their_stores(tmp_path: Any) -> None:
    app = create_app("embedded", fs_dir=str(tmp_path))
    client = app.test_client()
    page = client.get("/").get_data(as_text=True)
    assert "filesystem" in page
    csrf = client.get_cookie("csrf")
    assert csrf is not None
    with client.session_transaction() as sess:
        token = sess["csrf_token"]
    reply = client.post("/set", data={"csrf_token": token, "key": "user_id", "value": "7"})
    assert reply.status_code == 303
    assert client.post("/set", data={"csrf_token": "forged", "key": "x", "value": "1"}
                       ).status_code == 400
    page = client.get("/").get_data(as_text=True)
    assert "user_id" in page
    assert list(tmp_path.iterdir())  # user_id went to the filesystem store
