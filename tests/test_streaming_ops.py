"""Streaming operators over sources with watermarks: HOP windows, interval joins, temporal
joins, late rows, and state that stays bounded."""

from __future__ import annotations

import json
import time

import duckdb
import pytest

from sqlstream.config import Settings
from sqlstream.connectors.base import ConnectorContext
from sqlstream.connectors.datagen.source import DatagenSource
from sqlstream.engine.engine import Engine
from sqlstream.engine.loop import JobOptions, run_engine
from sqlstream.plan.intervals import epoch_us_sql
from sqlstream.sql.parser import parse_one

ROWS = 40_000


def source(name: str, rows: int = ROWS, seed: int = 1) -> str:
    return f"""CREATE SOURCE {name} (id BIGINT, k BIGINT, v BIGINT, ts TIMESTAMP,
        WATERMARK FOR ts AS ts - INTERVAL '1 second')
    WITH (connector = 'datagen', datagen.rows.per.second = '0', datagen.rows.total = '{rows}',
          datagen.seed = '{seed}', datagen.time.step = '1ms', fields.id.kind = 'sequence',
          fields.k.min = '0', fields.k.max = '50', fields.v.min = '0', fields.v.max = '1000')"""


def rows_of(ddl: str, tmp) -> object:
    stmt = parse_one(ddl)
    src = DatagenSource(ConnectorContext(stmt.name, "", tmp), stmt.columns, stmt.options, None)
    src.seek({})
    return src.poll(10**9).data


def norm(rows) -> list[tuple]:
    return sorted(
        (tuple(round(x, 6) if isinstance(x, float) else x for x in r) for r in rows), key=repr
    )


@pytest.fixture
def engine(catalog_dsn, tmp_data_dir):
    e = Engine(Settings(data_dir=tmp_data_dir, checkpoint_interval=0.0, batch_rows=3000), catalog_dsn)
    yield e
    e.close()


@pytest.mark.parametrize("eowc", [False, True])
def test_hop_window_equals_batch(engine, tmp_data_dir, eowc):
    engine.execute_script(
        source("s") + "; CREATE MATERIALIZED VIEW h AS SELECT window_start, window_end, k % 3 AS g, "
        "count(*) AS n, max(v) AS top FROM HOP(s, ts, INTERVAL '2 seconds', INTERVAL '5 seconds') "
        "GROUP BY window_start, window_end, k % 3" + (" EMIT ON WINDOW CLOSE" if eowc else "")
    )
    run_engine(engine, JobOptions(once=True))
    con = duckdb.connect()
    con.register("s", rows_of(source("s"), tmp_data_dir))
    expected = con.sql(
        "SELECT ws, ws + INTERVAL 5 SECOND, k % 3, count(*), max(v) FROM (SELECT *, unnest("
        "generate_series(TIMESTAMP '2023-12-31 23:59:50', TIMESTAMP '2024-01-01 00:01:00', "
        "INTERVAL 2 SECOND)) AS ws FROM s) WHERE ts >= ws AND ts < ws + INTERVAL 5 SECOND "
        "GROUP BY ALL"
    ).fetchall()
    got = [tuple(r.values()) for r in engine.query("SELECT * FROM h").to_pylist()]
    assert norm(got) == norm(expected)


def test_interval_join_equals_batch_and_state_stays_bounded(catalog_dsn, tmp_data_dir):
    rows = 120_000
    e = Engine(Settings(data_dir=tmp_data_dir, checkpoint_interval=0.0, batch_rows=4000), catalog_dsn)
    try:
        e.execute_script(
            source("a", rows, 1) + ";" + source("b", rows, 2) + ";"
            "CREATE MATERIALIZED VIEW ij AS SELECT a.id AS aid, b.id AS bid "
            "FROM a JOIN b ON a.k = b.k AND a.v = b.v "
            "AND b.ts BETWEEN a.ts - INTERVAL '1' SECOND AND a.ts + INTERVAL '2' SECOND;"
        )
        (res,) = e.execute_script(
            "EXPLAIN CREATE MATERIALIZED VIEW x AS SELECT a.id FROM a JOIN b ON a.k = b.k "
            "AND b.ts BETWEEN a.ts - INTERVAL '1' SECOND AND a.ts + INTERVAL '2' SECOND"
        )
        assert any("interval join" in r[0] for r in res.rows)
        e.freeze()
        state_sizes = []
        while not e.finished():
            e.run_epoch()
            e.checkpoint()
            join = next(op for op in e.pipelines["ij"].operators if "DeltaJoin" in type(op).__name__)
            state_sizes.append(sum(t.row_count() for t in join.state_tables))
        got = [tuple(r.values()) for r in e.query("SELECT * FROM ij").to_pylist()]
    finally:
        e.close()
    con = duckdb.connect()
    con.register("a", rows_of(source("a", rows, 1), tmp_data_dir))
    con.register("b", rows_of(source("b", rows, 2), tmp_data_dir))
    expected = con.sql(
        "SELECT a.id, b.id FROM a JOIN b ON a.k = b.k AND a.v = b.v "
        "AND b.ts BETWEEN a.ts - INTERVAL 1 SECOND AND a.ts + INTERVAL 2 SECOND"
    ).fetchall()
    assert norm(got) == norm(expected) and len(expected) > 10
    # 120 s of event time at 1 kHz per side; only ~3 s of it can still match: the state is
    # a few seconds' rows, flat from early on, not the whole input.
    assert max(state_sizes[len(state_sizes) // 4 :]) < 2 * 4 * 1000 + 2 * 4000
    assert max(state_sizes) < 0.1 * 2 * rows


def test_a_chain_of_interval_joins_equals_batch(engine, tmp_data_dir):
    """The second join's left side gets the first join's output, whose TINYINT column comes
    as int8 from one port's Arrow and as int16 from the other port's state table: held until
    the watermark, those batches must still combine."""
    ddl = [
        source(n, 6000, seed).replace("datagen.time.step = '1ms'", "datagen.time.step = '20ms'")
        for n, seed in (("a", 1), ("b", 2), ("c", 3))
    ]
    query = (
        "SELECT x.id, x.t, c.id AS cid FROM (SELECT a2.id, a2.k, a2.ts, a2.t FROM "
        "(SELECT id, k, ts, (v % 100)::TINYINT AS t FROM a) a2 JOIN b ON a2.k = b.k "
        "AND b.ts BETWEEN a2.ts - INTERVAL '1' SECOND AND a2.ts) x "
        "JOIN c ON x.k = c.k AND c.ts BETWEEN x.ts - INTERVAL '1' SECOND AND x.ts"
    )
    engine.execute_script(";".join(ddl) + f"; CREATE MATERIALIZED VIEW j AS {query}")
    run_engine(engine, JobOptions(once=True))
    got = [tuple(r.values()) for r in engine.query("SELECT * FROM j").to_pylist()]
    con = duckdb.connect()
    for name, text in zip("abc", ddl, strict=True):
        con.register(name, rows_of(text, tmp_data_dir))
    expected = con.sql(query).fetchall()
    assert norm(got) == norm(expected) and len(expected) > 100


def test_dropping_an_interval_join_lets_go_of_its_held_rows(engine, tmp_data_dir):
    """A time-bounded join side holds a batch as Arrow until the epoch's watermark is known;
    a view dropped before then takes those rows with it (they are registered with DuckDB, not
    in one of the state tables that DROP removes)."""
    engine.execute_script(
        source("a", 5000, 1) + ";" + source("b", 5000, 2) + ";"
        "CREATE MATERIALIZED VIEW ij AS SELECT a.id AS aid, b.id AS bid FROM a JOIN b "
        "ON a.k = b.k AND b.ts BETWEEN a.ts - INTERVAL '1' SECOND AND a.ts + INTERVAL '2' SECOND"
    )
    held = "SELECT count(*) FROM duckdb_views() WHERE view_name LIKE '__held_%'"
    engine.pipelines["ij"].feed("a", rows_of(source("a", 5000, 1), tmp_data_dir))
    assert engine.con.sql(held).fetchall() == [(1,)]
    engine.execute_script("DROP MATERIALIZED VIEW ij")
    assert engine.con.sql(held).fetchall() == [(0,)]


@pytest.mark.parametrize(
    ("column_type", "shift", "folded"),
    [
        ("timestamp", "INTERVAL '2' SECOND - (-INTERVAL '1' SECOND)", True),
        ("timestamp", "INTERVAL '1' DAY", True),  # a TIMESTAMP's day is always 24 h
        ("timestamp", "INTERVAL '1' MONTH", False),  # months differ in length
        ("timestamp", "-INTERVAL '4' YEAR", False),  # one leap day in four years, not in 2100
        ("timestamp", "INTERVAL '2' MONTH - INTERVAL '2' MONTH", False),  # 01-31 -> 01-29
        ("timestamptz", "INTERVAL '2' SECOND", False),  # zone arithmetic stays DuckDB's
    ],
)
def test_join_expiry_is_a_number_where_the_shift_has_a_fixed_length(column_type, shift, folded):
    """Join sides expire by ``epoch_us(column) + N < watermark`` where the shift always adds
    N microseconds, and by DuckDB's own timestamp arithmetic otherwise; both give the same
    numbers."""
    got = epoch_us_sql('s."ts"', "ts", column_type, shift)
    assert ("INTERVAL" not in got) == folded
    con = duckdb.connect()
    con.execute("SET TimeZone = 'Europe/Berlin'")
    values = con.sql(
        f"SELECT {got} = epoch_us(s.ts + {shift}) FROM (SELECT unnest(["
        "TIMESTAMP '2024-01-31 12:00:00', TIMESTAMP '2024-03-31 01:59:59.5', "
        "TIMESTAMP '2101-01-01 00:00:00', "
        f"TIMESTAMP '1969-12-31 23:59:59.999999'])::{column_type} AS ts) s"
    ).fetchall()
    assert values == [(True,)] * 4


def test_eowc_window_state_is_dropped(engine):
    engine.execute_script(
        source("s") + "; CREATE MATERIALIZED VIEW t AS SELECT window_start, count(*) AS n "
        "FROM TUMBLE(s, ts, INTERVAL '1 second') GROUP BY window_start EMIT ON WINDOW CLOSE"
    )
    engine.freeze()
    sizes = []
    while not engine.finished():
        engine.run_epoch()
        sizes.append(sum(t.row_count() for t in engine.pipelines["t"].operators[-1].state_tables))
    assert max(sizes) <= 5  # open windows only, never the 40 seen
    run_engine(engine, JobOptions(once=True))
    assert sum(r["n"] for r in engine.query("SELECT n FROM t").to_pylist()) == ROWS


def test_temporal_join_uses_the_table_as_of_processing_time(engine, tmp_data_dir):
    engine.execute_script(
        "CREATE TABLE dims (k BIGINT PRIMARY KEY, label VARCHAR);"
        "INSERT INTO dims VALUES (1, 'one'), (2, 'two');"
    )
    d = tmp_data_dir / "events"
    d.mkdir()
    (d / "1.jsonl").write_text("\n".join(json.dumps({"id": i, "k": i % 3}) for i in range(6)) + "\n")
    engine.execute_script(
        f"CREATE SOURCE ev (id BIGINT, k BIGINT) WITH (connector = 'file', path = '{d}') "
        "FORMAT PLAIN ENCODE JSON;"
        "CREATE MATERIALIZED VIEW enriched AS SELECT e.id, d.label FROM ev AS e "
        "LEFT JOIN dims FOR SYSTEM_TIME AS OF PROCTIME() AS d ON e.k = d.k;"
    )
    engine.execute_script("FLUSH")
    first = dict((r["id"], r["label"]) for r in engine.query("SELECT * FROM enriched").to_pylist())
    assert first == {0: None, 1: "one", 2: "two", 3: None, 4: "one", 5: "two"}
    # The table changes: later events see it, earlier output is not revised.
    engine.execute_script("UPDATE dims SET label = 'uno' WHERE k = 1; FLUSH;")
    (d / "2.jsonl").write_text(json.dumps({"id": 6, "k": 1}) + "\n")
    time.sleep(0.3)  # the file source lists its directory at most every 100 ms
    engine.execute_script("FLUSH")
    rows = dict((r["id"], r["label"]) for r in engine.query("SELECT * FROM enriched").to_pylist())
    assert rows == {**first, 6: "uno"}


def test_late_rows_are_counted_and_dropped(engine, tmp_data_dir):
    d = tmp_data_dir / "late"
    d.mkdir()
    lines = [
        {"id": 1, "ts": "2024-01-01 00:00:01"},
        {"id": 2, "ts": "2024-01-01 00:00:10"},  # watermark -> 00:00:09
        {"id": 3, "ts": "2024-01-01 00:00:02"},  # late: its window closed
        {"id": 4, "ts": "2024-01-01 00:00:09.5"},
    ]
    (d / "1.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    engine.execute_script(
        f"CREATE SOURCE l (id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1 second') "
        f"WITH (connector = 'file', path = '{d}') FORMAT PLAIN ENCODE JSON;"
        "CREATE MATERIALIZED VIEW w AS SELECT window_start, count(*) AS n, sum(id) AS ids "
        "FROM TUMBLE(l, ts, INTERVAL '5 seconds') GROUP BY window_start"
    )
    engine.settings.batch_rows = 2  # the late row arrives after the watermark moved
    run_engine(engine, JobOptions(once=True))
    got = {str(r["window_start"]): (r["n"], r["ids"]) for r in engine.query("SELECT * FROM w").to_pylist()}
    assert got == {"2024-01-01 00:00:00": (1, 1), "2024-01-01 00:00:05": (1, 4),
                   "2024-01-01 00:00:10": (1, 2)}
    (reader,) = engine.metrics()["readers"]
    assert reader["late_rows"] == 1


def test_join_states_recover_from_a_checkpoint(catalog_dsn, tmp_data_dir):
    """Delta-join and lookup state restored after a crash: the result is the failure-free one."""
    rows = 30_000
    job = (
        source("a", rows, 1) + ";" + source("b", rows, 2) + ";"
        "CREATE TABLE dims (k BIGINT PRIMARY KEY, label VARCHAR);"
        "INSERT INTO dims SELECT range AS k, 'k' || range AS label FROM range(0, 40);"
        "CREATE MATERIALIZED VIEW ij AS SELECT a.id AS aid, b.id AS bid, d.label "
        "FROM a JOIN b ON a.k = b.k AND a.v = b.v "
        "AND b.ts BETWEEN a.ts - INTERVAL '1' SECOND AND a.ts + INTERVAL '1' SECOND "
        "JOIN dims FOR SYSTEM_TIME AS OF PROCTIME() AS d ON a.k = d.k;"
    )
    settings = Settings(data_dir=tmp_data_dir, checkpoint_interval=3600, batch_rows=2000)
    e = Engine(settings, catalog_dsn)
    e.execute_script(job)
    for _ in range(4):
        e.run_epoch()
    e.checkpoint()
    for _ in range(3):
        e.run_epoch()  # lost in the crash
    e.close()
    e = Engine(settings, catalog_dsn)
    try:
        e.execute_script(job.split("CREATE TABLE")[0] + "CREATE MATERIALIZED VIEW ij AS"
                         + job.split("CREATE MATERIALIZED VIEW ij AS")[1])
        run_engine(e, JobOptions(once=True))
        got = [tuple(r.values()) for r in e.query("SELECT * FROM ij").to_pylist()]
    finally:
        e.close()
    con = duckdb.connect()
    con.register("a", rows_of(source("a", rows, 1), tmp_data_dir))
    con.register("b", rows_of(source("b", rows, 2), tmp_data_dir))
    expected = con.sql(
        "SELECT a.id, b.id, 'k' || a.k FROM a JOIN b ON a.k = b.k AND a.v = b.v "
        "AND b.ts BETWEEN a.ts - INTERVAL 1 SECOND AND a.ts + INTERVAL 1 SECOND WHERE a.k < 40"
    ).fetchall()
    assert norm(got) == norm(expected) and len(expected) > 5
