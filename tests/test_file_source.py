"""The file source (JSON lines, CSV, Parquet) and the decoders it uses."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import random
import time
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sqlstream.connectors.base import ConnectorContext, Format
from sqlstream.connectors.file.source import LIST_INTERVAL, FileSource
from sqlstream.errors import InvalidParameterValue
from sqlstream.formats.decode import decode_csv, decode_json
from sqlstream.types import Column, arrow_schema

SCHEMA = [
    Column("id", "bigint"),
    Column("amount", "double precision"),
    Column("ts", "timestamp"),
]
JSON = Format("plain", "json")
CSV = Format("plain", "csv")
PARQUET = Format("plain", "parquet")


def make(tmp_path: Path, fmt: Format = JSON, schema=SCHEMA, **options: str) -> FileSource:
    opts = {"path": str(tmp_path / "in"), **options}
    return FileSource(ConnectorContext("src", "", tmp_path), schema, opts, fmt)


def json_lines(ids: range) -> bytes:
    return b"".join(
        json.dumps({"id": i, "amount": i / 2, "ts": f"2024-01-01 00:00:{i % 60:02d}"}).encode()
        + b"\n"
        for i in ids
    )


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    """Write then rename into place, as writers should."""
    d = tmp_path / "in"
    d.mkdir(exist_ok=True)
    tmp = d / f".{name}.tmp"
    tmp.write_bytes(data)
    return tmp.rename(d / name)


def read_all(src: FileSource, batch: int = 1000, polls: int = 1000):
    ids, dead, offsets = [], [], None
    for _ in range(polls):
        b = src.poll(batch)
        if b is None:
            break
        assert b.data.schema == arrow_schema(src.schema)
        ids += b.data.column(0).to_pylist()
        dead += b.dead_letters
        offsets = b.offsets
    return ids, dead, offsets


def test_json_files_in_name_order(tmp_path: Path) -> None:
    write(tmp_path, "b.jsonl", json_lines(range(10, 20)))
    write(tmp_path, "a.jsonl", json_lines(range(0, 10)))
    src = make(tmp_path)
    b = src.poll(1000)
    assert b.data.column("id").to_pylist() == list(range(20))
    assert b.data.column("ts")[1].as_py() == dt.datetime(2024, 1, 1, 0, 0, 1)
    assert b.offsets == {"0": {"done": ["a.jsonl", "b.jsonl"], "file": None, "row": 0}}
    assert b.dead_letters == []


def test_new_file_after_first_poll(tmp_path: Path) -> None:
    write(tmp_path, "a.jsonl", json_lines(range(5)))
    src = make(tmp_path)
    assert src.poll(100).data.num_rows == 5
    assert src.poll(100) is None
    write(tmp_path, "b.jsonl", json_lines(range(5, 8)))
    time.sleep(LIST_INTERVAL * 1.5)
    b = src.poll(100)
    assert b.data.column("id").to_pylist() == [5, 6, 7]
    assert b.offsets["0"]["done"] == ["a.jsonl", "b.jsonl"]


def test_directory_may_appear_later(tmp_path: Path) -> None:
    src = make(tmp_path)
    assert src.poll(10) is None
    write(tmp_path, "a.jsonl", json_lines(range(3)))
    time.sleep(LIST_INTERVAL * 1.5)
    assert src.poll(10).data.num_rows == 3


def test_hidden_and_unmatched_names_are_skipped(tmp_path: Path) -> None:
    write(tmp_path, "a.jsonl", json_lines(range(3)))
    (tmp_path / "in" / ".b.jsonl").write_bytes(json_lines(range(100, 103)))
    (tmp_path / "in" / "_c.jsonl").write_bytes(json_lines(range(200, 203)))
    (tmp_path / "in" / "d.txt").write_bytes(json_lines(range(300, 303)))
    (tmp_path / "in" / "_staging").mkdir()
    ids, _, _ = read_all(make(tmp_path, pattern="*.jsonl"))
    assert ids == [0, 1, 2]


def test_resume_mid_file(tmp_path: Path) -> None:
    write(tmp_path, "a.jsonl", json_lines(range(0, 100)))
    write(tmp_path, "b.jsonl", json_lines(range(100, 150)))
    src = make(tmp_path)
    src.poll(30)
    b = src.poll(30)
    assert b.offsets == {"0": {"done": [], "file": "a.jsonl", "row": 60}}
    again = make(tmp_path)
    again.seek(b.offsets)
    ids, _, _ = read_all(again, batch=17)
    assert ids == list(range(60, 150))


def test_exactly_once_across_random_restarts(tmp_path: Path) -> None:
    data = bytearray()
    for n in range(6):
        lines = json_lines(range(n * 40, n * 40 + 40)).split(b"\n")
        lines.insert(7, b"oops")  # a bad line in each file
        lines.insert(20, b"")  # and a blank one
        write(tmp_path, f"f{n}.jsonl", b"\n".join(lines))
        data += b"\n".join(lines)
    rng = random.Random(1)
    for _ in range(5):
        offsets: dict = {}
        ids, dead = [], []
        while True:
            src = make(tmp_path)
            src.seek(offsets)
            b = src.poll(rng.randint(1, 50))
            if b is None:
                break
            ids += b.data.column("id").to_pylist()
            dead += [(d.offset["file"], d.offset["line"]) for d in b.dead_letters]
            offsets = b.offsets  # "checkpoint", then "crash"
        assert ids == list(range(240))
        assert dead == [(f"f{n}.jsonl", 8) for n in range(6)]


def test_json_bad_records_become_dead_letters(tmp_path: Path) -> None:
    lines = [
        b'{"id": 1, "amount": 1.5, "ts": "2024-01-01T00:00:01Z"}',
        b"not json at all",
        b"",
        b'{"id": "two", "amount": 2, "ts": "2024-01-01 00:00:02"}',
        b'{"id": 3, "amount": 3, "ts": "2024-01-01 00:00:03.25"}',
        b'{"id": 4, "amount": 4}',
        b'{"id": 5, "amount": 5, "ts": "the fifth of January"}',
        b'{"id": 6, "amount": null, "ts": null, "extra": [1, 2]}',
    ]
    write(tmp_path, "a.jsonl", b"\r\n".join(lines) + b"\r\n")
    ids, dead, offsets = read_all(make(tmp_path), batch=2)
    assert ids == [1, 3, 6]
    assert [(d.offset, d.raw) for d in dead] == [
        ({"file": "a.jsonl", "line": 2}, lines[1]),
        ({"file": "a.jsonl", "line": 4}, lines[3]),
        ({"file": "a.jsonl", "line": 6}, lines[5]),
        ({"file": "a.jsonl", "line": 7}, lines[6]),
    ]
    reasons = [d.reason for d in dead]
    assert "invalid JSON" in reasons[0]
    assert "column id" in reasons[1]
    assert reasons[2] == "missing column 'ts'"
    assert "column ts" in reasons[3]
    assert all(d.partition == "0" for d in dead)
    assert offsets == {"0": {"done": ["a.jsonl"], "file": None, "row": 0}}


def test_json_types(tmp_path: Path) -> None:
    schema = [
        Column("n", "numeric(10,2)"),
        Column("tz", "timestamptz"),
        Column("d", "date"),
        Column("b", "boolean"),
        Column("s", "varchar"),
        Column("j", "jsonb"),
        Column("a", "integer[]"),
    ]
    line = {
        "n": 1.255,
        "tz": "2024-01-01T02:00:00+02:00",
        "d": "2024-01-02",
        "b": True,
        "s": "x",
        "j": {"k": [1, 2]},
        "a": [1, 2],
    }
    write(tmp_path, "a.jsonl", json.dumps(line).encode() + b"\n")
    row = make(tmp_path, schema=schema).poll(10).data.to_pylist()[0]
    assert row["n"] == Decimal("1.26")
    assert row["tz"] == dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    assert row["d"] == dt.date(2024, 1, 2) and row["b"] is True and row["s"] == "x"
    assert json.loads(row["j"]) == {"k": [1, 2]} and row["a"] == [1, 2]


def test_csv(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.csv",
        b'note,ts,id,amount\n"x, y",2024-01-01 00:00:00,1,1.5\n'
        b"z,2024-01-01T00:00:01,2,\n"
        b'"multi\nline",2024-01-01 00:00:02,3,3\n',
    )
    write(
        tmp_path,
        "b.csv",
        b"note,ts,id,amount\nq,2024-01-01 00:00:03,4,4\nshort,row\nq,not a time,6,6\nq,2024-01-01,7,7\n",
    )
    ids, dead, _ = read_all(make(tmp_path, CSV, pattern="*.csv"), batch=2)
    assert ids == [1, 2, 3, 4, 7]
    assert [(d.offset, d.raw) for d in dead] == [
        ({"file": "b.csv", "line": 3}, b"short,row"),
        ({"file": "b.csv", "line": 4}, b"q,not a time,6,6"),
    ]
    assert "expected 4 fields" in dead[0].reason and "column ts" in dead[1].reason


def test_csv_without_header_and_delimiter(tmp_path: Path) -> None:
    write(tmp_path, "a.csv", b"1;2.5;2024-01-01 00:00:00\n2;;2024-01-01 00:00:01\n")
    src = make(tmp_path, CSV, **{"csv.header": "false", "csv.delimiter": ";"})
    t = src.poll(10).data
    assert t.column("id").to_pylist() == [1, 2] and t.column("amount").to_pylist() == [2.5, None]
    # the sink-style ENCODE CSV (header = 'false', delimiter = ';') works too
    src = make(tmp_path, Format("plain", "csv", {"header": "false", "delimiter": ";"}))
    assert src.poll(10).data.num_rows == 2


def test_csv_missing_header_column(tmp_path: Path) -> None:
    write(tmp_path, "a.csv", b"id,amount\n1,2\n3,4\n")
    ids, dead, _ = read_all(make(tmp_path, CSV))
    assert ids == [] and [d.offset["line"] for d in dead] == [2, 3]
    assert dead[0].reason == "missing column 'ts' (not in the header)"


def test_parquet(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    table = pa.table(
        {
            "ts": pa.array([0, 1_000_000_000], pa.timestamp("ns")),
            "id": pa.array([1, 2], pa.int32()),
            "amount": pa.array([0.5, 1.5], pa.float32()),
            "other": ["a", "b"],
        }
    )
    pq.write_table(table, d / "a.parquet")
    pq.write_table(table.drop_columns(["amount"]), d / "b.parquet")
    (d / "c.parquet").write_bytes(b"this is not parquet")
    pq.write_table(table, d / "d.parquet")
    src = make(tmp_path, PARQUET)
    ids, dead, offsets = read_all(src, batch=1)
    assert ids == [1, 2, 1, 2]
    assert [d.offset for d in dead] == [{"file": "b.parquet"}, {"file": "c.parquet"}]
    assert "missing column 'amount'" in dead[0].reason
    assert dead[1].raw == b"this is not parquet"
    assert offsets["0"]["done"] == ["a.parquet", "b.parquet", "c.parquet", "d.parquet"]
    again = make(tmp_path, PARQUET)
    again.seek(
        {"0": {"done": ["a.parquet", "b.parquet", "c.parquet"], "file": "d.parquet", "row": 1}}
    )
    assert again.poll(10).data.to_pylist() == [
        {"id": 2, "amount": 1.5, "ts": dt.datetime(1970, 1, 1, 0, 0, 1)}
    ]


def test_compressed_file(tmp_path: Path) -> None:
    write(tmp_path, "a.jsonl.gz", gzip.compress(json_lines(range(4))))
    assert make(tmp_path).poll(10).data.column("id").to_pylist() == [0, 1, 2, 3]


def test_freeze(tmp_path: Path) -> None:
    write(tmp_path, "a.jsonl", json_lines(range(5)))
    src = make(tmp_path)
    src.poll(2)
    src.freeze()
    write(tmp_path, "b.jsonl", json_lines(range(5, 10)))  # after the freeze: not read
    assert not src.finished()
    time.sleep(LIST_INTERVAL * 1.5)
    ids, _, _ = read_all(src)
    assert ids == [2, 3, 4] and src.finished()
    assert src.poll(10) is None
    # an empty directory is finished at once
    empty = make(tmp_path / "other")
    empty.freeze()
    assert empty.finished()


def test_forgets_deleted_files(tmp_path: Path) -> None:
    write(tmp_path, "a.jsonl", json_lines(range(2)))
    src = make(tmp_path)
    src.poll(10)
    (tmp_path / "in" / "a.jsonl").unlink()
    write(tmp_path, "b.jsonl", json_lines(range(2, 4)))
    time.sleep(LIST_INTERVAL * 1.5)
    assert src.poll(10).offsets["0"]["done"] == ["b.jsonl"]


@pytest.mark.parametrize(
    "options, fmt, match",
    [
        ({"paht": "x"}, JSON, "unknown option"),
        ({}, JSON, "'path' is required"),
        ({"path": "x"}, None, "FORMAT PLAIN ENCODE"),
        ({"path": "x"}, Format("plain", "avro"), "cannot read ENCODE AVRO"),
        ({"path": "x"}, Format("debezium", "json"), "PLAIN only"),
        ({"path": "x", "csv.header": "maybe"}, CSV, "must be one of"),
        ({"path": "x", "csv.delimiter": ";;"}, CSV, "one character"),
        ({"path": "x"}, Format("plain", "json", {"header": "true"}), "unknown ENCODE"),
    ],
)
def test_bad_options(tmp_path: Path, options: dict, fmt: Format | None, match: str) -> None:
    with pytest.raises(InvalidParameterValue, match=match):
        FileSource(ConnectorContext("src", "", tmp_path), SCHEMA, options, fmt)


# -- the decoders on their own (as message sources use them)


def test_decode_json_payloads() -> None:
    payloads = [
        b'{"id": 1, "amount": 1, "ts": null}',
        b"",
        b'{\n "id": 2, "amount": 2,\n "ts": null}',
        b"{",
    ]
    d = decode_json(payloads, SCHEMA)
    assert d.table.column("id").to_pylist() == [1, 2] and d.index.tolist() == [0, 2]
    assert [(r.index, r.raw) for r in d.rejected] == [(1, b""), (3, b"{")]
    assert d.records == 4


def test_decode_csv_payloads() -> None:
    d = decode_csv([b"1,2.5,2024-01-01 00:00:00", b"x,1,2024-01-01"], SCHEMA)
    assert d.table.column("id").to_pylist() == [1] and d.rejected[0].index == 1


def test_decode_json_fast_path_has_no_rejects() -> None:
    data = json_lines(range(10_000))
    d = decode_json(data, SCHEMA)
    assert d.table.num_rows == 10_000 and d.records == 10_000 and not d.rejected


def test_reads_what_the_file_sink_encoders_write() -> None:
    from sqlstream.formats.encode import encode_csv, encode_json_lines

    schema = [
        Column("b", "boolean"),
        Column("n", "numeric(10,2)"),
        Column("s", "varchar"),
        Column("ts", "timestamp"),
        Column("tz", "timestamptz"),
        Column("d", "date"),
        Column("by", "bytea"),
    ]
    rows = [
        {
            "b": True,
            "n": Decimal("1.50"),
            "s": 'a,"b"\nc',
            "ts": dt.datetime(2024, 1, 1, 0, 0, 0, 500000),
            "tz": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
            "d": dt.date(2024, 1, 2),
            "by": b"\x00\xff",
        },
        {"b": False, "n": None, "s": "", "ts": None, "tz": None, "d": None, "by": None},
    ]
    table = pa.Table.from_pylist(rows, schema=arrow_schema(schema))
    assert decode_csv(encode_csv(table), schema).table.equals(table)
    assert decode_json(encode_json_lines(table, schema), schema).table.equals(table)
