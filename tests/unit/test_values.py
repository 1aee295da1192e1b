"""Rows decoded when read: a change's `new`/`old` behave like the dict they
replace, load what psycopg loads, and never raise for a value psycopg
refuses."""

from __future__ import annotations

import datetime as dt
import logging
import pickle
import types
from collections.abc import ItemsView, ValuesView
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import adapters as global_adapters
from psycopg.adapt import AdaptersMap
from psycopg.types.datetime import DateLoader

from pgsupervisor.options import ReplicationOptions, coerce_replication
from pgsupervisor.replication import UNCHANGED_TOAST, DecodeError, RawValue
from pgsupervisor.replication.pgoutput import Assembler, Message, Transaction

from . import pgoutput_encoder as enc

INT4, INT8, TEXT, NUMERIC, DATE, JSONB, DATE_ARRAY, INT4_ARRAY = (
    23,
    20,
    25,
    1700,
    1082,
    3802,
    1182,
    1007,
)
COLS = [("id", INT8, True), ("n", NUMERIC, False), ("j", JSONB, False)]


def one_tx(a: Assembler, *messages: bytes) -> Transaction:
    a.feed(enc.begin(0x10, 0, 7))
    for m in messages:
        assert a.feed(m) is None
    tx = a.feed(enc.commit(0x10, 0x20, 0))
    assert isinstance(tx, Transaction)
    return tx


def inserted(values: list[Any], cols: list[tuple[str, int, bool]] = COLS) -> Any:
    a = Assembler()
    tx = one_tx(a, enc.relation(1, "s", "t", cols), enc.insert(1, values))
    return tx.changes[0].new


ROW = [b"1", b"12.50", b'{"k": [1]}']
EXPECTED = {"id": 1, "n": Decimal("12.50"), "j": {"k": [1]}}


def test_row_behaves_like_the_dict_of_its_values() -> None:
    row = inserted(ROW)
    assert row == EXPECTED and row == EXPECTED
    assert row != {**EXPECTED, "id": 2} and row != {"id": 1}
    assert row == types.MappingProxyType(EXPECTED)
    assert list(row) == ["id", "n", "j"] and len(row) == 3
    assert dict(row) == EXPECTED and dict(row.items()) == EXPECTED
    assert list(row.values()) == list(EXPECTED.values())
    assert list(row.keys()) == ["id", "n", "j"]
    assert "n" in row and "x" not in row
    assert row.get("x") is None and row.get("x", 5) == 5 and row.get("id") == 1
    assert repr(row) == repr(EXPECTED)
    assert {**row} == EXPECTED
    with pytest.raises(TypeError):
        hash(row)


@pytest.mark.parametrize("first", ["id", "n", "j"])
def test_one_column_then_all_give_the_same_values(first: str) -> None:
    row = inserted(ROW)
    assert row[first] == EXPECTED[first]
    assert row == EXPECTED


def test_a_mutable_value_is_the_same_object_on_every_read() -> None:
    row = inserted(ROW)
    doc = row["j"]
    doc["added"] = True
    assert row["j"] is doc and dict(row)["j"] is doc
    assert row["j"] == {"k": [1], "added": True}


def test_rows_compare_with_rows() -> None:
    assert inserted(ROW) == inserted(ROW)
    assert inserted(ROW) != inserted([b"2", b"12.50", b"{}"])


def test_missing_column_is_a_key_error() -> None:
    row = inserted(ROW)
    with pytest.raises(KeyError, match="nope"):
        row["nope"]
    dict(row)
    with pytest.raises(KeyError, match="nope"):
        row["nope"]


def test_pickled_change_comes_back_equal_with_plain_dicts() -> None:
    a = Assembler()
    tx = one_tx(
        a,
        enc.relation(1, "s", "t", COLS),
        enc.insert(1, ROW),
        enc.update(1, [b"2", None, "u"], [b"1", b"0", b"{}"], b"O"),
    )
    back = pickle.loads(pickle.dumps(tx))
    assert back.changes == tx.changes
    assert type(back.changes[0].new) is dict and back.changes[0].new == EXPECTED
    assert back.changes[1].new == {"id": 2, "n": None, "j": UNCHANGED_TOAST}
    assert back.changes[1].new["j"] is UNCHANGED_TOAST
    assert back.changes[1].old == {"id": 1, "n": Decimal(0), "j": {}}


def test_nulls_and_unchanged_toast_in_any_reading_order() -> None:
    values = [b"1", None, "u"]
    expected = {"id": 1, "n": None, "j": UNCHANGED_TOAST}
    assert inserted(values) == expected
    row = inserted(values)
    assert row["j"] is UNCHANGED_TOAST and row["n"] is None
    assert dict(row) == expected


def test_old_holds_the_key_columns_the_server_sent_and_nothing_else() -> None:
    a = Assembler()
    tx = one_tx(
        a,
        enc.relation(1, "s", "t", COLS),
        enc.delete(1, [b"1", None, None], b"K"),
        enc.update(1, [b"5", b"1", b"{}"], [b"4", None, None], b"K"),
        enc.update(1, [b"5", b"2", b"{}"]),
        enc.delete(1, [b"5", b"2", b"{}"], b"O"),
    )
    delete, key_update, plain_update, full_delete = tx.changes
    assert delete.old == {"id": 1} and delete.new is None
    assert "n" not in delete.old and len(delete.old) == 1
    with pytest.raises(KeyError):
        delete.old["n"]  # not sent: absent, never None
    assert key_update.old == {"id": 4}
    assert plain_update.old is None
    assert full_delete.old == {"id": 5, "n": Decimal(2), "j": {}}


def test_corrupt_tuple_surfaces_as_decode_error_on_access() -> None:
    good = enc.insert(1, ROW)
    # The last value claims more bytes than the message holds.
    bad = good[:-14] + (100).to_bytes(4, "big") + good[-10:]
    row = inserted_raw(bad)
    assert row["id"] == 1
    with pytest.raises(DecodeError, match="overruns"):
        dict(row)
    with pytest.raises(DecodeError, match="overruns"):
        row["j"]


def inserted_raw(message: bytes) -> Any:
    a = Assembler()
    return one_tx(a, enc.relation(1, "s", "t", COLS), message).changes[0].new


def test_column_count_is_checked_when_fed() -> None:
    a = Assembler()
    a.feed(enc.begin(1, 0, 1))
    a.feed(enc.relation(1, "s", "t", COLS))
    with pytest.raises(DecodeError, match="tuple has 2 columns, relation has 3"):
        a.feed(enc.insert(1, [b"1", b"2"]))


DATES = [("id", INT4, True), ("d", DATE, False), ("ds", DATE_ARRAY, False)]


def test_value_psycopg_refuses_is_a_raw_value_logged_once_per_column(
    caplog: pytest.LogCaptureFixture,
) -> None:
    a = Assembler()
    with caplog.at_level(logging.WARNING, logger="pgsupervisor"):
        tx = one_tx(
            a,
            enc.relation(1, "s", "t", DATES),
            enc.insert(1, [b"1", b"infinity", b"{2024-01-01,-infinity}"]),
            enc.insert(1, [b"2", b"-infinity", b"{}"]),
            enc.insert(1, [b"3", b"2024-02-29", b"{2024-02-29}"]),
        )
        first, second, third = (c.new for c in tx.changes)
        assert first == {
            "id": 1,
            "d": RawValue("infinity", DATE),
            "ds": RawValue("{2024-01-01,-infinity}", DATE_ARRAY),
        }
        assert second["d"] == RawValue("-infinity", DATE) and second["ds"] == []
        assert third == {
            "id": 3,
            "d": dt.date(2024, 2, 29),
            "ds": [dt.date(2024, 2, 29)],
        }
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2, warned
    assert "s.t.d" in warned[0] and "s.t.ds" in warned[1]
    assert "ReplicationOptions.adapters" in warned[0]


def test_raw_value_is_small_immutable_hashable_picklable() -> None:
    v = RawValue("24:00:00", 1083)
    assert repr(v) == "RawValue(text='24:00:00', type_oid=1083)"
    assert str(v) == "24:00:00"
    assert v == RawValue("24:00:00", 1083) and v != RawValue("24:00:00", 25)
    assert hash(v) == hash(RawValue("24:00:00", 1083))
    assert pickle.loads(pickle.dumps(v)) == v
    with pytest.raises(AttributeError):
        v.text = "x"  # type: ignore[misc]


class InfinityDateLoader(DateLoader):
    """psycopg's documented recipe: infinity as date.max/date.min."""

    def load(self, data: Any) -> dt.date:
        if data == b"infinity":
            return dt.date.max
        if data == b"-infinity":
            return dt.date.min
        return super().load(data)


def test_registered_loader_wins_for_values_arrays_and_rows() -> None:
    adapters = AdaptersMap(global_adapters)
    adapters.register_loader("date", InfinityDateLoader)
    a = Assembler(adapters)
    tx = one_tx(
        a,
        enc.relation(1, "s", "t", DATES),
        enc.insert(1, [b"1", b"infinity", b"{2024-01-01,-infinity}"]),
    )
    row = tx.changes[0].new
    assert row["d"] == dt.date.max
    assert row == {
        "id": 1,
        "d": dt.date.max,
        "ds": [dt.date(2024, 1, 1), dt.date.min],
    }


def test_domains_load_as_their_base_type_resolved_once() -> None:
    asked: list[set[int]] = []

    def resolve(oids: Any) -> dict[int, int]:
        asked.append(set(oids))
        return {90001: NUMERIC, 90002: JSONB}

    cols = [("id", INT4, True), ("price", 90001, False), ("doc", 90002, False)]
    a = Assembler(resolve_types=resolve)
    row = [b"1", b"9.90", b'{"a": 1}']
    tx = one_tx(a, enc.relation(1, "s", "t", cols), enc.insert(1, row))
    assert tx.changes[0].new == {"id": 1, "price": Decimal("9.90"), "doc": {"a": 1}}
    tx = one_tx(
        a,
        enc.relation(1, "s", "t", [*cols, ("other", 90003, False)]),
        enc.insert(1, [*row, b"{1,2}"]),
    )
    assert tx.changes[0].new["other"] == "{1,2}"  # not a domain: text, like SELECT
    assert asked == [{90001, 90002}, {90003}]


def test_non_transactional_message_is_returned_transactional_kept_in_order() -> None:
    a = Assembler()
    m = a.feed(enc.message("ping", b"\x00\x01", 0x42, transactional=False))
    assert isinstance(m, Message) and (m.prefix, m.content, m.lsn) == (
        "ping",
        b"\x00\x01",
        0x42,
    )
    tx = one_tx(a, enc.message("a", b"1", 0x11), enc.message("b", b"2", 0x12))
    assert tx.changes == [] and [x.prefix for x in tx.messages] == ["a", "b"]


def test_xlogdata_can_be_fed_whole() -> None:
    a = Assembler()
    header = b"w" + bytes(24)
    a.feed(header + enc.begin(1, 0, 3), 25)
    a.feed(header + enc.relation(1, "s", "t", COLS), 25)
    a.feed(header + enc.insert(1, ROW), 25)
    tx = a.feed(header + enc.commit(1, 2, 0), 25)
    assert isinstance(tx, Transaction) and tx.changes[0].new == EXPECTED


text_values = st.lists(
    st.one_of(st.none(), st.just("u"), st.text(max_size=30)), min_size=1, max_size=8
)


@given(values=text_values, order=st.lists(st.integers(0, 7), max_size=10))
def test_any_reading_order_gives_the_values_sent(
    values: list[str | None], order: list[int]
) -> None:
    cols = [(f"c{i}", TEXT, i == 0) for i in range(len(values))]
    sent = [
        None if v is None else "u" if v == "u" else v.encode("utf-8") for v in values
    ]
    row = inserted(sent, cols)
    expected = {
        f"c{i}": UNCHANGED_TOAST if v == "u" else v for i, v in enumerate(values)
    }
    for i in order:
        if i < len(values):
            assert row[f"c{i}"] == expected[f"c{i}"]
    assert row == expected
    assert pickle.loads(pickle.dumps(row)) == expected


def test_replication_option_adapters_takes_an_adapters_map() -> None:
    adapters = AdaptersMap(global_adapters)
    options = coerce_replication({"slot_name": "s", "adapters": adapters})
    assert options is not None and options.adapters is adapters
    assert ReplicationOptions("s").adapters is None
    with pytest.raises(TypeError, match="'adapters' must be a psycopg AdaptersMap"):
        ReplicationOptions("s", adapters={"date": InfinityDateLoader})  # type: ignore[arg-type]


def test_a_value_overrunning_mid_tuple_is_a_decode_error() -> None:
    good = enc.insert(1, ROW)
    # The first value claims the bytes of the ones after it, and more.
    bad = good[:9] + (40).to_bytes(4, "big") + good[13:]
    with pytest.raises(DecodeError, match="overruns"):
        dict(inserted_raw(bad))


def test_a_negative_value_length_is_a_decode_error() -> None:
    good = enc.insert(1, ROW)
    bad = good[:9] + (-1).to_bytes(4, "big", signed=True) + good[13:]
    with pytest.raises(DecodeError, match="negative value length"):
        list(inserted_raw(bad).values())
    with pytest.raises(DecodeError, match=r"-1 bytes .* overruns"):
        dict(inserted_raw(bad))


def test_bytes_after_the_tuple_are_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="1 unexpected bytes after the tuple"):
        list(inserted_raw(enc.insert(1, ROW) + b"x").values())


@pytest.mark.parametrize("width", [0, 1, 400])
def test_any_width_loads_every_value(width: int) -> None:
    cols = [(f"c{i}", INT4, i == 0) for i in range(width)]
    row = inserted([str(i).encode() for i in range(width)], cols)
    assert dict(row) == {f"c{i}": i for i in range(width)}
    assert list(row.values()) == list(range(width))


def test_a_value_read_before_all_is_the_one_kept() -> None:
    row = inserted(ROW)
    doc = row["j"]
    assert list(row.items()) == [("id", 1), ("n", Decimal("12.50")), ("j", doc)]
    assert row["j"] is doc and next(iter(reversed(row.values()))) is doc


def test_relations_of_the_same_width_keep_their_own_names_and_loaders() -> None:
    a = Assembler()
    tx = one_tx(
        a,
        enc.relation(1, "s", "t", COLS),
        enc.relation(
            2, "s", "u", [("a", TEXT, True), ("b", INT4, False), ("id", INT8, False)]
        ),
        enc.insert(1, ROW),
        enc.insert(2, [b"12", b"34", b"5"]),
    )
    assert [dict(c.new) for c in tx.changes] == [
        EXPECTED,
        {"a": "12", "b": 34, "id": 5},
    ]


def test_value_tuples_equal_the_mapping_or_are_refused() -> None:
    """`Row._loaded` (what tenant shapes hold) gives the mapping's values in
    column order, for a tuple still in its message, an old row split when
    fed, and NULLs; it refuses unchanged TOAST values and unloadable ones."""
    a = Assembler()
    tx = one_tx(
        a,
        enc.relation(1, "s", "t", COLS),
        enc.insert(1, ROW),
        enc.insert(1, [b"2", None, b"[]"]),
        enc.update(1, [b"3", b"7", "u"], [b"3", b"6", b'{"a": 1}'], b"O"),
        enc.delete(1, [b"4", None, b"null"], b"O"),
    )
    full, nulls, update, delete = tx.changes
    assert nulls.new._loaded() == (2, None, [])
    for row in (full.new, nulls.new, update.old, delete.old):
        assert row._loaded() == tuple(dict(row).values())
    assert full.new._loaded() is None  # decoded as a mapping now: use it
    assert update.new._loaded() is None  # "u": unchanged TOAST
    assert update.new["j"] is UNCHANGED_TOAST
    bad = inserted([b"1", b"not a number", b"{}"])
    assert bad._loaded() is None
    assert isinstance(bad["n"], RawValue)


@pytest.mark.parametrize("view", ["values", "items"])
def test_views_read_first_behave_as_a_dicts_views(view: str) -> None:
    """values() and items() of a row not read yet load it in one go (no
    dict); what follows behaves as on the dict of its values."""
    expected = getattr(EXPECTED, view)()
    row = inserted(ROW)
    got = getattr(row, view)()
    assert isinstance(got, ValuesView if view == "values" else ItemsView)
    assert list(got) == list(expected) and len(got) == 3
    assert list(reversed(got)) == list(reversed(expected))
    if view == "items":
        assert got == expected and expected == got
        assert ("n", Decimal("12.50")) in got and ("n", 0) not in got
    else:
        assert Decimal("12.50") in got and 99 not in got
    doc = row["j"]
    doc["added"] = True  # the same object, whichever way it is read next
    assert list(row.values())[2] is doc and dict(row)["j"] is doc
    assert row == {**EXPECTED, "j": {"k": [1], "added": True}}
    assert pickle.loads(pickle.dumps(row)) == dict(row)
    with pytest.raises(KeyError, match="nope"):
        row["nope"]


def test_views_of_a_row_with_nulls_or_unchanged_toast_give_its_values() -> None:
    for raw, expected in (
        ([b"1", None, b"{}"], {"id": 1, "n": None, "j": {}}),
        ([b"1", b"2", "u"], {"id": 1, "n": Decimal(2), "j": UNCHANGED_TOAST}),
    ):
        assert list(inserted(raw).values()) == list(expected.values())
        assert dict(inserted(raw).items()) == expected
