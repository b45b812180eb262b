"""Session values survive the round trip exactly, and stored bytes are never unpickled."""

from __future__ import annotations

import enum
import pickle
import uuid
from collections import OrderedDict
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from markupsafe import Markup

from asyncsessions.serialization import SerializationError, dumps, join_fields, loads, split_fields

EXACT = [
    "text", "", "ünïcødé ✓", 0, -1, 2**70, 1.5, True, False, None,
    [1, [2, [3]]], {"a": {"b": [1]}}, (1, (2, "x")), (), b"\x00\x01\xff", b"",
    uuid.uuid4(), Markup("<b>safe</b>"),
    datetime(2026, 11, 21, 23, 59, 59, 999999),
    datetime(2026, 11, 21, 12, 0, 0, 123456, tzinfo=timezone.utc),
    datetime(2026, 3, 29, 2, 30, tzinfo=ZoneInfo("Europe/Paris")),
    datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=ZoneInfo("Europe/Paris")),
    datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    date(2026, 2, 28), time(12, 30, 1, 5), time(1, 2, tzinfo=timezone.utc),
    {" t": "a dict that looks like a tag"}, {" di": 1}, float("inf"),
]


@pytest.mark.parametrize("value", EXACT, ids=repr)
def test_exact_round_trip(value: Any) -> None:
    back = loads(dumps(value))
    assert back == value
    assert type(back) is type(value)
    if isinstance(value, (datetime, time)):
        assert back.tzinfo == value.tzinfo
        assert back.fold == value.fold


def test_nan_round_trips() -> None:
    back = loads(dumps(float("nan")))
    assert back != back


def test_flask_serializer_loses_what_we_keep() -> None:
    from flask.json.tag import TaggedJSONSerializer

    naive = datetime(2026, 1, 1, 12, 0, 0, 123456)
    flask_back = TaggedJSONSerializer().loads(TaggedJSONSerializer().dumps({"d": naive}))["d"]
    assert flask_back != naive  # Flask: aware UTC, no microseconds
    assert loads(dumps(naive)) == naive


def test_subclasses_store_as_their_base() -> None:
    class Color(enum.IntEnum):
        RED = 1

    assert loads(dumps(Color.RED)) == 1
    assert loads(dumps(OrderedDict(a=1))) == {"a": 1}


def test_unsupported_type_is_a_clear_error() -> None:
    with pytest.raises(SerializationError, match="object"):
        dumps(object())
    with pytest.raises(SerializationError, match="keys must be str"):
        dumps({1: "x"})


def test_pickle_is_never_executed() -> None:
    class Boom:
        def __reduce__(self) -> Any:
            return (pytest.fail, ("unpickled!",))

    with pytest.raises(ValueError):
        loads(pickle.dumps(Boom()))


def test_garbage_is_a_value_error() -> None:
    for junk in (b"", b"{", b"\xff\xfe", b"[1,", b"nul"):
        with pytest.raises(ValueError):
            loads(junk)


def test_join_and_split() -> None:
    fields = {"a": dumps((1, 2)), "b": dumps({"x": b"y"}), "c d": dumps(None)}
    assert split_fields(join_fields(fields)) == fields
    with pytest.raises(ValueError):
        split_fields(b"[1]")


def test_split_gives_each_fields_own_text_and_refuses_what_is_no_object_of_fields() -> None:
    fields = {"é\n": dumps({"ü": [1.5, None, "\u2028"]}), "": dumps("x"), "z": dumps(b"\0")}
    blob = join_fields(fields)
    assert split_fields(blob) == fields
    assert split_fields(blob.decode()) == fields
    assert split_fields(b' { "a" : 1 , "b":[1, 2] }\n') == {"a": b"1", "b": b"[1, 2]"}
    assert split_fields(b"{}") == {}
    junk = [b"", b"{", b'{"a"}', b'{"a":}', b'{"a":1,}', b'{"a":1 "b":2}', b'{"a":1}x',
            b"[1]", b"\xff", b"{1:2}", b'{"a":nul}', b'{"a":' + b"[" * 100_000 + b"}"]
    for data in junk:
        with pytest.raises(ValueError):
            split_fields(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    | st.binary() | st.uuids() | st.datetimes(timezones=st.none() | st.timezones()),
    lambda children: st.lists(children) | st.tuples(children, children)
    | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(json_values)
def test_property_round_trip(value: Any) -> None:
    assert dumps(loads(dumps(value))) == dumps(value)
    assert loads(dumps(value)) == value


def test_lone_surrogates_are_a_clear_error() -> None:
    with pytest.raises(SerializationError, match="not valid Unicode"):
        dumps("\ud800")
    with pytest.raises(SerializationError, match="not valid Unicode"):
        join_fields({"\ud800": dumps(1)})


def test_one_depth_limit_for_saving_and_loading() -> None:
    from asyncsessions.serialization import MAX_DEPTH

    value: Any = 0
    for level in range(MAX_DEPTH):  # lists, dicts and tuples all count as a level
        value = ([value], {"k": value}, (value,))[level % 3]
    assert loads(dumps(value)) == value
    with pytest.raises(SerializationError, match="nested more than"):
        dumps([value])
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(SerializationError, match="nested more than"):
        dumps(cyclic)
    # Stored by something else, or by an older release: unreadable, never a RecursionError.
    with pytest.raises(ValueError, match="nested more than"):
        loads(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    with pytest.raises(ValueError):
        loads(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize("value", [
    Decimal("1.10"), Decimal("-0"), Decimal("NaN"), Decimal("1E+400"),
    {"a", "b", 3, (1, 2)}, frozenset({1, "x"}), set(), frozenset(),
    {"nested": [{frozenset({Decimal("2.5")})}]},
])
def test_decimal_and_sets_round_trip_exactly(value: Any) -> None:
    back = loads(dumps(value))
    assert type(back) is type(value)
    if isinstance(value, Decimal):  # NaN is not equal to itself; 1.10 keeps its zero, -0 its sign
        assert str(back) == str(value)
    else:
        assert back == value


def test_a_set_serializes_the_same_whatever_its_iteration_order() -> None:
    words = [f"w{i}" for i in range(50)]
    assert dumps(set(words)) == dumps(set(reversed(words)))


@pytest.mark.parametrize("raw", [b'{" n": 5}', b'{" n": "not a number"}', b'{" s": [[1]]}'])
def test_damaged_decimal_or_set_is_unreadable(raw: bytes) -> None:
    with pytest.raises(ValueError):
        loads(raw)


@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"\\u0020t":[1,2]}', (1, 2)),  # a tag key spelled with an escape is still a tag
    (b'{"a": {" z": "x"}}', {"a": {" z": "x"}}),  # no tag of ours: a plain dict
    ('{"k":[1,{"x":null}]}'.encode("utf-16"), {"k": [1, {"x": None}]}),  # json.loads' UTF-16
    ("[1]".encode("utf-16-le"), [1]),
    (b"\xef\xbb\xbf[1]", [1]),  # a UTF-8 BOM, which json.loads skips in bytes
    (b'{"a":[1,2.5,true,null,"\\u00e9"]}', {"a": [1, 2.5, True, None, "é"]}),
])
def test_text_not_written_by_dumps_reads_as_json_loads_reads_it(raw: bytes, expected: Any) -> None:
    # Records left by other writers: untagged text takes a shortcut, which must agree.
    assert loads(raw) == expected
    assert type(loads(raw)) is type(expected)
    assert loads(raw.decode("utf-16") if raw[:2] == b"\xff\xfe" else raw) == expected


@given(json_values)
def test_plain_and_tagged_text_read_alike_as_bytes_and_str(value: Any) -> None:
    raw = dumps(value)
    assert dumps(loads(raw.decode("utf-8"))) == dumps(loads(raw)) == raw


@pytest.mark.parametrize(("value", "stored"), [
    ({"n": 1, "f": -0.0, "ok": True, "none": None, "s": "é\n", "l": [1, [2]]},
     b'{"n":1,"f":-0.0,"ok":true,"none":null,"s":"\xc3\xa9\\n","l":[1,[2]]}'),
    ({" k": 1}, b'{" di":{" k":1}}'),
    ({"t": (1, 2), "nan": float("nan")}, b'{"t":{" t":[1,2]},"nan":{" f":"nan"}}'),
    (OrderedDict(a=1), b'{"a":1}'),
    ([Markup("<b>")], b'[{" m":"<b>"}]'),
    (1.5, b"1.5"),
    ("x", b'"x"'),
])
def test_stored_text_is_stable(value: Any, stored: bytes) -> None:
    # What earlier releases stored must compare equal to what this one writes for the same
    # value, or every request would rewrite every field it reads.
    assert dumps(value) == stored
