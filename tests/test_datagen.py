"""The datagen source: deterministic values, offsets, bounds, partitions, pacing, options."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from sqlstream.connectors.base import ConnectorContext
from sqlstream.connectors.datagen.source import DatagenSource, parse_interval_ns
from sqlstream.errors import InvalidParameterValue
from sqlstream.types import Column, arrow_schema

SCHEMA = [Column("id", "bigint"), Column("v", "bigint"), Column("ts", "timestamp")]
FAST = {"datagen.rows.per.second": "0"}


def make(tmp_path: Path, options: dict[str, str], schema: list[Column] = SCHEMA) -> DatagenSource:
    return DatagenSource(ConnectorContext("gen", "", tmp_path), schema, options, None)


def drain(src: DatagenSource, sizes: list[int], limit: int) -> pa.Table:
    """Poll with the given batch sizes (cycled) until ``limit`` rows or nothing is left."""
    tables, n, i = [], 0, 0
    while n < limit:
        batch = src.poll(min(sizes[i % len(sizes)], limit - n))
        i += 1
        if batch is None:
            break
        assert batch.data.schema == arrow_schema(src.schema)
        tables.append(batch.data)
        n += batch.data.num_rows
    return pa.concat_tables(tables) if tables else arrow_schema(src.schema).empty_table()


def test_schema_and_defaults(tmp_path: Path) -> None:
    src = make(tmp_path, FAST)
    batch = src.poll(5000)
    assert batch is not None and batch.data.schema == arrow_schema(SCHEMA)
    assert batch.offsets == {"0": 5000}
    v = batch.data.column("v").to_pylist()
    assert min(v) >= 0 and max(v) < 1000 and len(set(v)) > 900
    ts = batch.data.column("ts").to_pylist()
    # unlimited rate: event time advances 1 ms per row from the default start
    assert ts[0] == dt.datetime(2024, 1, 1) and ts[1] - ts[0] == dt.timedelta(milliseconds=1)
    # different columns (names) get different values
    assert batch.data.column("id").to_pylist() != v


def test_same_values_for_any_batch_sizes(tmp_path: Path) -> None:
    one = drain(make(tmp_path, FAST), [10_000], 10_000)
    many = drain(make(tmp_path, FAST), [1, 7, 333, 64, 4096], 10_000)
    assert one.equals(many)


def test_seek_resumes_exactly(tmp_path: Path) -> None:
    reference = drain(make(tmp_path, FAST), [10_000], 10_000)
    src = make(tmp_path, FAST)
    first = drain(src, [123], 3_000)
    offsets = src.poll(1).offsets  # one more row, then "crash" after these offsets
    restarted = make(tmp_path, FAST)
    restarted.seek(offsets)
    rest = drain(restarted, [999], 10_000 - 3_001)
    head = reference.slice(0, 3_000)
    assert first.equals(head)
    assert rest.equals(reference.slice(3_001))


def test_seed_changes_values(tmp_path: Path) -> None:
    a = make(tmp_path, FAST).poll(100).data
    b = make(tmp_path, {**FAST, "datagen.seed": "7"}).poll(100).data
    c = make(tmp_path, {**FAST, "fields.v.seed": "7"}).poll(100).data
    assert a.column("v") != b.column("v") and a.column("id") != b.column("id")
    assert a.column("id") == c.column("id") and a.column("v") != c.column("v")


def test_rows_total_bounds_the_run(tmp_path: Path) -> None:
    src = make(tmp_path, {**FAST, "datagen.rows.total": "250"})
    out = drain(src, [100], 10_000)
    assert out.num_rows == 250 and src.finished()
    assert src.poll(100) is None
    # a restart at the end stays finished
    again = make(tmp_path, {**FAST, "datagen.rows.total": "250"})
    again.seek({"0": 250})
    assert again.finished() and again.poll(10) is None


def test_split_num(tmp_path: Path) -> None:
    opts = {
        **FAST,
        "datagen.split.num": "3",
        "datagen.rows.total": "100",
        "fields.id.kind": "sequence",
    }
    src = make(tmp_path, opts)
    assert src.partitions() == ["0", "1", "2"]
    batch = src.poll(10)
    assert batch.data.column("id").to_pylist() == list(range(10))
    # partition p has produced p, p+3, ...: its offset is the next global row it owes
    assert batch.offsets == {"0": 12, "1": 10, "2": 11}
    rest = drain(src, [17], 1_000)
    assert rest.column("id").to_pylist() == list(range(10, 100)) and src.finished()
    # values do not depend on the number of partitions
    single = drain(make(tmp_path, {**opts, "datagen.split.num": "1"}), [100], 100)
    assert pa.concat_tables([batch.data, rest]).equals(single)


def test_split_partitions_at_different_positions(tmp_path: Path) -> None:
    opts = {
        **FAST,
        "datagen.split.num": "2",
        "datagen.rows.total": "20",
        "fields.id.kind": "sequence",
    }
    src = make(tmp_path, opts)
    src.seek({"0": 10, "1": 3})  # partition 0 is ahead
    ids = drain(src, [4], 100).column("id").to_pylist()
    assert sorted(ids) == [3, 5, 7, 9] + list(range(10, 20))
    assert src.finished()


def test_pacing(tmp_path: Path) -> None:
    src = make(tmp_path, {"datagen.rows.per.second": "1000"})
    assert src.poll(10_000) is None  # nothing due at the first poll
    time.sleep(0.25)
    n = src.poll(10_000).data.num_rows
    assert 200 <= n <= 400
    # event time defaults to 1 s / rate
    ts = make(tmp_path, {"datagen.rows.per.second": "1000"})
    ts.seek({"0": 0})
    ts.poll(1)
    time.sleep(0.01)
    col = ts.poll(10).data.column("ts").to_pylist()
    assert col[1] - col[0] == dt.timedelta(milliseconds=1)


def test_pacing_counts_from_the_resume_point(tmp_path: Path) -> None:
    src = make(tmp_path, {"datagen.rows.per.second": "100"})
    src.seek({"0": 5_000})
    src.poll(10)
    time.sleep(0.1)
    batch = src.poll(10_000)
    assert batch is not None and batch.offsets["0"] < 5_050


def test_freeze(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterValue, match="rows.total"):
        make(tmp_path, FAST).freeze()
    # a total bounds --once
    src = make(tmp_path, {**FAST, "datagen.rows.total": "42"})
    src.freeze()
    assert drain(src, [1000], 1000).num_rows == 42 and src.finished()
    # with a rate and no total: the rows due at freeze time are the end
    paced = make(tmp_path, {"datagen.rows.per.second": "1000"})
    paced.poll(1)
    time.sleep(0.1)
    paced.freeze()
    time.sleep(0.1)
    n = drain(paced, [10_000], 10_000).num_rows
    assert 80 <= n <= 150 and paced.finished()
    assert paced.poll(10_000) is None


def test_sequence_and_ranges(tmp_path: Path) -> None:
    schema = [
        Column("seq", "integer"),
        Column("cyc", "smallint"),
        Column("r", "bigint"),
        Column("f", "double precision"),
        Column("n", "numeric(10,2)"),
        Column("s", "varchar"),
        Column("c", "varchar"),
        Column("k", "varchar"),
        Column("b", "boolean"),
        Column("d", "date"),
        Column("rd", "date"),
        Column("ts", "timestamptz"),
        Column("u", "uuid"),
    ]
    opts = {
        **FAST,
        "datagen.start.time": "2024-03-01T12:00:00Z",
        "datagen.time.step": "10 seconds",
        "fields.seq.kind": "sequence",
        "fields.seq.start": "5",
        "fields.cyc.kind": "sequence",
        "fields.cyc.start": "1",
        "fields.cyc.end": "3",
        "fields.r.min": "-5",
        "fields.r.max": "5",
        "fields.f.min": "10",
        "fields.f.max": "20",
        "fields.n.max": "9.99",
        "fields.s.length": "4",
        "fields.c.values": "red, green,blue",
        "fields.k.kind": "sequence",
        "fields.k.values": "a,b",
        "fields.rd.kind": "random",
        "fields.rd.min": "2020-01-01",
        "fields.rd.max": "2020-01-31",
    }
    t = make(tmp_path, opts, schema).poll(20_000).data
    assert t.schema == arrow_schema(schema)
    col = {name: t.column(name).to_pylist() for name in t.column_names}
    assert col["seq"][:3] == [5, 6, 7]
    assert col["cyc"][:7] == [1, 2, 3, 1, 2, 3, 1]
    assert set(col["r"]) == set(range(-5, 6))
    assert all(10 <= v < 20 for v in col["f"])
    assert all(Decimal("0") <= v <= Decimal("9.99") for v in col["n"])
    assert len({v for v in col["n"]}) > 900  # two decimal places are used
    assert all(len(v) == 4 and v.isalnum() for v in col["s"])
    assert set(col["c"]) == {"red", "green", "blue"}
    assert col["k"][:4] == ["a", "b", "a", "b"]
    assert set(col["b"]) == {True, False}
    assert col["d"][0] == dt.date(2024, 3, 1) and col["d"][-1] == dt.date(2024, 3, 3)
    assert min(col["rd"]) == dt.date(2020, 1, 1) and max(col["rd"]) == dt.date(2020, 1, 31)
    assert col["ts"][1] - col["ts"][0] == dt.timedelta(seconds=10)
    assert col["ts"][0] == dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)
    assert len(set(col["u"])) == len(col["u"]) and col["u"][0][14] == "4"


def test_interval_parsing() -> None:
    assert parse_interval_ns("1ms") == 1_000_000
    assert parse_interval_ns("10 milliseconds") == 10_000_000
    assert parse_interval_ns("1 second") == 10**9
    assert parse_interval_ns("1 minute 30 s") == 90 * 10**9
    with pytest.raises(ValueError):
        parse_interval_ns("soon")


@pytest.mark.parametrize(
    "options, match",
    [
        ({"datagen.rows.per.secnd": "5"}, "unknown option"),
        ({"fields.nope.kind": "random"}, "names no column"),
        ({"fields.v.kind": "later"}, "must be one of"),
        ({"fields.v.kind": "event_time"}, "event_time"),
        ({"fields.v.length": "3"}, "does not apply"),
        ({"fields.v.min": "10", "fields.v.max": "1"}, "must not exceed"),
        ({"fields.v.min": "x"}, "integer"),
        ({"datagen.rows.per.second": "fast"}, "number"),
        ({"datagen.split.num": "0"}, "at least 1"),
        ({"datagen.time.step": "soon"}, "interval"),
        ({"datagen.start.time": "yesterday"}, "timestamp"),
        ({"fields.v.values": "1,two"}, "is not a bigint"),
    ],
)
def test_bad_options(tmp_path: Path, options: dict[str, str], match: str) -> None:
    with pytest.raises(InvalidParameterValue, match=match):
        make(tmp_path, options)


def test_unsupported_type_needs_values(tmp_path: Path) -> None:
    schema = [Column("j", "jsonb")]
    with pytest.raises(InvalidParameterValue, match="values"):
        make(tmp_path, FAST, schema)
    t = make(tmp_path, {**FAST, "fields.j.values": '{"a": 1}'}, schema).poll(3).data
    assert t.column("j").to_pylist() == ['{"a": 1}'] * 3
