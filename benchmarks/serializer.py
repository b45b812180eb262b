"""Serializer experiment: asyncsessions' tagged JSON against the same format by orjson/msgspec.

``python -m benchmarks.serializer`` prints the table; the main run puts it in results.md.

The candidates write the *same* stored format as ``asyncsessions.serialization`` (tagged
JSON, one-key objects with a space-led key for the types JSON lacks) and must keep every
type's exact round trip. Nothing here is used by asyncsessions: it is an experiment to
decide on. What a compiled encoder can and cannot take over:

- **dumps** still needs a walk in Python: orjson and msgspec write a tuple as an array,
  NaN/inf as ``null`` (orjson) or refuse them, and neither knows the ``" di"`` escape of a
  one-key dict whose key starts with a space, so their ``default`` hooks alone cannot keep
  the format. The candidates walk the value once, *without copying* unless something must be
  tagged (most session values are plain JSON), then let the compiled encoder write the text.
  orjson refuses ints beyond 64 bits and lone surrogates: those fall back to the stdlib
  encoder (which gives the exact digits, or the same ``SerializationError``).
- **loads**: a tag is always a one-key object whose key starts with a space, i.e. the text
  holds ``{"`` followed by a space; a string cannot hold that sequence unescaped. So text
  without it has no tag and needs no untag walk, and text with fewer than MAX_DEPTH
  brackets cannot nest too deeply: the compiled decoder's result is the value. orjson parses
  integers beyond 64 bits as floats: text with a run of 19+ digits goes to the stdlib decoder.
- **split_fields** (the signed cookie's one blob, memcached's records of the earlier layout):
  asyncsessions used to parse the whole blob and encode every field again to get its bytes;
  it now slices them as ``raw_split`` does (memcached's own layout needs no split). The
  stdlib's C scanner (``JSONDecoder.scan_once``) returns where each value ends, so the
  fields' exact text can be
  sliced out, parsed (checked) but never re-encoded (``raw_split``, used by the stdlib and
  orjson candidates: orjson has no raw spans); msgspec decodes the outer object into
  ``msgspec.Raw`` spans without parsing the values at all.

Four codecs: asyncsessions as it is; the same stdlib ``json`` with the copy-free walk, the
untag skip and ``raw_split`` (no new dependency); orjson; msgspec.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from collections.abc import Callable, Mapping
from datetime import date, datetime
from datetime import time as dtime
from typing import Any
from uuid import UUID

from asyncsessions import serialization as std
from asyncsessions.serialization import MAX_DEPTH, SerializationError

from .values import scaling_session, typical_values

_stdlib_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"),
                                   check_circular=True)
_TAG_MARK = b'{" '
_BIG_INT = re.compile(rb"[0-9]{19}")
_INF = float("inf")


def _deeper(depth: int) -> int:
    if depth >= MAX_DEPTH:
        raise SerializationError(f"cannot store a value nested more than {MAX_DEPTH} "
                                 "levels deep")
    return depth + 1


def _walk(value: Any, depth: int = 0) -> Any:
    """The tagged form of ``value``; the very same object when nothing in it needs a tag."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        if value != value or value == _INF or value == -_INF:
            return {" f": repr(value)}
        return value
    if kind is list:
        depth = _deeper(depth)
        out: Any = None
        for i, item in enumerate(value):
            t = type(item)
            if t is str or t is int or t is bool or item is None:
                continue
            new = _walk(item, depth)
            if new is not item:
                if out is None:
                    out = list(value)
                out[i] = new
        return value if out is None else out
    if kind is dict:
        depth = _deeper(depth)
        if len(value) == 1:
            (key,) = value
            if isinstance(key, str) and key.startswith(" "):
                return {" di": {str(key): _walk(value[key], depth)}}
        out = None
        for key, item in value.items():
            if type(key) is not str:
                if not isinstance(key, str):
                    raise SerializationError(
                        f"session dict keys must be str, not {type(key)!r}")
                if out is None:
                    out = dict(value)
                del out[key]
                out[str(key)] = _walk(item, depth)  # orjson takes exact str keys only
                continue
            t = type(item)
            if t is str or t is int or t is bool or item is None:
                continue
            new = _walk(item, depth)
            if new is not item:
                if out is None:
                    out = dict(value)
                out[key] = new
        return value if out is None else out
    if kind is tuple:
        depth = _deeper(depth)
        return {" t": [_walk(item, depth) for item in value]}
    # Every other type: the same conversions as asyncsessions (one place for the rules).
    return std._tag(value, depth)


def _untag(value: Any, depth: int = 0) -> Any:
    return std._untag(value, depth)


def _needs_untag(data: bytes) -> bool:
    return _TAG_MARK in data or data.count(b"[") + data.count(b"{") > MAX_DEPTH


class Codec:
    """One way to serialize fields: ``dumps``/``loads`` per value, split/join per blob."""

    name = "?"

    def dumps(self, value: Any) -> bytes:
        raise NotImplementedError

    def loads(self, data: bytes) -> Any:
        raise NotImplementedError

    def split_fields(self, data: bytes) -> dict[str, bytes]:
        return std.split_fields(data)

    def join_fields(self, fields: Mapping[str, bytes]) -> bytes:
        return std.join_fields(fields)


class Stdlib(Codec):
    """asyncsessions.serialization as it is: pure-Python tag walk + the stdlib json module."""

    name = "asyncsessions (stdlib json)"

    def dumps(self, value: Any) -> bytes:
        return std.dumps(value)

    def loads(self, data: bytes) -> Any:
        return std.loads(data)


#: split_fields by the stdlib's C scanner's spans (each field's exact text, parsed but never
#: encoded again): the library's own split since this experiment, so the same function.
raw_split = std.split_fields


class StdlibFast(Codec):
    """No new dependency: the copy-free walk + the stdlib encoder, untag skipped when nothing
    is tagged, and split_fields by the C scanner's spans instead of parse + re-encode."""

    name = "stdlib json, copy-free walk"

    def dumps(self, value: Any) -> bytes:
        try:
            return _stdlib_encoder.encode(_walk(value)).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SerializationError(f"cannot store text that is not valid Unicode: {exc}") \
                from exc

    def loads(self, data: bytes) -> Any:
        try:
            obj = json.loads(data)
            return _untag(obj) if _needs_untag(data) else obj
        except (TypeError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
            raise ValueError(f"not a serialized session value: {exc}") from exc

    def split_fields(self, data: bytes) -> dict[str, bytes]:
        return raw_split(data)


class Orjson(Codec):
    """The same format: a copy-free tag walk + orjson, skipping untag when nothing is tagged."""

    name = "orjson, same format"

    def __init__(self) -> None:
        import orjson

        self._dumps = orjson.dumps
        self._loads = orjson.loads
        self._error = orjson.JSONEncodeError

    def dumps(self, value: Any) -> bytes:
        tagged = _walk(value)
        try:
            return self._dumps(tagged)
        except self._error:
            # Ints beyond 64 bits (exact digits) and lone surrogates (SerializationError).
            try:
                return _stdlib_encoder.encode(tagged).encode("utf-8")
            except UnicodeEncodeError as exc:
                raise SerializationError(
                    f"cannot store text that is not valid Unicode: {exc}") from exc

    def loads(self, data: bytes) -> Any:
        try:
            if _BIG_INT.search(data):
                return _untag(json.loads(data))  # orjson would turn big ints into floats
            obj = self._loads(data)
            return _untag(obj) if _needs_untag(data) else obj
        except (TypeError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
            raise ValueError(f"not a serialized session value: {exc}") from exc

    def split_fields(self, data: bytes) -> dict[str, bytes]:
        return raw_split(data)  # orjson cannot return a value's raw text

    def join_fields(self, fields: Mapping[str, bytes]) -> bytes:
        dumps = self._dumps
        return b"{" + b",".join(dumps(k) + b":" + v for k, v in fields.items()) + b"}"


class Msgspec(Codec):
    """The same format: a copy-free tag walk + msgspec.json; split_fields via msgspec.Raw."""

    name = "msgspec, same format"

    def __init__(self) -> None:
        import msgspec

        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder().decode
        self._split = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode

    def dumps(self, value: Any) -> bytes:
        try:
            return self._encode(_walk(value))
        except UnicodeEncodeError as exc:
            raise SerializationError(f"cannot store text that is not valid Unicode: {exc}") \
                from exc

    def loads(self, data: bytes) -> Any:
        try:
            obj = self._decode(data)
            return _untag(obj) if _needs_untag(data) else obj
        except (TypeError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
            raise ValueError(f"not a serialized session value: {exc}") from exc

    def split_fields(self, data: bytes) -> dict[str, bytes]:
        try:
            return {k: bytes(v) for k, v in self._split(data).items()}
        except RecursionError as exc:
            raise ValueError("not a serialized session: nested too deeply") from exc

    def join_fields(self, fields: Mapping[str, bytes]) -> bytes:
        encode = self._encode
        return b"{" + b",".join(encode(k) + b":" + v for k, v in fields.items()) + b"}"


def codecs() -> tuple[list[Codec], list[str]]:
    """The codecs that import here, and why the others are missing."""
    found: list[Codec] = [Stdlib(), StdlibFast()]
    missing = []
    for cls, module in ((Orjson, "orjson"), (Msgspec, "msgspec")):
        try:
            found.append(cls())
        except ImportError:
            missing.append(f"{module} is not installed (pip install {module})")
    return found, missing


def _split_refusals(codec: Codec) -> list[str]:
    accepted = []
    for name, data in (("array", b"[1]"), ("truncated", b'{"a":[1,'), ("trailing", b'{"a":1}x'),
                       ("no colon", b'{"a" 1}'), ("deep", b'{"a":' + b"[" * 5000 + b"]" * 5000
                                                   + b"}")):
        try:
            codec.split_fields(data)
        except ValueError:
            continue
        accepted.append(name)
    return accepted


# -- exactness ------------------------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    """Equal with the very same types all the way down (and NaN equal to NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and a != a:
        return b != b
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (datetime, dtime)):
        return a == b and a.tzinfo == b.tzinfo and a.fold == b.fold
    return bool(a == b)


def _edge_values() -> dict[str, Any]:
    from decimal import Decimal
    from enum import IntEnum
    from zoneinfo import ZoneInfo

    from markupsafe import Markup

    class Level(IntEnum):
        HIGH = 3

    nested: Any = []
    for _ in range(MAX_DEPTH - 1):
        nested = [nested]
    return {
        "big ints": [2**63 - 1, 2**64, -(2**70), 10**30],
        "floats": [0.1, -0.0, 1e16, 1e-7, 5e-324, 1.7976931348623157e308, float("inf"),
                   float("-inf")],
        "nan": float("nan"),
        "text": "\x00\x1f\x7f\u2028\"\\é😀",
        "tuples": (1, (2, (3, [4, (5,)])), ()),
        "tag-like dict": {" t": [1, 2]},
        "tag-like key among others": {" t": [1], "x": 2},
        "str-subclass key": {Markup("k"): 1},
        "IntEnum": Level.HIGH,
        "bool in list": [True, False, 1, 0],
        "bytes": b"\x00\xff" * 3,
        "bytearray": bytearray(b"ab"),
        "zoneinfo datetime": datetime(2026, 11, 1, 1, 30, fold=1,
                                      tzinfo=ZoneInfo("America/New_York")),
        "date": date(2026, 2, 28),
        "uuid": UUID(int=1),
        "Markup": Markup("<b>x</b>"),
        "depth 100": nested,
        "empty": {"a": [], "b": {}, "c": ""},
        # Types asyncsessions may or may not store (kept only if it does, see below).
        "set": {3, 1, 2},
        "frozenset": frozenset({"a", "b"}),
        "Decimal": Decimal("3.14159265358979323846"),
    }


def _storable(values: dict[str, Any]) -> dict[str, Any]:
    """The values asyncsessions itself stores (its type list may grow)."""
    out = {}
    for name, value in values.items():
        try:
            std.dumps(value)
        except SerializationError:
            continue
        out[name] = value
    return out


def _expect(value: Any) -> Any:
    """What a value reads back as: asyncsessions' own round trip defines it."""
    return std.loads(std.dumps(value))


def check_exactness(codec: Codec) -> dict[str, Any]:
    """Round trips, byte-identical output, cross-reading with asyncsessions, refusals."""
    values = _storable({**typical_values(), **_edge_values()})
    mismatched: list[str] = []
    different_bytes: list[str] = []
    for name, value in values.items():
        expected = _expect(value)
        data = codec.dumps(value)
        ok = (_same(codec.loads(data), expected) and _same(std.loads(data), expected)
              and _same(codec.loads(std.dumps(value)), expected))
        if not ok:
            mismatched.append(name)
        if data != std.dumps(value):
            different_bytes.append(name)
    refused: list[str] = []
    too_deep: Any = []
    for _ in range(MAX_DEPTH):
        too_deep = [too_deep]
    for name, bad in (("lone surrogate", "\ud800"), ("depth 101", too_deep),
                      ("int key", {1: "x"}), ("object", object())):
        try:
            codec.dumps(bad)
        except SerializationError:
            continue
        refused.append(name)
    deep_text = b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)
    unread: list[str] = []
    for name, data in (("depth 101 text", deep_text), ("not JSON", b"\x80\x04pickle"),
                       ("truncated", b'{"a":[1,')):
        try:
            codec.loads(data)
        except ValueError:
            continue
        unread.append(name)
    spelled = [f"{std.dumps(f).decode()} → {codec.dumps(f).decode()}"
                for f in values["floats"] if codec.dumps(f) != std.dumps(f)]
    blob = std.join_fields({k: std.dumps(v) for k, v in values.items()})
    split_ok = (codec.split_fields(blob) == std.split_fields(blob)
                and not _split_refusals(codec))
    return {"values": len(values), "mismatched": mismatched, "different_bytes": different_bytes,
            "not_refused": refused, "not_rejected": unread, "split_identical": split_ok,
            "float_spellings": spelled}


# -- timing ---------------------------------------------------------------------------------


def _per_call(fn: Callable[[], Any], seconds: float) -> float:
    """Seconds per call: calls in 5 batches of ~seconds/10 each, the fastest batch (the
    machine is shared: the best batch is the one least disturbed)."""
    number = 1
    while True:
        started = time.perf_counter()
        for _ in range(number):
            fn()
        took = time.perf_counter() - started
        if took >= seconds / 10 or number >= 1 << 20:
            break
        number *= 4
    times = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - started) / number)
    return min(times)


def measure(*, quick: bool = False) -> dict[str, Any]:
    """Per-call times of every codec on the typical values and on a 200-field blob."""
    found, missing = codecs()
    seconds = 0.05 if quick else 0.2
    cases: list[tuple[str, str, Callable[[Codec], Callable[[], Any]]]] = []
    for name, value in typical_values().items():
        data = std.dumps(value)
        cases.append((name, f"dumps ({len(data)} B)", lambda c, v=value: lambda: c.dumps(v)))
        cases.append((name, "loads", lambda c, d=data: lambda: c.loads(d)))
    fields = {k: std.dumps(v) for k, v in scaling_session(200).items()}
    blob = std.join_fields(fields)
    whole = f"200-field session blob ({len(blob) / 1024:.0f} KiB)"
    cases.append((whole, "split_fields (memcached/cookie load)",
                  lambda c: lambda: c.split_fields(blob)))
    cases.append((whole, "join_fields (memcached write)",
                  lambda c: lambda: c.join_fields(fields)))
    session = scaling_session(200)
    cases.append(("200 fields, every one", "dumps each (a full rewrite)",
                  lambda c: lambda: [c.dumps(v) for v in session.values()]))
    raws = list(fields.values())
    cases.append(("200 fields, every one", "loads each (iterating the session)",
                  lambda c: lambda: [c.loads(r) for r in raws]))
    rows = []
    for value_name, op, make in cases:
        row: dict[str, Any] = {"value": value_name, "op": op, "us": {}}
        # Interleaved, three times, so a burst of load hits every codec alike.
        samples: dict[str, list[float]] = {c.name: [] for c in found}
        for _ in range(3):
            for codec in found:
                samples[codec.name].append(_per_call(make(codec), seconds))
        row["us"] = {k: min(v) * 1e6 for k, v in samples.items()}
        rows.append(row)
    return {"codecs": [c.name for c in found], "missing": missing, "rows": rows,
            "exactness": {c.name: check_exactness(c) for c in found[1:]},
            "versions": _versions()}


def _versions() -> dict[str, str]:
    import importlib.metadata

    out = {}
    for name in ("orjson", "msgspec"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def table(result: dict[str, Any]) -> list[str]:
    """Markdown lines of the measurement."""
    names = result["codecs"]
    base = names[0]
    header = "| value | operation | " + " | ".join(f"{n} µs" for n in names) + " |"
    lines = [header, "|---|---|" + "---|" * len(names)]
    for row in result["rows"]:
        us = row["us"]
        cells = [f"{us[base]:.1f}"] + [
            f"{us[n]:.1f} ({us[n] / us[base]:.2f}\u00d7)" for n in names[1:]
        ]
        lines.append(f"| {row['value']} | {row['op']} | " + " | ".join(cells) + " |")
    for name, check in result["exactness"].items():
        problems = []
        if check["mismatched"]:
            problems.append("round trip differs: " + ", ".join(check["mismatched"]))
        if check["not_refused"]:
            problems.append("not refused: " + ", ".join(check["not_refused"]))
        if check["not_rejected"]:
            problems.append("not rejected at load: " + ", ".join(check["not_rejected"]))
        if not check["split_identical"]:
            problems.append("split_fields differs")
        verdict = "; ".join(problems) or (
            f"all {check['values']} values round-trip with their exact types, read back by "
            "asyncsessions.serialization and vice versa; refusals and rejections the same"
        )
        diff = check["different_bytes"]
        lines.append("")
        lines.append(f"- **{name}**: {verdict}. Byte-identical to asyncsessions' output: "
                     + ("all values" if not diff else
                        f"all but {', '.join(diff)}, the same numbers spelled otherwise ("
                        + ", ".join(check["float_spellings"]) + ")") + ".")
    if result["missing"]:
        lines += ["", "- not measured: " + "; ".join(result["missing"])]
    return lines


def main() -> None:
    result = measure(quick="--quick" in sys.argv)
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    print(f"Python {sys.version.split()[0]}; {versions}")
    print("\n".join(table(result)))


if __name__ == "__main__":
    main()

