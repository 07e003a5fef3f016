"""The file sink: staged files stay invisible, recovery rolls forward/back, encodings round-trip."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sqlstream.connectors.base import ConnectorContext, Format
from sqlstream.connectors.file.sink import FileSink, part_name
from sqlstream.errors import InvalidParameterValue
from sqlstream.formats.encode import pg_text
from sqlstream.types import Column, arrow_schema

SCHEMA = [
    Column("id", "bigint"),
    Column("ok", "boolean"),
    Column("n", "integer"),
    Column("price", "double precision"),
    Column("amount", "numeric(10,2)"),
    Column("name", "varchar"),
    Column("day", "date"),
    Column("ts", "timestamp"),
    Column("tz", "timestamptz"),
]

ROWS = [
    {
        "id": 1,
        "ok": True,
        "n": -5,
        "price": 0.1,
        "amount": Decimal("12.50"),
        "name": 'a, "quoted"\nline',
        "day": dt.date(2024, 2, 29),
        "ts": dt.datetime(2024, 1, 1, 0, 0, 0, 500000),
        "tz": dt.datetime(2024, 1, 1, 12, 0, tzinfo=dt.UTC),
    },
    {
        "id": 2,
        "ok": False,
        "n": 0,
        "price": -1e300,
        "amount": Decimal("-0.01"),
        "name": "",
        "day": dt.date(1970, 1, 1),
        "ts": dt.datetime(2024, 12, 31, 23, 59, 59),
        "tz": dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
    },
    {name: None for name in (c.name for c in SCHEMA)} | {"id": 3, "name": "ünï ☃"},
]

DUCK_TYPES = {
    "id": "BIGINT",
    "ok": "BOOLEAN",
    "n": "INTEGER",
    "price": "DOUBLE",
    "amount": "DECIMAL(10,2)",
    "name": "VARCHAR",
    "day": "DATE",
    "ts": "TIMESTAMP",
    "tz": "TIMESTAMPTZ",
}


def table(rows: list[dict], weights: list[int] | None = None) -> pa.Table:
    t = pa.Table.from_pylist(rows, schema=arrow_schema(SCHEMA))
    if weights is not None:
        t = t.append_column("__weight", pa.array(weights, pa.int64()))
    return t


def make_sink(path: Path, encode: str = "parquet", **options: str) -> FileSink:
    sink = FileSink(
        ConnectorContext("out", "", path.parent),
        SCHEMA,
        {"path": str(path), **options},
        Format("plain", encode),
    )
    sink.open()
    return sink


def checkpoint(sink: FileSink, epoch: int, *, ok: bool = True) -> None:
    sink.seal(epoch)
    sink.pre_commit(epoch, None)  # type: ignore[arg-type]  # the file sink ignores txn
    if ok:
        sink.commit(epoch)
    else:
        sink.abort(epoch)


def published(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if not p.name.startswith("_"))


def read_back(path: Path, encode: str) -> pa.Table:
    """What a reader sees: DuckDB over the published parts (staging is ignored)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if encode == "parquet":
        query = f"SELECT * FROM read_parquet('{path}/*.parquet')"
    elif encode == "csv":
        # quoted "" is an empty string, not NULL (as in Postgres' CSV)
        query = (
            f"SELECT * FROM read_csv('{path}/*.csv', header = true, "
            f"allow_quoted_nulls = false, columns = {DUCK_TYPES})"
        )
    else:
        query = f"SELECT * FROM read_json('{path}/*.jsonl', columns = {DUCK_TYPES})"
    return con.sql(query + " ORDER BY id").to_arrow_table()


@pytest.mark.parametrize("encode", ["parquet", "csv", "json"])
def test_encodings_round_trip(tmp_path: Path, encode: str) -> None:
    out = tmp_path / "out"
    sink = make_sink(out, encode)
    sink.recover(None)
    sink.write(table(ROWS[:2]))
    sink.write(table(ROWS[2:]))
    checkpoint(sink, 1)
    ext = {"parquet": "parquet", "csv": "csv", "json": "jsonl"}[encode]
    assert published(out) == [part_name(1, 0, ext)]
    got = read_back(out, encode)
    assert got.cast(arrow_schema(SCHEMA)).to_pylist() == table(ROWS).to_pylist()


def test_csv_is_postgres_text_and_loads_with_copy(tmp_path: Path, catalog_dsn: str) -> None:
    """CSV values are Postgres' text format, so COPY reads them back exactly."""
    schema = [
        *SCHEMA,
        Column("iv", "interval"),
        Column("bin", "bytea"),
        Column("tags", "varchar[]"),
        Column("f4", "real"),
    ]
    rows = [r | {"iv": None, "bin": None, "tags": None, "f4": None} for r in ROWS]
    rows[0] |= {
        "iv": pa.MonthDayNano([1, 2, 3_000_000_000]),
        "bin": b"\x00\xff",
        "tags": ['a,"b"', None, ""],
        "f4": float("inf"),
    }
    data = pa.Table.from_pylist(rows, schema=arrow_schema(schema))
    out = tmp_path / "csv"
    sink = FileSink(
        ConnectorContext("c", "", tmp_path), schema, {"path": str(out)}, Format("plain", "csv")
    )
    sink.open()
    sink.write(data)
    checkpoint(sink, 3)
    text = (out / part_name(3, 0, "csv")).read_text()
    assert text.splitlines()[0] == ",".join(f'"{c.name}"' for c in schema)
    assert (
        '"t",-5,"0.1",12.50,' in text and '"2024-01-01 00:00:00.5","2024-01-01 12:00:00+00"' in text
    )

    cols = ", ".join(f'"{c.name}" {c.type}' for c in schema)
    with psycopg.connect(catalog_dsn, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute(f"CREATE TABLE back ({cols})")
        with conn.cursor().copy("COPY back FROM STDIN (FORMAT csv, HEADER true)") as copy:
            copy.write((out / part_name(3, 0, "csv")).read_bytes())
        got = conn.execute(
            "SELECT id, ok, amount, name, ts, tz, iv::text, bin, tags, f4 FROM back ORDER BY id"
        ).fetchall()
    assert got[0] == (
        1,
        True,
        Decimal("12.50"),
        ROWS[0]["name"],
        ROWS[0]["ts"],
        ROWS[0]["tz"],
        "1 mon 2 days 00:00:03",
        b"\x00\xff",
        ['a,"b"', None, ""],
        float("inf"),
    )
    assert got[1][3] == "" and got[2][1:] == (
        None,
        None,
        "ünï ☃",
        None,
        None,
        None,
        None,
        None,
        None,
    )
    # and the console / CSV text of the same rows matches what Postgres prints
    assert pg_text(data.select(["ok", "ts", "iv"])).to_pylist()[0] == {
        "ok": "t",
        "ts": "2024-01-01 00:00:00.5",
        "iv": "1 month 2 days 00:00:03",
    }


def test_json_lines_text(tmp_path: Path) -> None:
    out = tmp_path / "j"
    schema = [Column("id", "bigint"), Column("doc", "jsonb"), Column("x", "double precision")]
    sink = FileSink(
        ConnectorContext("j", "", tmp_path), schema, {"path": str(out)}, Format("plain", "json")
    )
    sink.open()
    sink.write(pa.table({"id": [1, 2], "doc": ['{"a": [1]}', None], "x": [float("nan"), 2.5]}))
    checkpoint(sink, 1)
    lines = (out / part_name(1, 0, "jsonl")).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"id": 1, "doc": {"a": [1]}, "x": "NaN"},
        {"id": 2, "doc": None, "x": 2.5},
    ]


def test_staged_files_are_invisible_until_commit(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = make_sink(out)
    sink.write(table(ROWS))
    sink.seal(1)
    sink.pre_commit(1, None)  # type: ignore[arg-type]
    staged = list((out / "_staging").rglob("*.parquet"))
    assert len(staged) == 1 and pq.read_table(staged[0]).num_rows == 3
    assert published(out) == []
    with pytest.raises(duckdb.IOException):  # DuckDB's glob skips _staging: no files yet
        read_back(out, "parquet")
    sink.commit(1)
    assert published(out) == [part_name(1, 0, "parquet")]
    assert read_back(out, "parquet").num_rows == 3
    assert list((out / "_staging").iterdir()) == []
    sink.commit(1)  # idempotent
    assert published(out) == [part_name(1, 0, "parquet")]


def test_recover_rolls_forward_and_back(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = make_sink(out)
    sink.recover(None)
    sink.write(table(ROWS[:1]))
    checkpoint(sink, 1)
    sink.write(table(ROWS[1:2]))
    sink.seal(2)
    sink.pre_commit(2, None)  # type: ignore[arg-type]  # recorded in the catalog, then a crash
    sink.write(table(ROWS[2:]))
    sink.seal(3)
    sink.pre_commit(3, None)  # type: ignore[arg-type]  # staged, never recorded
    del sink

    restarted = make_sink(out)
    restarted.recover(2)
    assert published(out) == [part_name(1, 0, "parquet"), part_name(2, 0, "parquet")]
    assert list((out / "_staging").iterdir()) == []
    assert read_back(out, "parquet").column("id").to_pylist() == [1, 2]

    # restarting again changes nothing; the replayed epoch 3 is published once
    again = make_sink(out)
    again.recover(2)
    again.write(table(ROWS[2:]))
    checkpoint(again, 3)
    assert read_back(out, "parquet").column("id").to_pylist() == [1, 2, 3]


def test_recover_after_a_partial_publish(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = make_sink(out, "json", max_rows_per_file="1")
    sink.write(table(ROWS))
    sink.seal(4)
    sink.pre_commit(4, None)  # type: ignore[arg-type]
    staged = sorted((out / "_staging").rglob("*.jsonl"))
    assert [p.name for p in staged] == [part_name(4, n, "jsonl") for n in range(3)]
    staged[0].rename(out / staged[0].name)  # crash in the middle of commit(4)
    restarted = make_sink(out, "json")
    restarted.recover(4)
    assert published(out) == [part_name(4, n, "jsonl") for n in range(3)]
    assert read_back(out, "json").column("id").to_pylist() == [1, 2, 3]


def test_recover_with_nothing_committed_and_stray_entries(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = make_sink(out, "csv")
    sink.write(table(ROWS))
    sink.seal(1)
    sink.pre_commit(1, None)  # type: ignore[arg-type]
    (out / "_staging" / "junk.tmp").write_text("x")
    make_sink(out, "csv").recover(None)
    assert published(out) == [] and list((out / "_staging").iterdir()) == []


def test_abort_empty_epochs_and_retractions(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = make_sink(out)
    checkpoint(sink, 1)  # empty: publishes nothing
    assert published(out) == []
    sink.write(table(ROWS, [1, -1, 1]))  # force_append_only: the retraction is dropped
    checkpoint(sink, 2, ok=False)
    assert published(out) == [] and list((out / "_staging").iterdir()) == []
    checkpoint(sink, 2)  # the aborted epoch's rows go out with the retry
    assert read_back(out, "parquet").column("id").to_pylist() == [1, 3]


def test_options_and_format_are_checked(tmp_path: Path) -> None:
    ctx = ConnectorContext("f", "", tmp_path)
    with pytest.raises(InvalidParameterValue, match="FORMAT"):
        FileSink(ctx, SCHEMA, {"path": str(tmp_path)}, None)
    with pytest.raises(InvalidParameterValue, match="AVRO"):
        FileSink(ctx, SCHEMA, {"path": str(tmp_path)}, Format("plain", "avro"))
    with pytest.raises(InvalidParameterValue, match="PLAIN"):
        FileSink(ctx, SCHEMA, {"path": str(tmp_path)}, Format("upsert", "json"))
    with pytest.raises(InvalidParameterValue, match="required"):
        FileSink(ctx, SCHEMA, {}, Format("plain", "json"))
    with pytest.raises(InvalidParameterValue, match="delimiter"):
        FileSink(ctx, SCHEMA, {"path": str(tmp_path)}, Format("plain", "csv", {"delimiter": ";;"}))
    with pytest.raises(InvalidParameterValue, match="max_rows_per_file"):
        FileSink(ctx, SCHEMA, {"path": str(tmp_path), "max_rows_per_file": "0"}, Format())
    sink = FileSink(
        ctx,
        SCHEMA,
        {"path": str(tmp_path)},
        Format("plain", "csv", {"delimiter": ";", "header": "false"}),
    )
    assert not sink.accepts_retractions and sink.exactly_once
    sink.open()
    sink.write(table(ROWS[:1]))
    checkpoint(sink, 1)
    assert (tmp_path / part_name(1, 0, "csv")).read_text().startswith('1;"t";-5;')
