"""Tagged JSON for session values: Flask's types round-trip exactly, and nothing is unpickled.

Each top-level session field is serialized on its own to UTF-8 JSON text, which is what the
stores hold and what the engine compares to find changed fields. Types JSON lacks are wrapped
in a one-key object whose key starts with a space (as Flask's tagged JSON does), so plain
dicts can never be mistaken for tags. Unlike Flask's cookie serializer, datetimes keep their
microseconds and their tzinfo, or their lack of one.

On the standard library's C encoder and decoder, not orjson or msgspec: measured in
``benchmarks/serializer.py``, they are faster on whole sessions, but a request decodes only
the fields it reads, plain values skip the tag walks here, and neither keeps tuples, sets
or tagged types apart without a Python walk of its own: not worth a core dependency.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

from markupsafe import Markup

__all__ = ["MAX_DEPTH", "SerializationError", "dumps", "join_fields", "loads", "split_fields"]


class SerializationError(TypeError):
    """A session value has a type that cannot be stored."""


try:
    from zoneinfo import ZoneInfo
except ImportError:  # pragma: no cover - Python 3.10 always has zoneinfo
    ZoneInfo = None  # type: ignore[assignment,misc]


def _tz_out(tz: Any) -> Any:
    if tz is None:
        return None
    if ZoneInfo is not None and isinstance(tz, ZoneInfo) and tz.key:
        return tz.key
    if tz is timezone.utc:
        return "UTC"
    offset = tz.utcoffset(None)
    if isinstance(tz, timezone) and offset is not None:
        return offset.total_seconds()
    raise SerializationError(f"cannot store a datetime with tzinfo {tz!r}")


def _tz_in(tag: Any) -> Any:
    if tag is None:
        return None
    if tag == "UTC":
        return timezone.utc
    if isinstance(tag, str):
        return ZoneInfo(tag)
    return timezone(timedelta(seconds=tag))


def _dt_out(value: datetime) -> list[Any]:
    # The wall time without offset plus a separate zone keeps ZoneInfo zones (and their DST
    # fold) intact instead of collapsing them into fixed offsets.
    return [value.replace(tzinfo=None).isoformat(), _tz_out(value.tzinfo), value.fold]


def _dt_in(raw: list[Any]) -> datetime:
    wall, tz, fold = raw
    return datetime.fromisoformat(wall).replace(tzinfo=_tz_in(tz), fold=fold)


def _time_out(value: time) -> list[Any]:
    return [value.replace(tzinfo=None).isoformat(), _tz_out(value.tzinfo), value.fold]


def _time_in(raw: list[Any]) -> time:
    wall, tz, fold = raw
    return time.fromisoformat(wall).replace(tzinfo=_tz_in(tz), fold=fold)


#: How deeply lists, dicts and tuples may nest in one value, at save and at load alike, so
#: that whatever saves also loads (and a cyclic value fails clearly, not with RecursionError).
MAX_DEPTH = 100


def _tag(value: Any, depth: int = 0) -> Any:
    # Exact type checks first: they are the common case and bool must not pass as int.
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        if value != value or value in (float("inf"), float("-inf")):
            return {" f": repr(value)}
        return value
    if kind is dict or kind is list or kind is tuple:
        depth += 1
        if depth > MAX_DEPTH:
            raise SerializationError(
                f"cannot store a value nested more than {MAX_DEPTH} levels deep"
            )
        if kind is list:
            return [_tag(item, depth) for item in value]
        if kind is tuple:
            return {" t": [_tag(item, depth) for item in value]}
        if len(value) == 1:
            (key,) = value
            if isinstance(key, str) and key.startswith(" "):
                return {" di": {key: _tag(value[key], depth)}}
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise SerializationError(f"session dict keys must be str, not {type(key)!r}")
            out[key] = _tag(item, depth)
        return out
    if kind is bytes:
        return {" b": base64.b64encode(value).decode("ascii")}
    if kind is Markup or (hasattr(value, "__html__") and isinstance(value, str)):
        return {" m": str(value.__html__())}
    if kind is datetime:
        return {" d": _dt_out(value)}
    if kind is date:
        return {" dd": value.isoformat()}
    if kind is time:
        return {" tm": _time_out(value)}
    if kind is UUID:
        return {" u": value.hex}
    if kind is Decimal:
        return {" n": str(value)}
    if kind is set or kind is frozenset:
        depth += 1
        if depth > MAX_DEPTH:
            raise SerializationError(
                f"cannot store a value nested more than {MAX_DEPTH} levels deep"
            )
        # Sorted by their JSON form: a set iterates in an order that differs between
        # processes, and an unchanged set must serialize to the same bytes to count unchanged.
        items = sorted((_tag(item, depth) for item in value), key=_encoder.encode)
        return {" s" if kind is set else " fs": items}
    # Subclasses of the plain types (e.g. an IntEnum, an OrderedDict) store as their base.
    for base, convert in _BASES:
        if isinstance(value, base):
            return _tag(convert(value), depth)
    raise SerializationError(
        f"cannot store a value of type {kind.__qualname__!r} in the session; "
        "use str, int, float, bool, None, list, dict, tuple, set, frozenset, bytes, Decimal, "
        "datetime, date, time, UUID or Markup"
    )


_BASES: tuple[tuple[type, Callable[[Any], Any]], ...] = (
    (bool, bool),
    (int, int),
    (float, float),
    (str, str),
    (dict, dict),
    (list, list),
    (tuple, tuple),
    (bytes, bytes),
    (bytearray, bytes),
    (set, set),
    (frozenset, frozenset),
    (Decimal, lambda v: Decimal(str(v))),
    (datetime, lambda v: datetime.combine(v.date(), v.timetz()).replace(fold=v.fold)),
    (date, lambda v: date(v.year, v.month, v.day)),
)

_UNTAG: dict[str, Callable[[Any], Any]] = {
    " b": lambda v: base64.b64decode(v, validate=True),
    " m": Markup,
    " d": _dt_in,
    " dd": date.fromisoformat,
    " tm": _time_in,
    " u": UUID,
    " f": float,
    " n": lambda v: Decimal(v) if type(v) is str else _not_a_value(v),
}


def _not_a_value(value: Any) -> Any:
    raise ValueError(f"not a serialized session value: {value!r}")


def _untag(value: Any, depth: int = 0) -> Any:
    kind = type(value)
    if kind is not dict and kind is not list:
        return value
    depth += 1
    if depth > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    if kind is list:
        return [_untag(item, depth) for item in value]
    if len(value) == 1:
        (key,) = value
        if key == " t":
            return tuple(_untag(item, depth) for item in value[key])
        if key == " di":
            return {k: _untag(item, depth) for k, item in value[key].items()}
        if key == " s":
            return {_untag(item, depth) for item in value[key]}
        if key == " fs":
            return frozenset(_untag(item, depth) for item in value[key])
        convert = _UNTAG.get(key)
        if convert is not None:
            return convert(value[key])
    return {key: _untag(item, depth) for key, item in value.items()}


_INF = (float("inf"), float("-inf"))


def _untagged(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is JSON as it is, needing no tag (and nested not too deep).

    Checked without copying, so the encoder can write such a value (the usual one) straight
    away; ``_tag`` would rebuild it first. A cyclic value is too deep, hence False.
    """
    kind = type(value)
    if kind is dict or kind is list:
        if depth >= MAX_DEPTH:
            return False
        if kind is dict:
            for key in value:
                if type(key) is not str:
                    return False
            if len(value) == 1 and next(iter(value))[:1] == " ":
                return False  # a key that looks like a tag: escaped by _tag
            value = value.values()
        for item in value:
            kind = type(item)
            if kind is str or kind is int or kind is bool or item is None:
                continue
            if kind is float:
                if item != item or item in _INF:
                    return False
            elif not _untagged(item, depth + 1):
                return False
        return True
    if kind is float:
        return value == value and value not in _INF
    return kind is str or kind is int or kind is bool or value is None


_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=True)
# The encoder JSONEncoder.encode builds anew at every call, built once. No cycle check:
# what it is given is acyclic (nested at most MAX_DEPTH deep, checked before).
_encode_chunks = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, _encoder.default, json.encoder.encode_basestring,
    None, ":", ",", False, False, True,
) if json.encoder.c_make_encoder is not None else None  # type: ignore[attr-defined]


def _encode(value: Any) -> str:
    if _encode_chunks is None:  # pragma: no cover - CPython always has the C encoder
        return _encoder.encode(value)
    return "".join(_encode_chunks(value, 0))


def dumps(value: Any) -> bytes:
    """Serialize one session value to UTF-8 JSON text."""
    try:
        return _encode(value if _untagged(value) else _tag(value)).encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate has no UTF-8 form
        raise SerializationError(f"cannot store text that is not valid Unicode: {exc}") from exc


def loads(data: bytes | str) -> Any:
    """The value :func:`dumps` serialized; ``ValueError`` if ``data`` is not such text."""
    plain = _plain_text(data)
    if plain is not None:
        # No tag and too few brackets to nest too deep: the untag walk would only copy what
        # the decoder made (it was half the time of a 1 KB field's load).
        return _plain_decode(plain)
    try:
        return _untag(json.loads(data))
    except (TypeError, KeyError, AttributeError, ArithmeticError, RecursionError) as exc:
        raise ValueError(f"not a serialized session value: {exc}") from exc


_plain_decode = json.JSONDecoder().decode


def _plain_text(data: bytes | str) -> str | None:
    """``data`` as text if it holds no tag and cannot nest past MAX_DEPTH, else None.

    Every tag is an object key starting with a space, which the text spells ``" `` or
    ``"\\u0020``. Bytes count as UTF-8 only where ``json.loads`` would read them so (no BOM,
    no NUL among the first two bytes, by which it detects UTF-16 and UTF-32).
    """
    if type(data) is bytes:
        if not b"\x00" < data[:1] < b"\x80" or data[1:2] == b"\x00":
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
    elif type(data) is str:
        text = data
    else:
        return None
    if '" ' in text or "\\u0020" in text or text.count("{") + text.count("[") > MAX_DEPTH:
        return None
    return text


def join_fields(fields: Mapping[str, bytes]) -> bytes:
    """One JSON object holding already serialized fields, without re-encoding them."""
    parts = (dumps(k) + b":" + v for k, v in fields.items())
    return b"{" + b",".join(parts) + b"}"


# The stdlib's C scanner: (value, end offset) of the JSON value at an offset.
_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_whitespace = re.compile(r"[ \t\n\r]*")  # JSON's; it always matches, if only nothing
_scanstring = json.decoder.scanstring  # type: ignore[attr-defined]


def split_fields(data: bytes | str) -> dict[str, bytes]:
    """The serialized fields of a :func:`join_fields` object; ``ValueError`` if it is not one.

    Each field's text is sliced out where the scanner says its value ends: checked (it is
    parsed) but not encoded again, which took more than half the time of a 200-field split.
    The slice is the very bytes :func:`dumps` wrote when :func:`join_fields` made the object.
    """
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    try:
        return _split(text)
    except RecursionError as exc:
        raise ValueError("not a serialized session: nested too deeply") from exc
    except StopIteration:  # what the scanner raises where no value starts
        raise ValueError("not a serialized session: a field without a value") from None


def _space(text: str, at: int) -> int:
    """Where the whitespace at ``at`` ends."""
    return _whitespace.match(text, at).end()  # type: ignore[union-attr]


def _split(text: str) -> dict[str, bytes]:
    fields: dict[str, bytes] = {}
    at = _space(text, 0)
    if text[at:at + 1] != "{":
        raise ValueError("not a serialized session")
    at = _space(text, at + 1)
    if text[at:at + 1] == "}":
        at += 1
    else:
        while True:
            if text[at:at + 1] != '"':
                raise ValueError("not a serialized session: a name that is no string")
            name, at = _scanstring(text, at + 1)
            at = _space(text, at)
            if text[at:at + 1] != ":":
                raise ValueError("not a serialized session: a name without a value")
            start = _space(text, at + 1)
            _, at = _scan(text, start)
            fields[name] = text[start:at].encode("utf-8")
            at = _space(text, at)
            end = text[at:at + 1]
            at = _space(text, at + 1)
            if end == "}":
                break
            if end != ",":
                raise ValueError("not a serialized session: fields not separated by commas")
    if _space(text, at) != len(text):
        raise ValueError("not a serialized session: text after the object")
    return fields
