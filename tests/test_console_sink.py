"""The console sink prints aligned batches with +/- marks; the blackhole sink counts."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest

from sqlstream.connectors.base import ConnectorContext
from sqlstream.connectors.blackhole.sink import BlackholeSink
from sqlstream.connectors.console.sink import ConsoleSink
from sqlstream.connectors.registry import sink_class
from sqlstream.errors import InvalidParameterValue
from sqlstream.types import Column

CTX = ConnectorContext("c", "", Path("."))
SCHEMA = [
    Column("id", "bigint"),
    Column("name", "varchar"),
    Column("ok", "boolean"),
    Column("ts", "timestamp"),
]


def test_prints_each_batch_aligned_with_retractions(capsys: pytest.CaptureFixture[str]) -> None:
    sink = ConsoleSink(CTX, SCHEMA, {}, None)
    assert sink.accepts_retractions and not sink.exactly_once
    sink.write(
        pa.table(
            {
                "id": [1, 1000],
                "name": ["alice", None],
                "ok": [True, False],
                "ts": [dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 1, 0, 0, 1, 500000)],
                "__weight": [1, -1],
            }
        )
    )
    # printed at once, not at the checkpoint
    assert capsys.readouterr().out.splitlines() == [
        "op |  id  |  name | ok |           ts",
        "---+------+-------+----+----------------------",
        "+  |    1 | alice | t  | 2024-01-01 00:00:00",
        "-  | 1000 |       | f  | 2024-01-01 00:00:01.5",
        "",
    ]
    sink.write(pa.table({"id": [7], "name": ["x"], "ok": [None], "ts": [None]}))
    assert capsys.readouterr().out.splitlines()[2] == "+  |  7 | x    |    |"


def test_max_rows_and_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    sink = ConsoleSink(CTX, [Column("id", "integer")], {"max_rows": "2", "prefix": "== c"}, None)
    sink.write(pa.table({"id": pa.array([1, 2, 3, 4], pa.int32())}))
    sink.pre_commit(1, None)  # type: ignore[arg-type]
    sink.commit(1)
    assert capsys.readouterr().out.splitlines() == [
        "== c",
        "op | id",
        "---+---",
        "+  |  1",
        "+  |  2",
        "(2 more rows not shown)",
        "",
    ]
    assert sink.rows_written == 4
    with pytest.raises(InvalidParameterValue):
        ConsoleSink(CTX, SCHEMA, {"max_rows": "many"}, None)


def test_blackhole_counts_and_follows_checkpoints() -> None:
    sink = BlackholeSink(CTX, [Column("x", "bigint")], {}, None)
    sink.open()
    sink.recover(None)
    sink.write(pa.table({"x": [1, 2, 3]}))
    sink.write(pa.table({"x": [3, 4], "__weight": [-1, 1]}))
    sink.seal(1)
    sink.pre_commit(1, None)  # type: ignore[arg-type]
    sink.abort(1)
    assert sink.committed_rows == 0
    sink.write(pa.table({"x": [5]}))
    sink.seal(1)
    sink.write(pa.table({"x": [6]}))  # after the seal: the next epoch's
    sink.pre_commit(1, None)  # type: ignore[arg-type]
    sink.commit(1)
    assert (sink.inserts, sink.retractions, sink.committed_rows) == (6, 1, 6)
    with pytest.raises(InvalidParameterValue):
        BlackholeSink(CTX, [], {"path": "x"}, None)


def test_registry_finds_the_sinks() -> None:
    assert sink_class("console") is ConsoleSink
    assert sink_class("blackhole") is BlackholeSink
    assert sink_class("postgres").__name__ == "PostgresSink"
    assert sink_class("file").__name__ == "FileSink"
