"""A checkpoint's transaction runs while the engine goes on (checkpoint/protocol.py): what the
engine does after sealing belongs to the next checkpoint, and nothing is lost or doubled."""

from __future__ import annotations

import math
import threading
import time

import psycopg
import pytest

from sqlstream.config import Settings
from sqlstream.engine.engine import Engine

JOB = """CREATE SOURCE gen (v BIGINT) WITH (connector = 'datagen', datagen.rows.per.second = '0',
  datagen.rows.total = '3000', fields.v.kind = 'sequence', fields.v.start = '1');
CREATE MATERIALIZED VIEW per_k AS SELECT v % 10 AS k, count(*) AS n FROM gen GROUP BY v % 10;
CREATE SINK out FROM gen WITH (connector = 'postgres', table = 'overlap_out');"""


def test_engine_runs_epochs_while_a_checkpoint_commits(catalog_dsn, tmp_data_dir) -> None:
    e = Engine(Settings(data_dir=tmp_data_dir, checkpoint_interval=3600, batch_rows=1000), catalog_dsn)
    try:
        e.execute_script(JOB)
        assert e.run_epoch() == 2000  # 1000 rows for each of two readers
        with psycopg.connect(catalog_dsn) as blocker:
            (view,) = blocker.execute(
                "SELECT state_table FROM sqlstream.operator_state "
                "WHERE object = 'per_k' AND kind = 'materialize'"
            ).fetchone()
            # Hold the commit at its first write (the state comes before the sinks' output).
            blocker.execute(f"LOCK TABLE {view} IN ACCESS EXCLUSIVE MODE")
            assert e.checkpoint(wait=False) is None
            first = e.last_epoch + 1
            assert e.run_epoch() == 2000  # 1000 rows for each of two readers  # the engine goes on meanwhile
            assert e.run_epoch() == 2000  # 1000 rows for each of two readers
            assert e._in_flight is not None and not e._in_flight.done()
            blocker.rollback()
        stats = e.settle()
        assert stats is not None and stats.epoch == first and stats.rows_in == 2000
        assert stats.state_rows > 0 and stats.bytes > 0
        with psycopg.connect(catalog_dsn) as conn:
            # Only what was sealed: 1000 rows in the sink, and counts of 1000 in the state.
            assert conn.execute("SELECT count(*) FROM overlap_out").fetchone()[0] == 1000
            assert conn.execute(
                "SELECT rows FROM sqlstream.sink_commits WHERE sink = 'out' AND epoch = %s",
                [first],
            ).fetchone()[0] == 1000
            assert conn.execute(f"SELECT sum(n) FROM {view}").fetchone()[0] == 1000
        e.checkpoint()
        assert e.last_epoch == first + 1
        with psycopg.connect(catalog_dsn) as conn:
            assert conn.execute(
                "SELECT count(*), count(DISTINCT v), min(v), max(v) FROM overlap_out"
            ).fetchone() == (3000, 3000, 1, 3000)
            assert conn.execute(
                "SELECT max(epoch) FROM sqlstream.source_offsets WHERE object = 'out'"
            ).fetchone()[0] == first + 1
        assert sorted(e.query("SELECT k, n FROM per_k").to_pylist(), key=lambda r: r["k"]) == [
            {"k": k, "n": 300} for k in range(10)
        ]
    finally:
        e.close()


@pytest.mark.parametrize("then", ["settle", "seal_the_next"])
def test_a_failed_commit_surfaces_at_the_next_settle(catalog_dsn, tmp_data_dir, then) -> None:
    """The failure comes with the next settle; with ``seal_the_next``, that is the settle
    inside the next checkpoint, which has sealed its own checkpoint first: it is dropped,
    never committed."""
    e = Engine(Settings(data_dir=tmp_data_dir, checkpoint_interval=3600, batch_rows=1000), catalog_dsn)
    try:
        e.execute_script(JOB)
        e.run_epoch()
        e.checkpoint()
        committed = e.last_epoch
        e.run_epoch()
        with psycopg.connect(catalog_dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE overlap_out ADD CONSTRAINT small CHECK (v <= 1500)")
        e.checkpoint(wait=False)  # fails: the sink's rows 1001-2000
        with pytest.raises(psycopg.errors.CheckViolation):
            if then == "settle":
                e.settle()
            else:
                e.run_epoch()
                e.checkpoint(wait=False)
        assert e.last_epoch == committed and e.broken is not None and e._in_flight is None
        # The engine is past what Postgres holds: it must be rebuilt, not used on.
        for again in (e.checkpoint, lambda: e.execute_script("DROP SINK out")):
            with pytest.raises(psycopg.errors.CheckViolation):
                again()
        with psycopg.connect(catalog_dsn) as conn:
            assert conn.execute("SELECT max(epoch) FROM sqlstream.checkpoints").fetchone()[0] == committed
            assert conn.execute("SELECT count(*) FROM overlap_out").fetchone()[0] == 1000
    finally:
        e.close()


def test_the_next_checkpoint_is_sealed_while_the_previous_commits(catalog_dsn, tmp_data_dir) -> None:
    """Sealing overlaps the commit before it; the commits still run one at a time, in epoch
    order, each with exactly what was sealed for it."""
    e = Engine(Settings(data_dir=tmp_data_dir, checkpoint_interval=3600, batch_rows=1000), catalog_dsn)
    try:
        e.execute_script(JOB)
        e.run_epoch()
        sink = e.sinks["out"].sink
        with psycopg.connect(catalog_dsn) as blocker:
            (view,) = blocker.execute(
                "SELECT state_table FROM sqlstream.operator_state "
                "WHERE object = 'per_k' AND kind = 'materialize'"
            ).fetchone()
            blocker.execute(f"LOCK TABLE {view} IN ACCESS EXCLUSIVE MODE")
            e.checkpoint(wait=False)
            first = e.last_epoch + 1
            e.run_epoch()
            second = threading.Thread(target=lambda: e.checkpoint(wait=False))
            second.start()
            deadline = time.monotonic() + 10
            while first + 1 not in sink._pending and time.monotonic() < deadline:
                time.sleep(0.01)
            # sealed (the sink set its rows aside) while the first commit is still held
            assert first + 1 in sink._pending and first in sink._pending
            assert second.is_alive() and e.last_epoch == first - 1  # the first not settled
            blocker.rollback()
        second.join(10)
        assert not second.is_alive()
        stats = e.settle()
        assert stats is not None and stats.epoch == first + 1 and e.last_epoch == first + 1
        with psycopg.connect(catalog_dsn) as conn:
            assert conn.execute(
                "SELECT epoch, rows FROM sqlstream.sink_commits WHERE sink = 'out' ORDER BY epoch"
            ).fetchall() == [(first, 1000), (first + 1, 1000)]
            assert conn.execute(
                "SELECT count(*), count(DISTINCT v), min(v), max(v) FROM overlap_out"
            ).fetchone() == (2000, 2000, 1, 2000)
            assert conn.execute(f"SELECT sum(n) FROM {view}").fetchone()[0] == 2000
    finally:
        e.close()


def test_first_checkpoint_comes_with_the_first_rows(catalog_dsn, tmp_data_dir) -> None:
    """The first checkpoint of a process is due once it has read rows (output shows at once
    after a start or restart); after it, the interval rules."""
    e = Engine(Settings(data_dir=tmp_data_dir, checkpoint_interval=3600, batch_rows=1000), catalog_dsn)
    try:
        e.execute_script(JOB)
        assert not e.checkpoint_due()
        e.run_epoch()
        assert e.checkpoint_due()
        e.checkpoint(wait=False)
        assert not e.checkpoint_due()  # in flight
        e.settle()
        e.run_epoch()
        assert not e.checkpoint_due()
    finally:
        e.close()


def test_an_infinite_interval_checkpoints_only_when_asked(catalog_dsn, tmp_data_dir) -> None:
    e = Engine(
        Settings(data_dir=tmp_data_dir, checkpoint_interval=math.inf, batch_rows=1000), catalog_dsn
    )
    try:
        e.execute_script(JOB)
        e.run_epoch()
        assert not e.checkpoint_due()
        assert e.checkpoint() is not None  # asked: FLUSH, stop, the end of a bounded run
    finally:
        e.close()


def test_catalog_connections_run_without_jit(catalog_dsn, tmp_data_dir) -> None:
    """A checkpoint's statements are short; JIT compiling a misestimated one cost ~0.5 s."""
    e = Engine(Settings(data_dir=tmp_data_dir, batch_rows=1000), catalog_dsn)
    try:
        e.execute_script(JOB)
        e.run_epoch()
        e.checkpoint()
        assert e._commit_conn is not None
        for conn in (e.store.conn, e._commit_conn):
            assert conn.execute("SHOW jit").fetchone()[0] == "off"
    finally:
        e.close()
