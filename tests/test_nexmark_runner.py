"""The Nexmark runner's correctness check: two queries (a stateless one and a HOP window with a
join) as sqlstream views over a few thousand events equal DuckDB's batch result over the same
events materialised to Parquet."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parents[1] / "benchmarks" / "nexmark" / "run.py"


@pytest.fixture(scope="module")
def runner():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("nexmark_run", RUNNER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["nexmark_run"] = module
    spec.loader.exec_module(module)
    return module


def test_every_query_file_runs_or_says_why(runner) -> None:  # type: ignore[no-untyped-def]
    for name in runner.ALL_QUERIES:
        q = runner.Query(name)
        assert (q.view is not None and q.batch is not None) or q.reason, name
        if q.view is not None:
            assert f"CREATE MATERIALIZED VIEW nexmark_{name} AS" in q.view


def test_views_equal_duckdb_batch(runner, catalog_dsn: str, tmp_data_dir: Path) -> None:  # type: ignore[no-untyped-def]
    result = runner.check(["q1", "q5"], 4000, catalog_dsn, tmp_data_dir)
    assert result == {"q1": [], "q5": []}


def test_check_reports_a_difference(runner) -> None:  # type: ignore[no-untyped-def]
    import pyarrow as pa

    a = pa.table({"x": [1, 2, 2], "y": [0.5, 1.0, 1.0]})
    b = pa.table({"x": [1, 2], "y": [0.5, 1.0]})
    assert runner.differences(a, a) == []
    assert runner.differences(a, b) == ["only in view: ('2', '1.0')"]


def test_throughput_runs_are_sinks_into_blackhole(runner, catalog_dsn: str, tmp_data_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from sqlstream.sql import statements as st
    from sqlstream.sql.parser import parse

    for name in runner.ALL_QUERIES:
        q = runner.Query(name)
        if q.view is None:
            continue
        *_, last = parse(runner.sources_sql(10) + ";\n" + q.script("blackhole"))
        assert isinstance(last, st.CreateSink), name
        assert last.name == f"nexmark_{name}" and last.options["connector"] == "blackhole"
    rate, rows = runner.run_stream(
        runner.Query("q1"), 3000, catalog_dsn, tmp_data_dir / "bh", 1.0, into="blackhole"
    )
    assert rate > 0 and rows is None
