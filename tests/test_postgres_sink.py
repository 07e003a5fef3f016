"""The Postgres sink against a real Postgres: types, upsert, the checkpoint transaction, 2PC."""

from __future__ import annotations

import datetime as dt
import math
import secrets
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from sqlstream.checkpoint.embedded import EmbeddedPostgres
from sqlstream.connectors.base import ConnectorContext
from sqlstream.connectors.postgres.sink import PostgresSink, parse_table_name
from sqlstream.errors import ConnectorError, InvalidParameterValue
from sqlstream.formats.pgbinary import binary_encodable
from sqlstream.types import Column, arrow_schema

W = "__weight"

ALL_TYPES = [
    Column("id", "bigint"),
    Column("b", "boolean"),
    Column("i2", "smallint"),
    Column("i4", "integer"),
    Column("f4", "real"),
    Column("f8", "double precision"),
    Column("n", "numeric(12,3)"),
    Column("s", "varchar"),
    Column("d", "date"),
    Column("t", "time"),
    Column("ts", "timestamp"),
    Column("tz", "timestamptz"),
    Column("iv", "interval"),
    Column("j", "jsonb"),
    Column("bin", "bytea"),
    Column("u", "uuid"),
    Column("ai", "bigint[]"),
    Column("at", "varchar[]"),
]

U1 = "0b7e8c52-2f4c-4b7c-9a57-3f2d8e1c0a11"

ALL_ROWS = [
    {
        "id": 1,
        "b": True,
        "i2": -32768,
        "i4": 2147483647,
        "f4": 0.5,
        "f8": 0.1,
        "n": Decimal("123456789.125"),
        "s": 'comma, "quote", \\ back\nnew line',
        "d": dt.date(2024, 2, 29),
        "t": dt.time(23, 59, 59, 999999),
        "ts": dt.datetime(2024, 1, 1, 12, 30, 0, 500000),
        "tz": dt.datetime(2024, 1, 1, 12, 0, tzinfo=dt.UTC),
        "iv": pa.MonthDayNano([1, 2, 3_000_000_000]),
        "j": '{"a": [1, "x"]}',
        "bin": b'\x00\x01\xff,"',
        "u": U1,
        "ai": [1, None, 3],
        "at": ["a,b", None, 'q"\\', ""],
    },
    {
        "id": 2,
        "b": False,
        "i2": 0,
        "i4": 0,
        "f4": float("inf"),
        "f8": float("nan"),
        "n": Decimal("-0.001"),
        "s": "",
        "d": dt.date(1, 1, 1),
        "t": dt.time(0, 0),
        "ts": dt.datetime(1970, 1, 1),
        "tz": dt.datetime(1999, 12, 31, 23, 59, tzinfo=dt.UTC),
        "iv": pa.MonthDayNano([0, 0, 1000]),
        "j": "[]",
        "bin": b"",
        "u": U1,
        "ai": [],
        "at": [],
    },
    {name: None for name in (c.name for c in ALL_TYPES)} | {"id": 3, "s": "ünïcødé ☃"},
]


def make_table(
    rows: list[dict], schema: list[Column], weights: list[int] | None = None
) -> pa.Table:
    table = pa.Table.from_pylist(rows, schema=arrow_schema(schema))
    if weights is not None:
        table = table.append_column(W, pa.array(weights, pa.int64()))
    return table


@pytest.fixture
def target_dsn(pg_dsn: str) -> Iterator[str]:
    """A second database on the test server: the target of a sink with an explicit dsn."""
    name = f"sqlstream_target_{secrets.token_hex(6)}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(pg_dsn, dbname=name)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            # prepared transactions a failing test left behind would block the drop
            for (gid,) in conn.execute(
                "SELECT gid FROM pg_prepared_xacts WHERE database = %s", (name,)
            ).fetchall():
                with psycopg.connect(make_conninfo(pg_dsn, dbname=name), autocommit=True) as c:
                    c.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def make_sink(
    catalog_dsn: str, schema: list[Column], name: str = "out", **options: str
) -> PostgresSink:
    sink = PostgresSink(ConnectorContext(name, catalog_dsn, Path(".")), schema, options, None)
    sink.open()
    return sink


def checkpoint(sink: PostgresSink, epoch: int, catalog_dsn: str, *, ok: bool = True) -> None:
    """What the engine does: one catalog transaction, pre_commit, commit, then commit(epoch)."""
    with psycopg.connect(catalog_dsn) as txn:
        sink.seal(epoch)
        sink.pre_commit(epoch, txn)
        if ok:
            txn.commit()
        else:
            txn.rollback()
    if ok:
        sink.commit(epoch)
    else:
        sink.abort(epoch)


def fetch(dsn: str, query: str) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query).fetchall()


def prepared(dsn: str) -> list[str]:
    return [
        r[0]
        for r in fetch(
            dsn,
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY gid",
        )
    ]


# -- append-only ------------------------------------------------------------------------


def test_append_every_type_round_trips(catalog_dsn: str) -> None:
    sink = make_sink(catalog_dsn, ALL_TYPES, table="all_types")
    sink.write(make_table(ALL_ROWS[:2], ALL_TYPES))
    sink.write(make_table(ALL_ROWS[2:], ALL_TYPES))
    checkpoint(sink, 1, catalog_dsn)
    sink.close()

    cols = [c.name for c in ALL_TYPES if c.name != "iv"]
    with psycopg.connect(catalog_dsn) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        got = conn.execute(
            f"SELECT {', '.join(cols)}, iv::text FROM all_types ORDER BY id"
        ).fetchall()
        types = dict(
            conn.execute(
                "SELECT column_name, format_type(atttypid, atttypmod) FROM information_schema.columns"
                " JOIN pg_attribute ON attrelid = 'all_types'::regclass AND attname = column_name"
                " WHERE table_name = 'all_types'"
            ).fetchall()
        )
    assert types["n"] == "numeric(12,3)" and types["tz"] == "timestamp with time zone"
    assert types["ai"] == "bigint[]" and types["j"] == "jsonb"
    assert len(got) == 3
    for row, want in zip(got, ALL_ROWS, strict=True):
        row = dict(zip([*cols, "iv"], row, strict=True))
        for name in cols:
            expected = want[name]
            if name == "j" and expected is not None:
                import json

                expected = json.loads(expected)
            if name == "u" and expected is not None:
                expected = uuid.UUID(expected)
            if name == "bin" and row[name] is not None:
                row[name] = bytes(row[name])
            if isinstance(expected, float) and math.isnan(expected):
                assert math.isnan(row[name])
            else:
                assert row[name] == expected, name
    assert [r[-1] for r in got] == ["1 mon 2 days 00:00:03", "00:00:00.000001", None]


def test_append_only_drops_retractions_and_loads_many_rows(catalog_dsn: str) -> None:
    schema = [Column("k", "bigint"), Column("v", "varchar")]
    sink = make_sink(catalog_dsn, schema, table="public.plain")
    sink.write(make_table([{"k": 1, "v": "a"}, {"k": 2, "v": "b"}], schema, [1, -1]))
    n = 250_000  # more than one COPY chunk
    sink.write(pa.table({"k": pa.array(range(10, 10 + n), pa.int64()), "v": ["x"] * n}))
    checkpoint(sink, 1, catalog_dsn)
    assert fetch(catalog_dsn, "SELECT count(*), min(k), max(k) FROM plain") == [(n + 1, 1, n + 9)]
    assert fetch(catalog_dsn, "SELECT v FROM plain WHERE k = 1") == [("a",)]


def test_rows_written_in_the_checkpoint_transaction(catalog_dsn: str) -> None:
    schema = [Column("k", "bigint")]
    sink = make_sink(catalog_dsn, schema, table="t")
    sink.write(pa.table({"k": pa.array([1, 2], pa.int64())}))
    with psycopg.connect(catalog_dsn) as txn:
        sink.seal(1)
        sink.pre_commit(1, txn)
        # written, but only inside the open checkpoint transaction
        assert txn.execute("SELECT count(*) FROM t").fetchone() == (2,)
        assert fetch(catalog_dsn, "SELECT count(*) FROM t") == [(0,)]
        txn.rollback()
    sink.abort(1)
    assert fetch(catalog_dsn, "SELECT count(*) FROM t") == [(0,)]

    # the aborted epoch's rows are still owed: they go out with the next checkpoint, once
    sink.write(pa.table({"k": pa.array([3], pa.int64())}))
    checkpoint(sink, 1, catalog_dsn)  # an aborted epoch number may be reused
    assert fetch(catalog_dsn, "SELECT k FROM t ORDER BY k") == [(1,), (2,), (3,)]
    checkpoint(sink, 2, catalog_dsn)  # an empty epoch writes nothing
    assert fetch(catalog_dsn, "SELECT count(*) FROM t") == [(3,)]


# -- upsert -----------------------------------------------------------------------------

KV = [Column("k", "integer"), Column("v", "varchar"), Column("x", "double precision")]


def test_upsert_updates_and_deletes_across_epochs(catalog_dsn: str) -> None:
    sink = make_sink(catalog_dsn, KV, table="kv", type="upsert", primary_key="k")
    assert sink.accepts_retractions
    sink.write(make_table([{"k": i, "v": f"v{i}", "x": 1.0} for i in (1, 2, 3)], KV))
    checkpoint(sink, 1, catalog_dsn)
    assert fetch(catalog_dsn, "SELECT k, v FROM kv ORDER BY k") == [(1, "v1"), (2, "v2"), (3, "v3")]

    rows = [
        {"k": 2, "v": "v2", "x": 1.0},
        {"k": 2, "v": "v2b", "x": 2.0},  # update: -old +new
        {"k": 3, "v": "v3", "x": 1.0},  # delete
        {"k": 4, "v": "v4", "x": None},  # insert
        {"k": 5, "v": "v5", "x": 1.0},
        {"k": 5, "v": "v5", "x": 1.0},  # inserted, deleted
        {"k": 1, "v": "v1b", "x": 3.0},
        {"k": 1, "v": "v1", "x": 1.0},  # update: +new -old
    ]
    sink.write(make_table(rows[:5], KV, [-1, 1, -1, 1, 1]))
    sink.write(make_table(rows[5:], KV, [-1, 1, -1]))
    checkpoint(sink, 2, catalog_dsn)
    assert fetch(catalog_dsn, "SELECT k, v, x FROM kv ORDER BY k") == [
        (1, "v1b", 3.0),
        (2, "v2b", 2.0),
        (4, "v4", None),
    ]

    # an update over several epochs, a re-inserted key, and no weight column (all inserts)
    sink.write(
        make_table([{"k": 4, "v": "v4", "x": None}, {"k": 3, "v": "back", "x": 0.0}], KV, [-1, 1])
    )
    checkpoint(sink, 3, catalog_dsn)
    sink.write(make_table([{"k": 4, "v": "again", "x": 1.0}, {"k": 4, "v": "last", "x": 2.0}], KV))
    checkpoint(sink, 4, catalog_dsn)
    assert fetch(catalog_dsn, "SELECT k, v FROM kv ORDER BY k") == [
        (1, "v1b"),
        (2, "v2b"),
        (3, "back"),
        (4, "last"),
    ]


def test_upsert_composite_key_in_schema_and_rollback(catalog_dsn: str) -> None:
    with psycopg.connect(catalog_dsn, autocommit=True) as conn:
        conn.execute('CREATE SCHEMA "Ana lytics"')
    schema = [Column("a", "varchar"), Column("b", "timestamp"), Column("n", "bigint")]
    sink = make_sink(
        catalog_dsn, schema, table='"Ana lytics"."Hot Items"', type="upsert", primary_key="a, b"
    )
    t0 = dt.datetime(2024, 1, 1)
    sink.write(make_table([{"a": "x", "b": t0, "n": 1}, {"a": "y", "b": t0, "n": 1}], schema))
    checkpoint(sink, 1, catalog_dsn)
    sink.write(
        make_table([{"a": "x", "b": t0, "n": 1}, {"a": "x", "b": t0, "n": 2}], schema, [-1, 1])
    )
    checkpoint(sink, 2, catalog_dsn, ok=False)  # rolled back: nothing changes
    q = 'SELECT a, n FROM "Ana lytics"."Hot Items" ORDER BY a'
    assert fetch(catalog_dsn, q) == [("x", 1), ("y", 1)]
    checkpoint(sink, 2, catalog_dsn)  # retried
    assert fetch(catalog_dsn, q) == [("x", 2), ("y", 1)]


def test_upsert_with_only_key_columns(catalog_dsn: str) -> None:
    schema = [Column("k", "bigint")]
    sink = make_sink(catalog_dsn, schema, table="keys", type="upsert", primary_key="k")
    sink.write(make_table([{"k": 1}, {"k": 2}, {"k": 2}], schema))
    checkpoint(sink, 1, catalog_dsn)
    sink.write(make_table([{"k": 1}, {"k": 3}], schema, [-1, 1]))
    checkpoint(sink, 2, catalog_dsn)
    assert fetch(catalog_dsn, "SELECT k FROM keys ORDER BY k") == [(2,), (3,)]


# -- options and existing tables ----------------------------------------------------------


def test_options_are_checked() -> None:
    ctx = ConnectorContext("s", "", Path("."))
    with pytest.raises(InvalidParameterValue, match="primary_key"):
        PostgresSink(ctx, KV, {"table": "t", "type": "upsert"}, None)
    with pytest.raises(InvalidParameterValue, match="not in the sink"):
        PostgresSink(ctx, KV, {"table": "t", "type": "upsert", "primary_key": "nope"}, None)
    with pytest.raises(InvalidParameterValue, match="must be one of"):
        PostgresSink(ctx, KV, {"table": "t", "type": "merge"}, None)
    with pytest.raises(InvalidParameterValue, match="unknown option"):
        PostgresSink(ctx, KV, {"table": "t", "tabel": "x"}, None)
    with pytest.raises(InvalidParameterValue):
        PostgresSink(ctx, KV, {"table": "a.b.c"}, None)
    sink = PostgresSink(ctx, KV, {"table": "t", "connector": "postgres"}, None)
    assert not sink.accepts_retractions and sink.exactly_once
    assert parse_table_name('Public."Odd""Name"') == ("public", 'Odd"Name')


def test_existing_table_is_checked(catalog_dsn: str) -> None:
    with psycopg.connect(catalog_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE narrow (k integer)")
        conn.execute("CREATE TABLE nokey (k integer, v varchar, x float8, extra text)")
    with pytest.raises(ConnectorError, match="no column"):
        make_sink(catalog_dsn, KV, table="narrow")
    with pytest.raises(ConnectorError, match="unique index"):
        make_sink(catalog_dsn, KV, table="nokey", type="upsert", primary_key="k")
    # an existing table with more columns and a unique index will do
    with psycopg.connect(catalog_dsn, autocommit=True) as conn:
        conn.execute("CREATE UNIQUE INDEX ON nokey (k)")
    sink = make_sink(catalog_dsn, KV, table="nokey", type="upsert", primary_key="k")
    sink.write(make_table([{"k": 1, "v": "a", "x": 1.0}], KV))
    checkpoint(sink, 1, catalog_dsn)
    assert fetch(catalog_dsn, "SELECT k, v, extra FROM nokey") == [(1, "a", None)]


def test_copy_types_come_from_the_existing_table(catalog_dsn: str) -> None:
    """Binary COPY where the target's types (as Postgres spells them) are exactly what the
    rows are encoded for; a constrained type (varchar(3)) goes as CSV, so Postgres still
    checks it."""
    schema = [
        Column("k", "bigint"),
        Column("s", "varchar"),
        Column("v", "varchar"),
        Column("ts", "timestamp"),
        Column("tz", "timestamptz"),
    ]
    with psycopg.connect(catalog_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE spelled (k bigint, s text, v character varying,"
            " ts timestamp without time zone, tz timestamp with time zone)"
        )
        conn.execute("CREATE TABLE short (k bigint, s varchar(3))")
    sink = make_sink(catalog_dsn, schema, table="spelled")
    assert sink._copy_types == ["bigint", "text", "varchar", "timestamp", "timestamptz"]
    rows = [
        {"k": 1, "s": "a,b", "v": "", "ts": dt.datetime(2024, 1, 1, 0, 0, 0, 1),
         "tz": dt.datetime(1999, 12, 31, 23, tzinfo=dt.UTC)},
        {"k": 2, "s": None, "v": "é", "ts": None, "tz": None},
    ]  # fmt: skip
    table = make_table(rows, schema)
    assert binary_encodable(table.schema, sink._copy_types)
    sink.write(table)
    checkpoint(sink, 1, catalog_dsn)
    with psycopg.connect(catalog_dsn) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        got = conn.execute("SELECT k, s, v, ts, tz FROM spelled ORDER BY k").fetchall()
    assert got == [tuple(r.values()) for r in rows]

    narrow = [Column("k", "bigint"), Column("s", "varchar")]
    sink = make_sink(catalog_dsn, narrow, table="short")
    assert sink._copy_types == ["bigint", "character varying(3)"]
    assert not binary_encodable(make_table([{"k": 1, "s": "x"}], narrow).schema, sink._copy_types)
    sink.write(make_table([{"k": 1, "s": "abcd"}], narrow))
    with pytest.raises(psycopg.errors.StringDataRightTruncation):
        checkpoint(sink, 1, catalog_dsn)


# -- two-phase commit (dsn given) ----------------------------------------------------------


@pytest.mark.two_phase
def test_two_phase_prepare_then_commit(catalog_dsn: str, target_dsn: str) -> None:
    schema = [Column("k", "bigint")]
    sink = make_sink(catalog_dsn, schema, table="t", dsn=target_dsn)
    sink.recover(None)
    sink.write(pa.table({"k": pa.array([1, 2], pa.int64())}))
    with psycopg.connect(catalog_dsn) as txn:
        sink.seal(7)
        sink.pre_commit(7, txn)
        assert prepared(target_dsn) == ["sqlstream:out:t:7"]
        assert fetch(target_dsn, "SELECT count(*) FROM t") == [(0,)]  # prepared, not visible
        txn.commit()
    sink.commit(7)
    assert prepared(target_dsn) == []
    assert fetch(target_dsn, "SELECT k FROM t ORDER BY k") == [(1,), (2,)]
    # nothing went to the catalog database
    assert fetch(catalog_dsn, "SELECT to_regclass('t') IS NULL") == [(True,)]

    sink.write(pa.table({"k": pa.array([3], pa.int64())}))
    checkpoint(sink, 8, catalog_dsn, ok=False)  # abort: ROLLBACK PREPARED, rows kept
    assert prepared(target_dsn) == [] and fetch(target_dsn, "SELECT count(*) FROM t") == [(2,)]
    checkpoint(sink, 8, catalog_dsn)
    assert fetch(target_dsn, "SELECT k FROM t ORDER BY k") == [(1,), (2,), (3,)]
    sink.close()


@pytest.mark.two_phase
def test_two_phase_recover_commits_decided_and_rolls_back_the_rest(
    catalog_dsn: str, target_dsn: str
) -> None:
    sink = make_sink(catalog_dsn, KV, table="kv", dsn=target_dsn, type="upsert", primary_key="k")
    sink.recover(None)
    sink.write(make_table([{"k": 1, "v": "a", "x": 1.0}, {"k": 2, "v": "b", "x": 1.0}], KV))
    checkpoint(sink, 1, catalog_dsn)
    other = make_sink(
        catalog_dsn, KV, name="other", table="kv", dsn=target_dsn, type="upsert", primary_key="k"
    )

    # epoch 2 prepared and recorded in the catalog, then a crash before commit(2)
    sink.write(
        make_table([{"k": 1, "v": "a", "x": 1.0}, {"k": 1, "v": "a2", "x": 2.0}], KV, [-1, 1])
    )
    with psycopg.connect(catalog_dsn) as txn:
        sink.seal(2)
        sink.pre_commit(2, txn)
        txn.commit()
    sink.close()  # the process dies: the prepared transaction outlives it
    del sink
    other.write(make_table([{"k": 9, "v": "other", "x": 0.0}], KV))
    with psycopg.connect(catalog_dsn) as txn:
        other.seal(5)
        other.pre_commit(5, txn)  # another sink's prepared epoch: never touched by ours

    restarted = make_sink(
        catalog_dsn, KV, table="kv", dsn=target_dsn, type="upsert", primary_key="k"
    )
    restarted.recover(2)
    assert prepared(target_dsn) == ["sqlstream:other:kv:5"]
    assert fetch(target_dsn, "SELECT k, v FROM kv ORDER BY k") == [(1, "a2"), (2, "b")]

    # epoch 3 prepared, but the crash comes before the catalog commits it
    restarted.write(make_table([{"k": 2, "v": "b", "x": 1.0}], KV, [-1]))
    with psycopg.connect(catalog_dsn) as txn:
        restarted.seal(3)
        restarted.pre_commit(3, txn)
        txn.rollback()
    restarted.close()
    again = make_sink(catalog_dsn, KV, table="kv", dsn=target_dsn, type="upsert", primary_key="k")
    again.recover(2)
    assert prepared(target_dsn) == ["sqlstream:other:kv:5"]
    assert fetch(target_dsn, "SELECT k, v FROM kv ORDER BY k") == [(1, "a2"), (2, "b")]

    # the replayed epoch 3 (same number reused) commits normally; recovery is idempotent
    again.recover(2)
    again.write(make_table([{"k": 2, "v": "b", "x": 1.0}], KV, [-1]))
    checkpoint(again, 3, catalog_dsn)
    assert fetch(target_dsn, "SELECT k, v FROM kv ORDER BY k") == [(1, "a2")]
    # no staging table is left behind
    assert fetch(
        target_dsn, "SELECT count(*) FROM pg_class WHERE relname LIKE '_sqlstream_stage%'"
    ) == [(0,)]

    other.recover(None)  # nothing committed for it: rolled back
    assert prepared(target_dsn) == []
    assert fetch(target_dsn, "SELECT count(*) FROM kv WHERE k = 9") == [(0,)]
    for s in (again, other):
        s.close()


def test_two_phase_needs_prepared_transactions(catalog_dsn: str, tmp_data_dir: Path) -> None:
    with EmbeddedPostgres(tmp_data_dir, settings={"max_prepared_transactions": "0"}) as pg:
        assert pg.dsn is not None
        sink = PostgresSink(
            ConnectorContext("out", catalog_dsn, tmp_data_dir),
            KV,
            {"table": "kv", "dsn": pg.dsn},
            None,
        )
        with pytest.raises(ConnectorError, match="max_prepared_transactions"):
            sink.open()
