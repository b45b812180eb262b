"""Session values the scaling scenario and the serializer experiment use.

A *field* of the scaling sessions is a typical ~1 KB session value: a dict of strings,
numbers, a bool, a nested list of small dicts (a cart, a profile, a search state), plain
JSON types only, as most session data is. The serializer experiment adds values with the
tagged types (tuple, datetime, bytes, UUID, Markup, …) on top.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

#: Serialized size each scaling field aims at (bytes of asyncsessions' tagged JSON).
FIELD_BYTES = 1000


def field_value(index: int, version: int = 0) -> dict[str, Any]:
    """The ``index``-th field of a scaling session; ``version`` changes it, same size."""
    items = [
        {"sku": f"SKU-{index:04d}-{j:02d}", "qty": (j + version) % 5 + 1,
         "price": round(9.99 + j * 1.25, 2), "title": f"Item {j} of field {index}"}
        for j in range(10)
    ]
    return {
        "id": index,
        "version": version,
        "owner": "Ada Lovelace",
        "email": "ada@example.invalid",
        "active": True,
        "score": 0.5 + index / 1000,
        "tags": ["alpha", "beta", "gamma", f"t{index % 7}"],
        "items": items,
        "note": "n" * 80,
    }


def field_name(index: int) -> str:
    """The key of the ``index``-th field of a scaling session."""
    return f"f{index:03d}"


def scaling_session(n: int, version: int = 0) -> dict[str, Any]:
    """A session of ``n`` fields of ~1 KB each."""
    return {field_name(i): field_value(i, version) for i in range(n)}


def tagged_value() -> dict[str, Any]:
    """A ~1 KB value using every tagged type asyncsessions stores exactly."""
    from markupsafe import Markup

    return {
        "when": datetime(2026, 11, 22, 14, 30, 15, 123456, tzinfo=timezone.utc),
        "naive": datetime(2026, 11, 22, 14, 30, 15),
        "day": date(2026, 11, 22),
        "at": time(9, 30, tzinfo=timezone(timedelta(hours=2))),
        "pair": (1, "two"),
        "coords": [(48.85, 2.35), (51.5, -0.12), (40.71, -74.0)],
        "raw": b"\x00\x01binary\xff" * 8,
        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "html": Markup("<b>bold</b> and <i>italic</i>"),
        "escaped": {" looks like a tag": 1},
        "history": [{"path": f"/page/{i}", "t": datetime(2026, 1, 1, 12, i)} for i in range(6)],
        "nan": float("nan"),
    }


def typical_values() -> dict[str, Any]:
    """Name → value: what sessions usually hold, small to ~1 KB, plain and tagged."""
    return {
        "int (user_id)": 42,
        "str (csrf token)": uuid.uuid4().hex,
        "small dict (user)": {"name": "Ada Lovelace", "roles": ["admin", "dev"], "n": 0},
        "list of ints (cart)": [101, 102, 103],
        "~1 KB plain dict (scaling field)": field_value(7),
        "~1 KB tagged dict (datetime, tuple, bytes, UUID, Markup)": tagged_value(),
    }
