"""Operator state tables: the vnode of a key is fixed forever (DESIGN §6)."""

from __future__ import annotations

import hashlib

import duckdb
import psycopg

from sqlstream.state.append_log import AppendLog
from sqlstream.state.table import TRUNCATE_MIN_ROWS, StateTable


def test_vnode_is_the_first_md5_byte_of_the_key_text() -> None:
    con = duckdb.connect()
    st = StateTable(con, "op", [("w", "TIMESTAMP"), ("k", "BIGINT")], [("n", "BIGINT")])
    st.create()
    con.execute(
        f"INSERT INTO {st.table} VALUES (TIMESTAMP '2024-01-01 00:00:10', 7, 1), "
        "(NULL, 8, 2), (TIMESTAMP '1999-12-31 23:59:59', NULL, 3)"
    )
    st.mark_all_dirty()
    delta = st.delta()
    assert delta.dropped.num_rows == 0
    got = {(r["w"] and str(r["w"]), r["k"]): r["vnode"] for r in delta.rows.to_pylist()}
    texts = {
        ("2024-01-01 00:00:10", 7): "2024-01-01 00:00:10|7",
        (None, 8): "\\N|8",
        ("1999-12-31 23:59:59", None): "1999-12-31 23:59:59|\\N",
    }
    assert got == {key: hashlib.md5(t.encode()).digest()[0] for key, t in texts.items()}


def _fresh_mirror(conn, *tables: StateTable | AppendLog) -> None:
    """Empty Postgres mirrors for ``tables`` (left over from an earlier run: dropped)."""
    conn.execute("CREATE SCHEMA IF NOT EXISTS sqlstream_state")
    for t in tables:
        conn.execute(f"DROP TABLE IF EXISTS sqlstream_state.{t.operator_id}")
        with conn.cursor() as cur:
            t.pg_create(cur)


def _mirror(conn, st: StateTable) -> list[tuple]:
    return conn.execute(
        f"SELECT k, n, __row FROM sqlstream_state.{st.operator_id} ORDER BY k, __row"
    ).fetchall()


def test_postgres_gets_deletes_only_for_keys_it_holds(pg_dsn: str) -> None:
    """A key added and removed between two checkpoints costs Postgres nothing; a changed key's
    row is replaced by one under a new row id, a gone key's row deleted, also after the state
    was reloaded from Postgres. Keys holding NULL are keys like any other."""
    con = duckdb.connect()
    st = StateTable(con, "op_deletes", [("k", "BIGINT")], [("n", "BIGINT")])
    st.create()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        _fresh_mirror(conn, st)

        def checkpoint(table: StateTable = st) -> tuple[int, int]:
            with conn.transaction(), conn.cursor() as cur:
                return table.pg_write(cur, table.delta())

        con.execute(f"INSERT INTO {st.table} VALUES (1, 10), (2, 20), (NULL, 5)")
        st.mark_all_dirty()
        assert checkpoint() == (3, 0)
        assert sorted(r[2] for r in _mirror(conn, st)) == [0, 1, 2]
        # 3 arrives and goes within one interval, 2 (in Postgres) goes, 1 changes
        con.execute(f"INSERT INTO {st.table} VALUES (3, 30)")
        con.execute(f"INSERT INTO {st.dirty} VALUES (3)")
        con.execute(f"DELETE FROM {st.table} WHERE k IN (2, 3)")
        con.execute(f"UPDATE {st.table} SET n = 11 WHERE k = 1")
        con.execute(f"INSERT INTO {st.dirty} VALUES (1), (2), (3)")
        assert checkpoint() == (1, 2)  # 1's new row; 1's old row and 2's row deleted
        null_row = [r[2] for r in _mirror(conn, st) if r[0] is None]
        assert _mirror(conn, st) == [(1, 11, 3), (None, 5, null_row[0])]
        # recovered from Postgres: its keys and their row ids are known, new ids go on
        fresh = StateTable(con, "op_deletes", [("k", "BIGINT")], [("n", "BIGINT")])
        assert fresh.pg_load(conn) == 2
        con.execute(f"UPDATE {fresh.table} SET n = 6 WHERE k IS NULL")
        con.execute(f"INSERT INTO {fresh.dirty} VALUES (NULL)")
        assert checkpoint(fresh) == (1, 1)
        assert _mirror(conn, fresh) == [(1, 11, 3), (None, 6, 4)]
        con.execute(f"DELETE FROM {fresh.table} WHERE k IS NULL")
        con.execute(f"INSERT INTO {fresh.dirty} VALUES (NULL)")
        assert checkpoint(fresh) == (0, 1)
        assert _mirror(conn, fresh) == [(1, 11, 3)]


def _seq_scans(cur, table: str) -> int:
    return cur.execute(
        "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relid = %s::regclass", [table]
    ).fetchone()[0]


def _keyed_and_log(
    con: duckdb.DuckDBPyConnection, name: str, bounded: bool = False
) -> tuple[StateTable, AppendLog]:
    """A keyed state table (k -> n) and an append log (k), both created."""
    st = StateTable(con, name, [("k", "BIGINT")], [("n", "BIGINT")], bounded=bounded)
    st.create()
    log = AppendLog(con, f"{name}_log", [("k", "BIGINT")])
    log.create()
    return st, log


def test_checkpoint_deletes_probe_by_row_id_not_scan_the_state(pg_dsn: str) -> None:
    """Deleting a few changed keys' rows must not read the whole state table (its cost
    follows the change), for keyed state and for append logs alike."""
    con = duckdb.connect()
    st, log = _keyed_and_log(con, "op_probe")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        _fresh_mirror(conn, st, log)
        con.execute(f"INSERT INTO {st.table} SELECT i, 0 FROM range(50000) t(i)")
        st.mark_all_dirty()
        log.append(con.sql("SELECT i AS k FROM range(50000) t(i)").to_arrow_table())
        with conn.transaction(), conn.cursor() as cur:
            st.pg_write(cur, st.delta())
            log.pg_write(cur, log.delta())
        log.delete_where("s.k = 49999")  # a log's first delete builds its index (one scan)
        with conn.transaction(), conn.cursor() as cur:
            assert log.pg_write(cur, log.delta()) == (0, 1)
        conn.execute("ANALYZE sqlstream_state.op_probe")
        conn.execute("ANALYZE sqlstream_state.op_probe_log")
        con.execute(f"UPDATE {st.table} SET n = 1 WHERE k % 50 = 0")
        con.execute(f"INSERT INTO {st.dirty} SELECT i FROM range(0, 50000, 50) t(i)")
        log.delete_where("s.k % 50 = 0")
        with conn.transaction(), conn.cursor() as cur:
            names = [f"sqlstream_state.{t.operator_id}" for t in (st, log)]
            before = [_seq_scans(cur, n) for n in names]
            assert st.pg_write(cur, st.delta()) == (1000, 1000)
            assert log.pg_write(cur, log.delta()) == (0, 1000)
            assert [_seq_scans(cur, n) for n in names] == before
        assert conn.execute("SELECT count(*), sum(n) FROM sqlstream_state.op_probe").fetchone() == (
            50000,
            1000,
        )
        assert conn.execute("SELECT count(*) FROM sqlstream_state.op_probe_log").fetchone()[0] == 48999


def test_a_log_that_drops_most_of_what_it_holds_needs_no_index(pg_dsn: str) -> None:
    """A short time bound drops about as much as it keeps: one hash join deletes it, and the
    log never pays for index entries; the rows left are the right ones."""
    con = duckdb.connect()
    log = AppendLog(con, "op_churn_log", [("k", "BIGINT")])
    log.create()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        _fresh_mirror(conn, log)
        for start in range(0, 4000, 1000):  # each checkpoint: 1000 new rows, older ones go
            log.delete_where(f"s.k < {start}")
            log.append(con.sql(f"SELECT i AS k FROM range({start}, {start + 1000}) t(i)").to_arrow_table())
            with conn.transaction(), conn.cursor() as cur:
                log.pg_write(cur, log.delta())
        assert conn.execute(
            f"SELECT min(k), max(k), count(*) FROM sqlstream_state.{log.operator_id}"
        ).fetchone() == (3000, 3999, 1000)
        assert not conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = %s", [log.operator_id]
        ).fetchall()


def test_a_deferred_log_inserts_only_the_held_rows_that_outlive_the_watermark(pg_dsn: str) -> None:
    """A join side with a time bound holds its batches as Arrow until the next expiry: they
    are read with the table until then, only the rows that stay are inserted, and a
    checkpoint in between writes them all (and later deletes them from Postgres by id)."""
    con = duckdb.connect()
    log = AppendLog(con, "op_deferred_log", [("k", "BIGINT")], defer=True)
    log.create()

    def rows(relation: str) -> list[int]:
        return [k for (k,) in con.sql(f"SELECT k FROM {relation} ORDER BY k").fetchall()]

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        _fresh_mirror(conn, log)
        log.append(con.sql("SELECT i AS k FROM range(0, 10) t(i)").to_arrow_table())
        log.append(con.sql("SELECT i AS k FROM range(10, 20) t(i)").to_arrow_table())
        assert rows(log.table) == [] and rows(log.relation) == list(range(20))
        assert log.delete_where("s.k < 15") == 15
        assert rows(log.table) == rows(log.relation) == list(range(15, 20))
        assert log.row_count() == 5

        log.append(con.sql("SELECT i AS k FROM range(20, 30) t(i)").to_arrow_table())
        with conn.transaction(), conn.cursor() as cur:  # a checkpoint while rows are held
            log.pg_write(cur, log.delta())
        assert rows(log.table) == list(range(15, 30))
        mirror = f"SELECT k, __row FROM sqlstream_state.{log.operator_id} ORDER BY k"
        assert conn.execute(mirror).fetchall() == [(k, k) for k in range(15, 30)]

        log.append(con.sql("SELECT i AS k FROM range(30, 40) t(i)").to_arrow_table())
        assert log.delete_where("s.k < 25 OR s.k >= 38") == 12  # 10 checkpointed, 2 held
        with conn.transaction(), conn.cursor() as cur:
            log.pg_write(cur, log.delta())
        assert rows(log.relation) == list(range(25, 38)) and log.row_count() == 13
        assert conn.execute(mirror).fetchall() == [(k, k) for k in range(25, 38)]


def test_a_deferred_log_holds_batches_of_differing_arrow_types_in_its_own() -> None:
    """Batches of one input may carry a column in different Arrow types (a TINYINT as int8
    from an operator's Arrow, as int16 from a state table's SMALLINT): held, they take the
    log's types, as an INSERT would have cast them."""
    import pyarrow as pa

    con = duckdb.connect()
    log = AppendLog(con, "op_types_log", [("t", "SMALLINT")], defer=True)
    log.create()
    log.append(pa.table({"t": pa.array([1, 2], pa.int8())}))
    log.append(pa.table({"t": pa.array([3, 300], pa.int16())}))
    assert con.sql(f"SELECT sum(t) FROM {log.relation}").fetchall() == [(306,)]
    assert log.delete_where("s.t < 3") == 2
    assert con.sql(f"SELECT t FROM {log.table} ORDER BY t").fetchall() == [(3,), (300,)]


def test_a_global_aggregate_row_survives_reloads(pg_dsn: str) -> None:
    """The one row of a keyless state: after each reload it is replaced, never duplicated."""
    con = duckdb.connect()

    def fresh() -> StateTable:
        return StateTable(con, "op_global", [], [("n", "BIGINT")])

    st = fresh()
    st.create()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        _fresh_mirror(conn, st)
        con.execute(f"INSERT INTO {st.table} VALUES (5)")
        st.mark_all_dirty()
        with conn.transaction(), conn.cursor() as cur:
            st.pg_write(cur, st.delta())
        for n in (6, 7):
            st = fresh()
            assert st.pg_load(conn) == 1
            con.execute(f"UPDATE {st.table} SET n = {n}")
            st.mark_all_dirty()
            with conn.transaction(), conn.cursor() as cur:
                assert st.pg_write(cur, st.delta()) == (1, 1)
            assert conn.execute(
                f"SELECT n FROM sqlstream_state.{st.operator_id}"
            ).fetchall() == [(n,)]


def _filenode(conn, t: StateTable | AppendLog) -> int:
    return conn.execute(
        "SELECT pg_relation_filenode(%s::regclass)", [f"sqlstream_state.{t.operator_id}"]
    ).fetchone()[0]


def test_a_checkpoint_dropping_every_row_empties_the_mirror_at_once(pg_dsn: str) -> None:
    """When every row Postgres holds goes (all windows closed, all of a log's rows expired),
    and they are many, the mirror is truncated instead of deleted from row by row; a partial
    drop or a small table is not; and a session reading the mirror in an open transaction
    does not hold the checkpoint up (the rows are then deleted)."""
    many = TRUNCATE_MIN_ROWS
    con = duckdb.connect()
    st, log = _keyed_and_log(con, "op_empty", bounded=True)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        _fresh_mirror(conn, st, log)

        def checkpoint() -> None:
            with conn.transaction(), conn.cursor() as cur:
                st.pg_write(cur, st.delta())
                log.pg_write(cur, log.delta())

        def replace_all(first: int, count: int) -> None:
            """Every key of st goes, ``count`` new ones from ``first`` come."""
            con.execute(f"INSERT INTO {st.dirty} SELECT k FROM {st.table}")
            con.execute(f"DELETE FROM {st.table}")
            con.execute(f"INSERT INTO {st.table} SELECT i, i FROM range({first}, {first + count}) t(i)")
            con.execute(f"INSERT INTO {st.dirty} SELECT i FROM range({first}, {first + count}) t(i)")

        con.execute(f"INSERT INTO {st.table} SELECT i, i FROM range({2 * many}) t(i)")
        st.mark_all_dirty()
        log.append(con.sql(f"SELECT i AS k FROM range({2 * many}) t(i)").to_arrow_table())
        checkpoint()
        nodes = _filenode(conn, st), _filenode(conn, log)
        con.execute(f"INSERT INTO {st.dirty} SELECT k FROM {st.table} WHERE k < {many}")
        con.execute(f"DELETE FROM {st.table} WHERE k < {many}")
        log.delete_where(f"s.k < {many}")
        checkpoint()
        assert (_filenode(conn, st), _filenode(conn, log)) == nodes  # half: deleted by id
        assert len(_mirror(conn, st)) == many and _mirror(conn, st)[0][:2] == (many, many)

        replace_all(7, 2)  # the remaining `many` keys all go
        log.delete_where("s.k >= 0")
        log.append(con.sql("SELECT 1000000 + i AS k FROM range(10) t(i)").to_arrow_table())
        checkpoint()
        assert _filenode(conn, st) != nodes[0] and _filenode(conn, log) != nodes[1]
        assert [r[:2] for r in _mirror(conn, st)] == [(7, 7), (8, 8)]
        logged = f"SELECT min(k), max(k), count(*) FROM sqlstream_state.{log.operator_id}"
        assert conn.execute(logged).fetchone() == (1000000, 1000009, 10)
        assert not conn.execute(  # state the watermark drops, never probed: no index
            "SELECT indexname FROM pg_indexes WHERE tablename IN (%s, %s)",
            [st.operator_id, log.operator_id],
        ).fetchall()

        node = _filenode(conn, st)
        replace_all(0, many)  # all of a small table: by id (no exclusive lock every time)
        checkpoint()
        assert _filenode(conn, st) == node and len(_mirror(conn, st)) == many

        with psycopg.connect(pg_dsn) as reader:  # an open transaction holding the table
            reader.execute(f"SELECT count(*) FROM sqlstream_state.{st.operator_id}").fetchone()
            replace_all(5 * many, 1)
            with conn.transaction(), conn.cursor() as cur:
                st.pg_write(cur, st.delta())
            assert _filenode(conn, st) == node  # it could not wait: deleted instead
        assert [r[:2] for r in _mirror(conn, st)] == [(5 * many, 5 * many)]


def test_only_state_the_watermark_drops_defers_its_index(pg_dsn: str, catalog_dsn, tmp_data_dir) -> None:
    """Windowed state turns over: its row-id index waits for a delete small enough to probe.
    Other state has it from the start, so that no checkpoint (the first after a restart,
    say) has to build it over the whole table."""
    from sqlstream.config import Settings
    from sqlstream.engine.engine import Engine

    con = duckdb.connect()
    keyed, _ = _keyed_and_log(con, "op_index_keyed")
    windowed, _ = _keyed_and_log(con, "op_index_windowed", bounded=True)
    indexes = "SELECT tablename FROM pg_indexes WHERE tablename LIKE 'op_index_%%'"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        _fresh_mirror(conn, keyed, windowed)
        assert [r[0] for r in conn.execute(indexes)] == ["op_index_keyed"]
        con.execute(f"INSERT INTO {windowed.table} SELECT i, i FROM range(100) t(i)")
        windowed.mark_all_dirty()
        with conn.transaction(), conn.cursor() as cur:
            windowed.pg_write(cur, windowed.delta())
        con.execute(f"INSERT INTO {windowed.dirty} VALUES (1)")
        con.execute(f"DELETE FROM {windowed.table} WHERE k = 1")
        with conn.transaction(), conn.cursor() as cur:
            assert windowed.pg_write(cur, windowed.delta()) == (0, 1)  # 1 of 100: probed
        assert sorted(r[0] for r in conn.execute(indexes)) == ["op_index_keyed", "op_index_windowed"]

    e = Engine(Settings(data_dir=tmp_data_dir, checkpoint_interval=3600), catalog_dsn)
    try:
        e.execute_script(
            "CREATE SOURCE gen (k BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1 second') "
            "WITH (connector = 'datagen', datagen.rows.per.second = '0', datagen.rows.total = '10');"
            "CREATE MATERIALIZED VIEW w AS SELECT k, window_start, count(*) AS n "
            "FROM TUMBLE(gen, ts, INTERVAL '1' SECOND) GROUP BY k, window_start;"
            "CREATE MATERIALIZED VIEW g AS SELECT k, count(*) AS n FROM gen GROUP BY k;"
        )
        (w,) = [o for o in e.pipelines["w"].operators if type(o).__name__ == "AggregateOperator"]
        (g,) = [o for o in e.pipelines["g"].operators if type(o).__name__ == "AggregateOperator"]
        assert w.state.bounded and not g.state.bounded
    finally:
        e.close()


def test_the_row_id_index_is_asked_for_once(pg_dsn: str) -> None:
    """CREATE INDEX IF NOT EXISTS locks the table even when the index exists (an autovacuum
    it meets is cancelled): a mirror asks for its index at its first probing delete only."""

    class Recording:
        def __init__(self, cur: psycopg.Cursor) -> None:
            self.cur, self.sql = cur, []

        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(self.cur, name)

        def execute(self, query, *args):  # type: ignore[no-untyped-def]
            self.sql.append(query.as_string(self.cur) if hasattr(query, "as_string") else query)
            return self.cur.execute(query, *args)

    con = duckdb.connect()
    st, log = _keyed_and_log(con, "op_ask", bounded=True)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        _fresh_mirror(conn, st, log)
        con.execute(f"INSERT INTO {st.table} SELECT i, i FROM range(1000) t(i)")
        st.mark_all_dirty()
        log.append(con.sql("SELECT i AS k FROM range(1000) t(i)").to_arrow_table())
        asked = []
        for k in (None, 1, 2, 3):  # the first writes; each later one deletes 1 of 1000
            if k is not None:
                con.execute(f"UPDATE {st.table} SET n = -n WHERE k = {k}")
                con.execute(f"INSERT INTO {st.dirty} VALUES ({k})")
                log.delete_where(f"s.k = {k}")
            with conn.transaction(), conn.cursor() as cur:
                rec = Recording(cur)
                st.pg_write(rec, st.delta())  # type: ignore[arg-type]
                log.pg_write(rec, log.delta())  # type: ignore[arg-type]
            asked.append(sum("CREATE UNIQUE INDEX" in q for q in rec.sql))
        assert asked == [0, 2, 0, 0]
