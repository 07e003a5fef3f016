"""The engine end to end, in-process, against a real catalog database."""

from __future__ import annotations

import json

import duckdb
import psycopg
import pytest

from sqlstream.config import Settings
from sqlstream.engine.engine import Engine
from sqlstream.engine.loop import JobOptions, run_engine
from sqlstream.errors import SqlStreamError

GEN = """CREATE SOURCE gen (k BIGINT, v BIGINT, ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '1 second')
WITH (connector = 'datagen', datagen.rows.per.second = '0', datagen.rows.total = '5000',
      fields.k.min = '1', fields.k.max = '5', fields.v.kind = 'sequence')"""


@pytest.fixture
def engine(catalog_dsn, tmp_data_dir):
    e = Engine(Settings(data_dir=tmp_data_dir, checkpoint_interval=0.0), catalog_dsn)
    yield e
    e.close()


def _sqlstate(fn) -> str:
    with pytest.raises(SqlStreamError) as info:
        fn()
    return info.value.sqlstate


def test_view_over_datagen_and_catalog_rows(engine, catalog_dsn):
    engine.execute_script(
        GEN + "; CREATE MATERIALIZED VIEW totals AS SELECT k, count(*) AS n, sum(v) AS s "
        "FROM gen GROUP BY k;"
    )
    run_engine(engine, JobOptions(once=True))
    rows = sorted(tuple(r.values()) for r in engine.query("SELECT k, n, s FROM totals").to_pylist())
    # v is the sequence 0..4999; every row lands in one of 5 keys.
    assert sum(r[1] for r in rows) == 5000
    assert sum(r[2] for r in rows) == sum(range(5000))
    assert {r[0] for r in rows} == {1, 2, 3, 4, 5}
    with psycopg.connect(catalog_dsn) as conn:
        kinds = dict(conn.execute("SELECT name, kind FROM sqlstream.objects").fetchall())
        assert kinds == {"gen": "source", "totals": "materialized view"}
        (epochs,) = conn.execute("SELECT count(*) FROM sqlstream.checkpoints").fetchone()
        assert epochs >= 1
        (offset,) = conn.execute(
            "SELECT \"offset\" FROM sqlstream.source_offsets WHERE object = 'totals'"
        ).fetchone()
        assert offset == 5000
        # The state tables are plain Postgres tables with the keys and accumulators.
        states = conn.execute("SELECT state_table, kind FROM sqlstream.operator_state").fetchall()
        agg_table = next(t for t, k in states if k == "aggregate")
        schema, table = agg_table.split(".")
        got = conn.execute(f'SELECT k, "_rows" FROM {schema}."{table}"').fetchall()
        assert sorted(got) == sorted((r[0], r[1]) for r in rows)


def test_global_aggregate_has_a_row_before_any_input(engine):
    engine.execute_script(GEN + "; CREATE MATERIALIZED VIEW c AS SELECT count(*) AS n, sum(v) AS s FROM gen;")
    assert engine.query("SELECT * FROM c").to_pylist() == [{"n": 0, "s": None}]


def test_explain_shows_maintenance_decisions(engine):
    engine.execute_script(GEN + ";")
    (res,) = engine.execute_script(
        "EXPLAIN CREATE MATERIALIZED VIEW w AS SELECT window_start, count(*) AS n "
        "FROM TUMBLE(gen, ts, INTERVAL '10 seconds') WHERE v > 3 GROUP BY window_start "
        "EMIT ON WINDOW CLOSE"
    )
    text = "\n".join(r[0] for r in res.rows)
    assert "Materialize w [append-only]" in text
    assert "emit=on window close" in text
    assert "dropped when the watermark passes the window end" in text
    assert "WindowAssign TUMBLE(ts, INTERVAL" in text
    # the filter and the window assignment run inside the aggregate's fold (one statement)
    assert "emit=on window close over WindowAssign TUMBLE(ts, INTERVAL '10' SECONDS) + Filter" in text
    assert len(res.rows) == 3, text
    assert "Scan gen (source, watermark ts - INTERVAL" in text
    (res,) = engine.execute_script(
        "EXPLAIN CREATE MATERIALIZED VIEW u AS SELECT k, count(*) AS n FROM gen GROUP BY k"
    )
    assert res.rows[0][0] == "Materialize u [retracting]"


def test_unsupported_queries_are_refused_at_create(engine):
    engine.execute_script(GEN + ";")
    for sql in [
        "CREATE MATERIALIZED VIEW x AS SELECT k, random() AS r FROM gen",
        "CREATE MATERIALIZED VIEW x AS SELECT k, now() AS t FROM gen",
        "CREATE MATERIALIZED VIEW x AS SELECT k FROM gen LIMIT 3",
        "CREATE MATERIALIZED VIEW x AS SELECT any_value(v) AS a FROM gen GROUP BY k",
        "CREATE MATERIALIZED VIEW x AS SELECT k FROM gen INTERSECT SELECT v FROM gen",
        "CREATE MATERIALIZED VIEW x AS SELECT k, (SELECT max(g.v) FROM gen g "
        "WHERE g.k = gen.k AND g.v < gen.v) AS m FROM gen",
        "CREATE MATERIALIZED VIEW x AS SELECT k, rank() OVER (ORDER BY count(*)) AS r "
        "FROM gen GROUP BY k",
        "CREATE MATERIALIZED VIEW x AS SELECT k, count(*) AS n FROM gen GROUP BY k "
        "EMIT ON WINDOW CLOSE",
    ]:
        assert _sqlstate(lambda s=sql: engine.execute_script(s)) == "0A000", sql
    assert "x" not in engine.objects


def test_errors_carry_sqlstates(engine):
    engine.execute_script(GEN + ";")
    assert _sqlstate(lambda: engine.execute_script("CREATE MATERIALIZED VIEW x AS SELECT * FROM nope")) == "42P01"
    assert _sqlstate(lambda: engine.execute_script("CREATE MATERIALIZED VIEW x AS SELECT nope FROM gen")) == "42703"
    assert _sqlstate(lambda: engine.execute_script("CREATE MATERIALIZED VIEW x AS SELEC 1")) == "42601"
    assert _sqlstate(lambda: engine.execute_script(
        "CREATE SOURCE bad (a INT) WITH (connector = 'datagen', no.such.option = '1')")) == "22023"
    assert _sqlstate(lambda: engine.execute_script(
        "CREATE SOURCE bad (a INT) WITH (connector = 'kafkaa')")) == "22023"


def test_rerun_resumes_and_changed_definition_is_refused(catalog_dsn, tmp_data_dir):
    settings = Settings(data_dir=tmp_data_dir, checkpoint_interval=0.0)
    job = GEN + "; CREATE MATERIALIZED VIEW m AS SELECT k, count(*) AS n FROM gen GROUP BY k;"
    e = Engine(settings, catalog_dsn)
    e.execute_script(job)
    run_engine(e, JobOptions(once=True))
    e.close()

    e = Engine(settings, catalog_dsn)
    try:
        results = e.execute_script(job.replace("GROUP BY k", "GROUP  BY\n k"))  # whitespace only
        assert any("resuming" in n for r in results for n in r.notices)
        run_engine(e, JobOptions(once=True))
        assert sum(r["n"] for r in e.query("SELECT n FROM m").to_pylist()) == 5000
        changed = job.replace("count(*) AS n", "count(*) AS cnt")
        with pytest.raises(SqlStreamError) as info:
            e.execute_script(changed)
        assert '"m"' in str(info.value) and "--reset" in str(info.value)
        e.execute_script(changed, resets=frozenset({"m"}))
        run_engine(e, JobOptions(once=True))
        assert e.query("SELECT sum(cnt) AS t FROM m").to_pylist() == [{"t": 5000}]
    finally:
        e.close()


def test_drop_refuses_dependents_unless_cascade(engine, catalog_dsn):
    engine.execute_script(GEN + "; CREATE MATERIALIZED VIEW m AS SELECT k FROM gen;")
    assert _sqlstate(lambda: engine.execute_script("DROP SOURCE gen")) == "2BP01"
    engine.execute_script("DROP SOURCE gen CASCADE; DROP SOURCE IF EXISTS gen;")
    assert engine.objects == {}
    with psycopg.connect(catalog_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM sqlstream.objects").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM sqlstream.operator_state").fetchone() == (0,)


def test_show_and_describe(engine):
    engine.execute_script(GEN + "; CREATE MATERIALIZED VIEW m AS SELECT k, v * 2 AS w FROM gen;")
    (show,) = engine.execute_script("SHOW MATERIALIZED VIEWS")
    assert show.rows == [("m",)]
    (desc,) = engine.execute_script("DESCRIBE m")
    assert desc.rows == [("k", "bigint"), ("w", "bigint")]
    (flush,) = engine.execute_script("FLUSH")
    assert flush.status == "FLUSH"
    (ckpts,) = engine.execute_script("SHOW CHECKPOINTS")
    assert len(ckpts.rows) >= 1


def test_retracting_query_into_append_only_sink_is_refused(engine, tmp_data_dir):
    engine.execute_script(GEN + "; CREATE MATERIALIZED VIEW m AS SELECT k, count(*) AS n FROM gen GROUP BY k;")
    state = _sqlstate(lambda: engine.execute_script(
        f"CREATE SINK s FROM m WITH (connector = 'file', path = '{tmp_data_dir}/o') "
        "FORMAT PLAIN ENCODE PARQUET"))
    assert state == "0A000"
    assert "s" not in engine.objects


def test_bad_records_go_to_dead_letters(engine, catalog_dsn, tmp_data_dir):
    d = tmp_data_dir / "in"
    d.mkdir()
    lines = [json.dumps({"id": i, "name": f"n{i}"}) for i in range(5)]
    lines.insert(2, '{"id": "oops", "name": "bad"}')
    (d / "a.jsonl").write_text("\n".join(lines) + "\n")
    engine.execute_script(
        f"CREATE SOURCE f (id BIGINT, name VARCHAR) WITH (connector = 'file', path = '{d}') "
        "FORMAT PLAIN ENCODE JSON; CREATE MATERIALIZED VIEW m AS SELECT id, name FROM f;"
    )
    run_engine(engine, JobOptions(once=True))
    assert sorted(r["id"] for r in engine.query("SELECT id FROM m").to_pylist()) == [0, 1, 2, 3, 4]
    with psycopg.connect(catalog_dsn) as conn:
        rows = conn.execute("SELECT source, raw, reason FROM sqlstream.dead_letters").fetchall()
    assert len(rows) == 1
    assert rows[0][0] == "f" and b"oops" in bytes(rows[0][1]) and rows[0][2]


def test_second_engine_on_same_catalog_is_refused(engine, catalog_dsn, tmp_data_dir):
    with pytest.raises(SqlStreamError) as info:
        Engine(Settings(data_dir=tmp_data_dir), catalog_dsn)
    assert "another sqlstream engine" in str(info.value)


def test_state_from_another_plan_is_refused_unless_reset(catalog_dsn, tmp_data_dir):
    settings = Settings(data_dir=tmp_data_dir, checkpoint_interval=0.0)
    job = GEN + "; CREATE MATERIALIZED VIEW m AS SELECT k, count(*) AS n FROM gen GROUP BY k;"
    e = Engine(settings, catalog_dsn)
    e.execute_script(job)
    run_engine(e, JobOptions(once=True))
    e.close()
    # As if an older sqlstream had planned it differently, and laid its state out otherwise.
    with psycopg.connect(catalog_dsn) as conn:
        conn.execute("UPDATE sqlstream.operator_state SET fingerprint = 'older'")
        for (table,) in conn.execute("SELECT state_table FROM sqlstream.operator_state"):
            conn.execute(f"ALTER TABLE {table} DROP COLUMN __row")
    with pytest.raises(SqlStreamError) as info:
        Engine(settings, catalog_dsn)
    assert "--reset m" in str(info.value)
    e = Engine(settings, catalog_dsn, resets=frozenset({"m"}))
    try:
        e.execute_script(job)
        run_engine(e, JobOptions(once=True))
        # Recomputed from the source's beginning, not added to the old counts.
        assert e.query("SELECT sum(n) AS t FROM m").to_pylist() == [{"t": 5000}]
    finally:
        e.close()


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_on_error_skip_and_fail(policy, engine, catalog_dsn, tmp_data_dir):
    d = tmp_data_dir / "in"
    d.mkdir()
    (d / "a.jsonl").write_text('{"id": 1}\n{"id": "x"}\n{"id": 3}\n')
    engine.execute_script(
        f"CREATE SOURCE f (id BIGINT) WITH (connector = 'file', path = '{d}', "
        f"on_error = '{policy}') FORMAT PLAIN ENCODE JSON; "
        "CREATE MATERIALIZED VIEW m AS SELECT id FROM f;"
    )
    if policy == "fail":
        with pytest.raises(SqlStreamError) as info:
            run_engine(engine, JobOptions(once=True))
        assert info.value.sqlstate == "22000" and '"f"' in str(info.value)
        return
    run_engine(engine, JobOptions(once=True))
    assert sorted(r["id"] for r in engine.query("SELECT id FROM m").to_pylist()) == [1, 3]
    with psycopg.connect(catalog_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM sqlstream.dead_letters").fetchone() == (0,)


def test_metrics_snapshot(engine):
    engine.execute_script(GEN + "; CREATE MATERIALIZED VIEW m AS SELECT k, count(*) AS n FROM gen GROUP BY k;")
    run_engine(engine, JobOptions(once=True))
    m = engine.metrics()
    assert m["rows_in"] == 5000 and m["epoch"] >= 1
    (reader,) = m["readers"]
    assert reader["object"] == "m" and reader["rows"] == 5000 and reader["late_rows"] == 0
    (pipe,) = m["pipelines"]
    assert sorted(pipe["state_rows"].values()) == [5, 5]  # 5 groups; 5 view rows


def test_runtime_errors_of_queries_carry_sqlstates(engine):
    engine.execute_script("CREATE TABLE t (s VARCHAR); INSERT INTO t VALUES ('abc');")
    assert _sqlstate(lambda: engine.execute_script("SELECT s::INT AS i FROM t")) == "22P02"


def test_interrupt_query_cancels_only_an_ad_hoc_query(engine):
    import threading
    import time

    assert engine.interrupt_query() is False  # nothing running: nothing to stop
    engine.execute_script("CREATE TABLE t (v INT); INSERT INTO t SELECT range FROM range(3000);")
    stopper = threading.Timer(0.3, engine.interrupt_query)
    stopper.start()
    started = time.monotonic()
    state = _sqlstate(lambda: engine.execute_script(
        "SELECT count(*) AS n FROM t a, t b, t c WHERE (a.v * 7 + b.v * 13 + c.v) % 1000003 = 17"))
    assert state == "57014" and time.monotonic() - started < 10
    engine.execute_script("FLUSH")  # the engine goes on as before


PAD = """CREATE SOURCE padded (k BIGINT, v BIGINT, pad VARCHAR, ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '1 second')
WITH (connector = 'datagen', datagen.rows.per.second = '0', datagen.rows.total = '3000',
      fields.k.min = '1', fields.k.max = '5', fields.v.kind = 'sequence')"""


@pytest.mark.parametrize(
    "query, read",
    [
        ("SELECT k, sum(v) AS s FROM padded GROUP BY k", {"k", "v", "ts"}),
        # the watermark column is read even when the query does not name it
        ("SELECT count(*) AS n FROM padded", {"ts"}),
        (
            "SELECT window_start, count(*) AS n FROM TUMBLE(padded, ts, INTERVAL '1 second') "
            "GROUP BY window_start",
            {"ts"},
        ),
        # (the batch formulation of that TUMBLE is below)
        ("SELECT * FROM (SELECT * FROM padded) p WHERE p.k > 2", {"k", "v", "pad", "ts"}),
        (
            "SELECT a.k, b.pad FROM padded a JOIN padded b ON a.k = b.v",
            {"k", "v", "pad", "ts"},
        ),
    ],
)
def test_sources_produce_only_the_columns_a_query_reads(engine, query, read):
    """Column pruning: unread columns come back NULL from the generator, results unchanged."""
    engine.execute_script(PAD + f"; CREATE MATERIALIZED VIEW pv AS {query};")
    (reader, *_) = engine.pipelines["pv"].readers
    batch = reader.source.poll(100).data
    reader.source.seek({})  # that poll went around the reader: read it again
    produced = {n for n in batch.column_names if batch.column(n).null_count < batch.num_rows}
    assert produced == read
    run_engine(engine, JobOptions(once=True))
    con = duckdb.connect()
    src = engine._connector(engine.sources["padded"])  # noqa: SLF001 - a fresh, unpruned reader
    src.seek({})
    full = src.poll(10_000).data
    assert full.column("pad").null_count == 0
    con.register("padded", full)
    if "TUMBLE" in query:  # its batch formulation
        query = (
            "SELECT time_bucket(INTERVAL '1 second', ts, TIMESTAMP '1970-01-01') AS ws, "
            "count(*) FROM padded GROUP BY ws"
        )
    as_text = "SELECT COLUMNS(*)::VARCHAR FROM ({})"
    expected = sorted(con.sql(as_text.format(query)).fetchall())
    got = sorted(engine.con.sql(as_text.format("SELECT * FROM pv")).fetchall())
    assert got == expected


def test_where_conditions_over_both_sides_become_the_inner_join_condition(engine):
    # FROM a, b WHERE a.k = b.k is an equi-join (maintained by deltas), not a cross join
    # filtered afterwards (which could only be recomputed over the whole input)
    engine.execute_script(GEN + ";")
    (res,) = engine.execute_script(
        "EXPLAIN CREATE MATERIALIZED VIEW j AS SELECT a.k, b.v FROM gen a, gen b "
        "WHERE a.k = b.k AND a.v < b.v AND a.v > 2"
    )
    text = "\n".join(r[0] for r in res.rows)
    assert "DeltaJoin" in text and "recomputed" not in text, text
    # a.v > 2 filters the left input before the join (and its state)
    assert text.index("Filter") > text.index("DeltaJoin"), text
    # under an outer join the WHERE condition stays a filter above the join
    (res,) = engine.execute_script(
        "EXPLAIN CREATE MATERIALIZED VIEW j2 AS SELECT a.k, b.v FROM gen a LEFT JOIN gen b "
        "ON a.k = b.k WHERE b.v IS NULL OR a.v < b.v"
    )
    text = "\n".join(r[0] for r in res.rows)
    assert text.index("Filter") < text.index("Join LEFT"), text


@pytest.mark.parametrize("name", ["__row", "__weight", "__count", "__ord"])
def test_hidden_column_names_are_refused_before_anything_is_created(engine, name):
    engine.execute_script(GEN)
    view = f"CREATE MATERIALIZED VIEW m AS SELECT k AS {name}, count(*) AS n FROM gen GROUP BY k"
    assert _sqlstate(lambda: engine.execute_script(view)) == "42939"
    assert "m" not in engine.objects
    engine.execute_script(view.replace(f"AS {name}", "AS k"))
    assert "m" in engine.objects


@pytest.mark.parametrize(
    "create",
    [
        "CREATE MATERIALIZED VIEW v AS SELECT id, x::INT AS n FROM t",
        "CREATE SINK v AS SELECT id, x::INT AS n FROM t WITH (connector = 'blackhole')",
    ],
)
def test_a_create_failing_on_existing_rows_leaves_nothing_behind(engine, catalog_dsn, create):
    """The view's first rows are computed inside CREATE: when that fails, the statement fails
    whole, with a SQLSTATE, and the name is free again (also after a restart)."""
    engine.execute_script(
        "CREATE TABLE t (id INT PRIMARY KEY, x VARCHAR); INSERT INTO t VALUES (1, '5'), (2, 'abc');"
    )
    tables = "SELECT table_name FROM duckdb_tables() ORDER BY 1"
    before = engine.con.sql(tables).fetchall()
    assert _sqlstate(lambda: engine.execute_script(create)) == "22P02"
    assert "v" not in engine.objects and "v" not in engine.pipelines and "v" not in engine.sinks
    assert engine.con.sql(tables).fetchall() == before  # its DuckDB tables too
    with psycopg.connect(catalog_dsn) as conn:
        assert not conn.execute("SELECT 1 FROM sqlstream.objects WHERE name = 'v'").fetchall()
        assert not conn.execute(
            "SELECT 1 FROM sqlstream.operator_state WHERE object = 'v'"
        ).fetchall()
    engine.execute_script(create.replace("x::INT", "x"))
    assert "v" in engine.objects
