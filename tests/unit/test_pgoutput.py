"""The pgoutput decoder against an encoder written from the protocol docs:
round trips (hypothesis), typed values, streaming, and garbage."""

from __future__ import annotations

import contextlib
import datetime as dt
import struct
import uuid
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgsupervisor.replication.lsn import format_lsn, parse_lsn
from pgsupervisor.replication.pgoutput import (
    UNCHANGED_TOAST,
    Assembler,
    DecodeError,
    Insert,
    Relation,
    StreamAbort,
    Update,
    decode,
    pg_timestamp,
)

from . import pgoutput_encoder as enc

INT4, TEXT, NUMERIC, BOOL, JSONB, TSTZ, UUID, INT4_ARRAY = (
    23,
    25,
    1700,
    16,
    3802,
    1184,
    2950,
    1007,
)
COLS = [("id", INT4, True), ("name", TEXT, False)]

values_st = st.lists(
    st.one_of(st.none(), st.just("u"), st.binary(max_size=40)), max_size=12
)


@given(
    oid=st.integers(0, 2**32 - 1),
    new=values_st,
    old=st.one_of(st.none(), values_st),
    old_kind=st.sampled_from([b"K", b"O"]),
    xid=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)
def test_update_round_trips(oid, new, old, old_kind, xid) -> None:
    m = decode(enc.update(oid, new, old, old_kind, xid), in_stream=xid is not None)
    assert isinstance(m, Update)
    assert m.relation_oid == oid and m.xid == xid
    as_raw = lambda vs: [  # noqa: E731
        (ord("n"), None)
        if v is None
        else (ord("u"), None)
        if v == "u"
        else (ord("t"), v)
        for v in vs
    ]
    assert m.new == as_raw(new)
    assert m.old == (None if old is None else as_raw(old))
    assert m.old_kind == (None if old is None else old_kind.decode())


@given(
    oid=st.integers(0, 2**32 - 1),
    schema=st.text(
        st.characters(blacklist_characters="\0", codec="utf-8"), max_size=20
    ),
    name=st.text(
        st.characters(blacklist_characters="\0", codec="utf-8"), min_size=1, max_size=20
    ),
    columns=st.lists(
        st.tuples(
            st.text(
                st.characters(blacklist_characters="\0", codec="utf-8"),
                min_size=1,
                max_size=10,
            ),
            st.integers(0, 2**32 - 1),
            st.booleans(),
        ),
        max_size=10,
    ),
)
def test_relation_round_trips(oid, schema, name, columns) -> None:
    m = decode(enc.relation(oid, schema, name, columns))
    assert isinstance(m, Relation)
    assert (m.oid, m.schema, m.name) == (oid, schema, name)
    assert [(c.name, c.type_oid, c.is_key) for c in m.columns] == columns


@settings(max_examples=300)
@given(data=st.binary(max_size=64))
def test_garbage_raises_decode_error_only(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(data)


@settings(max_examples=300)
@given(cut=st.integers(0, 60), in_stream=st.booleans())
def test_truncated_messages_name_type_and_offset(cut: int, in_stream: bool) -> None:
    xid = 7 if in_stream else None
    full = enc.update(16384, [b"1", None, "u", b"text"], [b"1"], b"K", xid)
    if cut >= len(full):
        return
    with pytest.raises(
        DecodeError, match=r"(malformed Update message at offset \d+|empty)"
    ):
        decode(full[:cut], in_stream=in_stream)


def test_trailing_bytes_are_an_error() -> None:
    with pytest.raises(
        DecodeError, match="Commit message has 1 unexpected trailing bytes"
    ):
        decode(enc.commit(1, 2, 3) + b"x")


def test_unknown_message_type() -> None:
    with pytest.raises(DecodeError, match="unknown b'Z'"):
        decode(b"Z123")


def test_typed_values_through_psycopg_loaders() -> None:
    a = Assembler()
    cols = [
        ("i", INT4, True),
        ("n", NUMERIC, False),
        ("b", BOOL, False),
        ("j", JSONB, False),
        ("t", TSTZ, False),
        ("u", UUID, False),
        ("arr", INT4_ARRAY, False),
        ("nul", TEXT, False),
        ("toast", TEXT, False),
    ]
    a.feed(enc.begin(100, 0, 5))
    a.feed(enc.relation(1, "public", "t", cols))
    u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    a.feed(
        enc.insert(
            1,
            [
                b"42",
                b"12.50",
                b"t",
                b'{"k": [1, null]}',
                b"2024-05-01 12:00:00+02",
                u.encode(),
                b"{1,NULL,3}",
                None,
                "u",
            ],
        )
    )
    tx = a.feed(enc.commit(100, 120, 0))
    assert tx is not None
    row = tx.changes[0].new
    assert row == {
        "i": 42,
        "n": Decimal("12.50"),
        "b": True,
        "j": {"k": [1, None]},
        "t": dt.datetime(2024, 5, 1, 10, tzinfo=dt.timezone.utc),
        "u": uuid.UUID(u),
        "arr": [1, None, 3],
        "nul": None,
        "toast": UNCHANGED_TOAST,
    }
    assert row["t"].tzinfo is not None
    assert repr(UNCHANGED_TOAST) == "UNCHANGED_TOAST"


def test_plain_transaction_in_order_with_all_ops() -> None:
    a = Assembler()
    assert a.feed(enc.begin(0x300, 1_000_000, 9)) is None
    assert a.in_progress
    a.feed(enc.origin(0x300, "upstream"))
    a.feed(enc.relation(16384, "public", "items", COLS))
    a.feed(enc.insert(16384, [b"1", b"a"]))
    a.feed(enc.update(16384, [b"1", b"b"], [b"1", b"a"], b"O"))
    a.feed(enc.update(16384, [b"1", b"c"]))
    a.feed(enc.delete(16384, [b"1", None], b"K"))
    a.feed(enc.truncate([16384], options=1))
    a.feed(enc.message("audit", b"hello", 0x2FF))
    tx = a.feed(enc.commit(0x300, 0x320, 1_000_000))
    assert tx is not None and not a.in_progress
    assert (tx.xid, tx.commit_lsn, tx.end_lsn, tx.origin) == (
        9,
        0x300,
        0x320,
        "upstream",
    )
    assert tx.commit_time == dt.datetime(2000, 1, 1, 0, 0, 1, tzinfo=dt.timezone.utc)
    assert [c.op for c in tx.changes] == [
        "insert",
        "update",
        "update",
        "delete",
        "truncate",
    ]
    assert tx.changes[1].old == {"id": 1, "name": "a"} and tx.changes[2].old is None
    assert tx.changes[3].new is None and tx.changes[3].old == {"id": 1}  # key only
    assert (tx.changes[4].schema, tx.changes[4].table) == ("public", "items")
    assert tx.messages[0].prefix == "audit" and tx.messages[0].content == b"hello"


def test_relation_message_replaces_the_cached_columns() -> None:
    a = Assembler()
    a.feed(enc.begin(1, 0, 1))
    a.feed(enc.relation(5, "s", "t", COLS))
    a.feed(enc.insert(5, [b"1", b"x"]))
    a.feed(enc.relation(5, "s", "t", [*COLS, ("extra", INT4, False)]))
    a.feed(enc.insert(5, [b"2", b"y", b"3"]))
    tx = a.feed(enc.commit(1, 2, 0))
    assert tx is not None
    assert [c.new for c in tx.changes] == [
        {"id": 1, "name": "x"},
        {"id": 2, "name": "y", "extra": 3},
    ]


def test_change_for_unknown_relation_is_a_decode_error() -> None:
    a = Assembler()
    a.feed(enc.begin(1, 0, 1))
    with pytest.raises(DecodeError, match="relation 77 before its Relation"):
        a.feed(enc.insert(77, [b"1"]))


def test_column_count_mismatch_is_a_decode_error() -> None:
    a = Assembler()
    a.feed(enc.begin(1, 0, 1))
    a.feed(enc.relation(5, "s", "t", COLS))
    with pytest.raises(DecodeError, match="tuple has 1 columns, relation has 2"):
        a.feed(enc.insert(5, [b"1"]))


def test_streamed_transaction_assembled_across_blocks_with_subxact_abort() -> None:
    a = Assembler(proto_version=2)
    a.feed(enc.stream_start(700, first=True))
    a.feed(enc.relation(5, "s", "t", COLS, xid=700))
    a.feed(enc.insert(5, [b"1", b"top"], xid=700))
    a.feed(enc.insert(5, [b"2", b"sub"], xid=701))
    a.feed(enc.stream_stop())
    # an ordinary transaction can commit between the stream's blocks
    a.feed(enc.begin(0x50, 0, 800))
    a.feed(enc.insert(5, [b"9", b"plain"]))
    plain = a.feed(enc.commit(0x50, 0x60, 0))
    assert plain is not None and plain.changes[0].new == {"id": 9, "name": "plain"}
    a.feed(enc.stream_start(700, first=False))
    a.feed(enc.insert(5, [b"3", b"later"], xid=700))
    a.feed(enc.stream_stop())
    a.feed(enc.stream_abort(700, 701))
    tx = a.feed(enc.stream_commit(700, 0x90, 0xA0, 0))
    assert tx is not None and tx.xid == 700 and tx.end_lsn == 0xA0
    assert [c.new["id"] for c in tx.changes] == [1, 3]
    assert not a.in_progress


def test_stream_abort_of_whole_transaction_discards_it() -> None:
    a = Assembler(proto_version=4)
    a.feed(enc.stream_start(5))
    a.feed(enc.relation(5, "s", "t", COLS, xid=5))
    a.feed(enc.insert(5, [b"1", b"x"], xid=5))
    a.feed(enc.stream_stop())
    assert a.in_progress
    m = decode(enc.stream_abort(5, 5, lsn=0x99, ts=0))
    assert isinstance(m, StreamAbort) and m.abort_lsn == 0x99
    assert a.apply(m) is None
    assert not a.in_progress


def test_insert_decodes_with_xid_only_inside_a_stream() -> None:
    m = decode(enc.insert(5, [b"1"], xid=44), in_stream=True)
    assert isinstance(m, Insert) and m.xid == 44 and m.relation_oid == 5


@given(st.integers(0, 2**64 - 1))
def test_lsn_round_trip(value: int) -> None:
    assert parse_lsn(format_lsn(value)) == value


def test_lsn_text() -> None:
    assert parse_lsn("16/B374D848") == 0x16B374D848
    assert format_lsn(0) == "0/0"
    with pytest.raises(ValueError, match="not an LSN"):
        parse_lsn("garbage")


def test_pg_timestamp_epoch() -> None:
    assert pg_timestamp(0) == dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
    assert struct.calcsize(">QqI") == 20
