"""The column types of the fidelity matrix: for each, a SQL type and literal
values (SQL expressions) written through ``RETURNING *``. No expected
Python value is written here: the database is the oracle.

Every type table is ``(id serial primary key, v <type>, note text)`` with
``REPLICA IDENTITY FULL``, so each value is also decoded from an old row.
"""

from __future__ import annotations

from dataclasses import dataclass

HOSTILE_TEXT = [
    "''",
    "'plain'",
    "'café'",
    "'quo\"te'",
    "'single''quote'",
    "E'back\\\\slash'",
    "'NULL'",
    "'comma, {brace} (paren)'",
    "E'tab\\tnew\\nline'",
    "'  spaces  '",
]
UTF8_ONLY_TEXT = ["'emoji 🐘 ünïcødé €'"]


@dataclass(frozen=True)
class ColType:
    name: str  # test id and table suffix
    sql: str
    values: tuple[str, ...]
    utf8_values: tuple[str, ...] = ()
    needs: str | None = None  # an extension

    @property
    def table(self) -> str:
        return f"ty_{self.name}"


def _t(
    name: str,
    sqltype: str,
    *values: str,
    utf8: tuple[str, ...] = (),
    needs: str | None = None,
) -> ColType:
    return ColType(name, sqltype, values, utf8, needs)


SETUP = [
    "create type mood as enum ('sad', 'ok', 'with space', 'quo\"te', 'café')",
    "create type pair as (a int, b text, c numeric, d timestamptz)",
    "create domain posint as int check (value > 0)",
    "create domain money2 as numeric(10,2)",
    "create domain jdoc as jsonb",
    "create domain blob as bytea",
    "create domain day as date",
    "create domain intarr as int[]",
    "create domain d_text as text",
    "create domain d_nested as posint",
    "create domain d_mood as mood",
    "create domain d_ts as timestamptz",
    "create domain d_pair as pair",
    "create domain d_float as float8",
    "create domain d_posint_array as posint[]",
    "create table fid_regclass_target (id int)",
]

TSTZ = [
    "'2024-02-29 12:34:56.789+00'",
    "'2024-07-01 00:30:00+02'",
    "'1900-01-01 00:00:00+00'",
    "'1000-06-15 12:00:00+00'",
    "'2024-11-03 04:00:00+00'",
    "'2024-11-03 05:00:00+00'",
    "'9999-12-31 20:00:00+00'",
]

TYPES: list[ColType] = [
    _t("int2", "int2", "0", "-32768", "32767"),
    _t("int4", "int4", "0", "-2147483648", "2147483647"),
    _t("int8", "int8", "-9223372036854775808", "9223372036854775807"),
    _t(
        "numeric",
        "numeric",
        "'0'",
        "'0.000'",
        "'12.50'",
        "'-0'",
        "'1e-20'",
        "'NaN'",
        "'Infinity'",
        "'-Infinity'",
        "'123456789012345678901234567890.123456789'",
    ),
    _t("numeric_10_2", "numeric(10,2)", "'12.5'", "'-0.01'", "'99999999.99'"),
    _t(
        "float4",
        "float4",
        "'NaN'",
        "'-0'",
        "'Infinity'",
        "'-Infinity'",
        "'1.1'",
        "'3.4028235e38'",
        "'1e-45'",
    ),
    _t(
        "float8",
        "float8",
        "'NaN'",
        "'-0'",
        "'Infinity'",
        "'-Infinity'",
        "'0.1'",
        "'1e308'",
        "'5e-324'",
        "'-1.7976931348623157e308'",
    ),
    _t("money", "money", "'1234.56'", "'-0.01'"),
    _t("bool", "bool", "true", "false"),
    _t("text", "text", *HOSTILE_TEXT, utf8=tuple(UTF8_ONLY_TEXT)),
    _t("varchar", "varchar(20)", "'abc'", "'café'", "''"),
    _t("bpchar", "char(5)", "'ab'", "'café'"),
    _t("char1", '"char"', "'x'", "'\"'"),
    _t("name", "name", "'some_name'", "'Mixed Case'"),
    _t("bytea", "bytea", "'\\x'", "'\\x00ff10'", "'abc'::bytea"),
    _t(
        "uuid",
        "uuid",
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
        "'00000000-0000-0000-0000-000000000000'",
    ),
    _t(
        "json",
        "json",
        '\'{"b": 1, "a": [1, 2.5, null, "x"], "b": 2}\'',
        "'\"str\"'",
        "'null'",
        "'1e400'",
        "'[]'",
        '\'{"é": "\\u00e9"}\'',
    ),
    _t(
        "jsonb",
        "jsonb",
        "'{\"k\": [1, null, 2.50]}'",
        "'{\"n\": 1.0}'",
        "'null'",
        "'\"é\"'",
        "'12345678901234567890'",
        "'0.1'",
    ),
    _t("xml", "xml", "'<a x=\"1\">t&amp;</a>'", "'text only'"),
    _t("date", "date", "'2024-02-29'", "'0001-01-01'", "'9999-12-31'"),
    _t("time", "time", "'00:00'", "'23:59:59.999999'", "'12:34:56.5'"),
    _t(
        "timetz",
        "timetz",
        "'12:34:56+05:30'",
        "'00:00:00-12'",
        "'23:59:59.999999+14'",
        "'10:00:00+03:25:45'",
    ),
    _t(
        "timestamp",
        "timestamp",
        "'2024-02-29 12:34:56.789'",
        "'0001-01-01 00:00'",
        "'9999-12-31 23:59:59.999999'",
    ),
    _t("timestamptz", "timestamptz", *TSTZ),
    _t(
        "interval",
        "interval",
        "'1 year 2 months 3 days 04:05:06.789'",
        "'-1 day +02:00'",
        "'0'",
        "'1 mon'",
        "'30 days'",
        "'-00:00:00.000001'",
    ),
    _t("inet", "inet", "'192.168.0.1'", "'10.0.0.1/8'", "'::1'", "'2001:db8::1/64'"),
    _t("cidr", "cidr", "'10.0.0.0/8'", "'2001:db8::/32'", "'192.168.1.7/32'"),
    _t("macaddr", "macaddr", "'08:00:2b:01:02:03'"),
    _t("macaddr8", "macaddr8", "'08:00:2b:01:02:03:04:05'"),
    _t("bit", "bit(8)", "B'10101010'"),
    _t("varbit", "varbit", "B'1'", "B''"),
    _t("tsvector", "tsvector", "'a fat cat'", "$$'quo''te' x:1A$$"),
    _t("tsquery", "tsquery", "'fat & (rat | cat)'"),
    _t("point", "point", "'(1.5,-2)'"),
    _t("line", "line", "'{1,2,3}'"),
    _t("lseg", "lseg", "'[(0,0),(1,1)]'"),
    _t("box", "box", "'(1,1),(0,0)'"),
    _t("path", "path", "'[(0,0),(1,1),(2,0)]'", "'((0,0),(1,1))'"),
    _t("polygon", "polygon", "'((0,0),(1,1),(1,0))'"),
    _t("circle", "circle", "'<(0,0),1.5>'"),
    _t("oid", "oid", "0", "4294967295"),
    _t("regclass", "regclass", "'pg_class'", "'fid_regclass_target'"),
    _t("regtype", "regtype", "'integer'", "'mood'"),
    _t("regproc", "regproc", "'now'"),
    _t("pg_lsn", "pg_lsn", "'0/0'", "'FFFFFFFF/FFFFFFFF'"),
    _t("int2vector", "int2vector", "'1 2 3'"),
    _t("oidvector", "oidvector", "'1 2'"),
    _t("xid", "xid", "'123'"),
    _t("xid8", "xid8", "'123456789012'"),
    _t("tid", "tid", "'(1,2)'"),
    _t("hstore", "hstore", '\'"a"=>"1", "b"=>NULL, "quo\\"te"=>"x"\'', needs="hstore"),
    _t("enum", "mood", "'sad'", "'with space'", "'quo\"te'", "'café'"),
    _t(
        "composite",
        "pair",
        "row(1, 'x \"y\", z', 12.50, '2024-01-01 00:00+00')",
        "row(null, null, null, null)",
    ),
    # arrays
    _t(
        "int4_array",
        "int4[]",
        "'{1,NULL,3}'",
        "'{}'",
        "'{{1,2},{3,4}}'",
        "'[0:2]={1,2,3}'",
        "'{{{1}},{{2}}}'",
    ),
    _t("int8_array", "int8[]", "'{-9223372036854775808,NULL}'"),
    _t("int2_array", "int2[]", "'{{1},{NULL}}'"),
    _t(
        "text_array",
        "text[]",
        f"array[{', '.join(HOSTILE_TEXT)}, NULL]",
        "'{{a,b},{c,d}}'",
        "'{}'",
        utf8=(f"array[{UTF8_ONLY_TEXT[0]}]",),
    ),
    _t("varchar_array", "varchar(5)[]", "'{ab,NULL,\"a b\"}'"),
    _t("bpchar_array", "char(3)[]", "'{a,bc}'"),
    _t("char1_array", '"char"[]', "'{a,b}'"),
    _t("name_array", "name[]", "'{a,\"b c\"}'"),
    _t("numeric_array", "numeric[]", "'{1.50,NaN,Infinity,-Infinity,NULL,0.000}'"),
    _t("float8_array", "float8[]", "'{NaN,-0,Infinity,1.5,NULL}'"),
    _t("float4_array", "float4[]", "'{NaN,-0,-Infinity,1.1}'"),
    _t("bool_array", "bool[]", "'{t,f,NULL}'"),
    _t("bytea_array", "bytea[]", "array['\\x00ff'::bytea, NULL, ''::bytea]"),
    _t("uuid_array", "uuid[]", "'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL}'"),
    _t("date_array", "date[]", "'{2024-02-29,NULL,0001-01-01}'"),
    _t("time_array", "time[]", "'{00:00,12:34:56.5}'"),
    _t("timetz_array", "timetz[]", "'{12:34:56+05:30}'"),
    _t("timestamp_array", "timestamp[]", "'{\"2024-02-29 12:34:56.789\",NULL}'"),
    _t(
        "timestamptz_array",
        "timestamptz[]",
        f"array[{', '.join(TSTZ)}, NULL]::timestamptz[]",
        '\'{{"2024-01-01 00:00+00"},{"2024-07-01 00:30+02"}}\'',
    ),
    _t("interval_array", "interval[]", "'{\"1 mon 2 days\",NULL}'"),
    _t("json_array", "json[]", "array['{\"a\": 1}'::json, 'null'::json, NULL]"),
    _t(
        "jsonb_array",
        "jsonb[]",
        "array['{\"a\": [1, \"}\"]}'::jsonb, 'null'::jsonb, NULL]",
    ),
    _t("inet_array", "inet[]", "'{192.168.0.1,::1/64,NULL}'"),
    _t("cidr_array", "cidr[]", "'{10.0.0.0/8}'"),
    _t("oid_array", "oid[]", "'{1,4294967295}'"),
    _t("point_array", "point[]", "array[point '(1,2)', NULL]"),
    _t("hstore_array", "hstore[]", "array['a=>1'::hstore, NULL]", needs="hstore"),
    _t("enum_array", "mood[]", "'{sad,\"with space\",NULL}'"),
    _t("composite_array", "pair[]", "array[row(1, 'a,b', 1.5, NULL)::pair, NULL]"),
    _t("int4range_array", "int4range[]", "array['[1,3)'::int4range, 'empty']"),
    # ranges and multiranges
    _t("int4range", "int4range", "'[1,10)'", "'empty'", "'(,5]'", "'[3,)'", "'(,)'"),
    _t("int8range", "int8range", "'[-9223372036854775808,0)'"),
    _t("numrange", "numrange", "'[1.50,2.5]'", "'(-1.0,)'"),
    _t("daterange", "daterange", "'[2024-01-01,2024-02-29]'", "'(,2024-01-01)'"),
    _t("tsrange", "tsrange", "'[2024-01-01 00:00,2024-02-29 12:34:56.5)'"),
    _t(
        "tstzrange",
        "tstzrange",
        "'[2024-01-01 00:00+00,2024-07-01 00:30+02)'",
        "'[2024-11-03 04:00+00,2024-11-03 05:00+00]'",
    ),
    _t("int4multirange", "int4multirange", "'{[1,3),[5,7)}'", "'{}'"),
    _t("int8multirange", "int8multirange", "'{[1,3)}'"),
    _t("nummultirange", "nummultirange", "'{[1.50,2.5],(3,)}'"),
    _t("datemultirange", "datemultirange", "'{[2024-01-01,2024-01-05),[2024-02-01,)}'"),
    _t("tsmultirange", "tsmultirange", "'{[2024-01-01 00:00,2024-01-02 00:00)}'"),
    _t(
        "tstzmultirange",
        "tstzmultirange",
        "'{[2024-01-01 00:00+00,2024-01-02 00:00+00),[2024-11-03 05:00+00,)}'",
    ),
    # domains
    _t("dom_posint", "posint", "1", "2147483647"),
    _t("dom_numeric", "money2", "'12.5'", "'-0.01'"),
    _t("dom_text", "d_text", "'x'", "'café'"),
    _t("dom_jsonb", "jdoc", "'{\"k\": [1, null, 1.50]}'", "'null'"),
    _t("dom_bytea", "blob", "'\\x0001ff'"),
    _t("dom_date", "day", "'2024-02-29'"),
    _t("dom_int_array", "intarr", "'{1,NULL,2}'", "'{{1},{2}}'"),
    _t("dom_nested", "d_nested", "5"),
    _t("dom_enum", "d_mood", "'ok'"),
    _t("dom_timestamptz", "d_ts", "'2024-07-01 00:30+02'", "'2024-11-03 05:00+00'"),
    _t("dom_composite", "d_pair", "row(1, 'a', 1.0, NULL)"),
    _t("dom_float", "d_float", "'NaN'", "'-0'"),
    _t("array_of_domain", "posint[]", "'{1,2,NULL}'"),
    _t("array_of_numeric_domain", "money2[]", "'{1.5,NULL}'"),
    _t("domain_over_array_of_domain", "d_posint_array", "'{1,NULL}'"),
]

BY_NAME = {t.name: t for t in TYPES}

UNLOADABLE: list[ColType] = [
    _t("date", "date", "'infinity'", "'-infinity'", "'0044-03-15 BC'", "'2024-02-29'"),
    _t("timestamp", "timestamp", "'infinity'", "'-infinity'", "'0044-03-15 12:00 BC'"),
    _t(
        "timestamptz",
        "timestamptz",
        "'-infinity'",
        "'infinity'",
        "'294276-12-31 23:59:59+00'",
        "'0001-01-01 00:00:00+00'",
        "'9999-12-31 23:00:00-05'",
    ),
    _t("time", "time", "'24:00'", "'12:00'"),
    _t(
        "daterange", "daterange", "'[2024-01-01,infinity)'", "'[2024-01-01,2024-02-01)'"
    ),
    _t("date_array", "date[]", "'{2024-01-01,infinity,NULL}'"),
    _t("tstzrange", "tstzrange", "'[-infinity,2024-01-01 00:00+00)'"),
    _t("interval", "interval", "'178000000 years'"),
    _t("dom_date", "day", "'infinity'"),
]
UNLOADABLE_SETUP = [
    "create domain day as date",
    "create table un_key (d date primary key, v text)",
]
