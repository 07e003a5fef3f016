"""Arrow → Postgres COPY: the binary encoding stores exactly what the CSV path stores."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal as D

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from sqlstream.formats.pgbinary import binary_encodable
from sqlstream.formats.pgcopy import COPY_CHUNK_ROWS, copy_in

# (Postgres type, Arrow type, values with a NULL and the edges of each type)
COLUMNS = [
    ("smallint", pa.int16(), [0, -(2**15), 2**15 - 1, None]),
    ("smallint", pa.int8(), [1, -128, 127, None]),
    ("integer", pa.int32(), [0, -(2**31), 2**31 - 1, None]),
    ("bigint", pa.int64(), [0, -(2**63), 2**63 - 1, None]),
    ("bigint", pa.uint32(), [0, 1, 2**32 - 1, None]),
    ("real", pa.float32(), [0.5, -1.25, math.inf, None]),
    ("double precision", pa.float64(), [0.1, -math.inf, 1e308, None]),
    ("boolean", pa.bool_(), [True, False, True, None]),
    (
        "timestamp",
        pa.timestamp("us"),
        [
            dt.datetime(2024, 1, 1, 0, 0, 0, 1),
            dt.datetime(1970, 1, 1),
            dt.datetime(1899, 12, 31, 23, 59),
            None,
        ],
    ),
    (
        "timestamptz",
        pa.timestamp("us", "UTC"),
        [
            dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
            dt.datetime(2030, 6, 1, 12, tzinfo=dt.UTC),
            dt.datetime(1960, 1, 1, tzinfo=dt.UTC),
            None,
        ],
    ),
    (
        "timestamp",
        pa.timestamp("ms"),
        [dt.datetime(2024, 5, 5, 1, 2, 3, 4000), None, dt.datetime(2001, 1, 1), None],
    ),
    ("date", pa.date32(), [dt.date(2000, 1, 1), dt.date(1969, 12, 31), dt.date(2100, 2, 28), None]),
    (
        "time",
        pa.time64("us"),
        [dt.time(0, 0), dt.time(23, 59, 59, 999999), dt.time(12, 0, 0, 5), None],
    ),
    ("varchar", pa.string(), ["", "héllo", 'a,b"c\n', None]),
    ("text", pa.large_string(), ["x" * 1000, "", "\\N", None]),
    ("bytea", pa.binary(), [b"", b"\x00\xff", b"\\x", None]),
    # sums of bigint (DuckDB's HUGEINT): the whole 128-bit range, signs, zero digits
    (
        "numeric(38,0)",
        pa.decimal128(38, 0),
        [D(10**38 - 1), D(-(10**38) + 1), D(-10_000_0000_0000_0001), None],
    ),
    ("numeric", pa.decimal128(38, 0), [D(0), D(-1), D(9_223_372_036_854_775_808), None]),
    # scales that are not a multiple of 4 digits
    ("numeric(10,2)", pa.decimal128(10, 2), [D("0.01"), D("-12345678.90"), D("99999999.99"), None]),
    ("numeric(38,7)", pa.decimal128(38, 7), [D("-0.0000001"), D("1" * 31 + ".1234567"), D("10000"), None]),
    ("numeric(9,4)", pa.decimal128(9, 4), [D("-99999.9999"), D("0.0001"), D("0"), None]),
    ("numeric(12)", pa.decimal128(12, 0), [D(-999_999_999_999), D(10_000), D(1), None]),  # scale 0
]


def _table(rows: int) -> tuple[pa.Table, list[str]]:
    arrays = {
        f"c{i}": pa.array([values[r % len(values)] for r in range(rows)], arrow_type)
        for i, (_, arrow_type, values) in enumerate(COLUMNS)
    }
    return pa.table(arrays), [pg for pg, _, _ in COLUMNS]


def _load(
    conn: psycopg.Connection, name: str, table: pa.Table, types: list[str], binary: bool
) -> list[tuple]:
    cols = ", ".join(f"c{i} {t}" for i, t in enumerate(types))
    conn.execute(f"CREATE TEMP TABLE {name} ({cols})")
    with conn.cursor() as cur:
        copy_in(cur, sql.Identifier(name), table, types if binary else None)
    return conn.execute(f"SELECT * FROM {name} ORDER BY ctid").fetchall()


@pytest.mark.parametrize("rows", [4, COPY_CHUNK_ROWS + 3])
def test_binary_copy_stores_what_csv_stores(pg_dsn: str, rows: int) -> None:
    table, types = _table(rows)
    assert binary_encodable(table.schema, types)
    with psycopg.connect(pg_dsn) as conn:
        via_binary = _load(conn, "b", table, types, binary=True)
        via_csv = _load(conn, "c", table, types, binary=False)
    assert len(via_binary) == rows
    assert via_binary == via_csv
    # and both are the Arrow values themselves (timestamptz comes back as aware UTC)
    first = via_binary[1]
    assert first[3] == -(2**63) and first[7] is False and first[13] == "héllo"
    assert via_binary[3] == tuple([None] * len(types))
    for i, (pg_type, _, values) in enumerate(COLUMNS):
        if pg_type.startswith("numeric"):
            assert [r[i] for r in via_binary[:4]] == values, pg_type


def test_sliced_and_chunked_input(pg_dsn: str) -> None:
    table, types = _table(40)
    pieces = pa.concat_tables([table.slice(3, 10), table.slice(20, 15)])
    with psycopg.connect(pg_dsn) as conn:
        assert _load(conn, "b", pieces, types, True) == _load(conn, "c", pieces, types, False)


@pytest.mark.parametrize(
    ("arrow_type", "pg_type"),
    [
        (pa.decimal128(10, 2), "numeric(10,4)"),  # another scale: Postgres would round
        (pa.decimal256(40, 0), "numeric"),
        (pa.int64(), "integer"),  # narrower target: binary would be the wrong width
        (pa.uint64(), "bigint"),
        (pa.uint16(), "smallint"),  # 65535 does not fit
        (pa.timestamp("ns"), "timestamp"),  # needs rounding to microseconds
        (pa.string(), "jsonb"),
        (pa.list_(pa.int64()), "bigint[]"),
        (pa.timestamp("us"), "timestamptz"),
    ],
)
def test_columns_without_an_exact_binary_form_fall_back_to_csv(
    pg_dsn: str, arrow_type: pa.DataType, pg_type: str
) -> None:
    assert not binary_encodable(pa.schema([("c0", arrow_type)]), [pg_type])
    table = pa.table({"c0": pa.array([None], arrow_type)})
    with psycopg.connect(pg_dsn) as conn:
        assert _load(conn, "f", table, [pg_type], binary=True) == [(None,)]


@pytest.mark.parametrize("text_columns", [False, True])
def test_columns_without_nulls(pg_dsn: str, text_columns: bool) -> None:
    """Columns with no NULL are laid out side by side in one piece (all of a row when it
    has no text): the rows must still be what CSV stores, the edges of each type included."""
    chosen = [
        (i, spec)
        for i, spec in enumerate(COLUMNS)
        if text_columns or spec[0] not in ("varchar", "text", "bytea")
    ]
    rows = 7
    present = [[v for v in values if v is not None] for _, (_, _, values) in chosen]
    table = pa.table(
        {
            f"c{i}": pa.array([kept[r % len(kept)] for r in range(rows)], arrow_type)
            for (i, (_, arrow_type, _)), kept in zip(chosen, present, strict=True)
        }
    )
    types = [pg for _, (pg, _, _) in chosen]
    assert not any(c.null_count for c in table.columns)
    assert binary_encodable(table.schema, types)
    with psycopg.connect(pg_dsn) as conn:
        via_binary = _load(conn, "b", table, types, binary=True)
        via_csv = _load(conn, "c", table, types, binary=False)
    assert len(via_binary) == rows and via_binary == via_csv
    numeric = [k for k, (_, (pg, _, _)) in enumerate(chosen) if pg.startswith("numeric")]
    for r in range(3):  # the values themselves, not only the same as CSV's
        assert [via_binary[r][k] for k in numeric] == [present[k][r % 3] for k in numeric]
