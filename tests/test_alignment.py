"""Watermark alignment: the readers of one pipeline advance together in event time.

Two datagen sources cover the same 1,000 s of event time, one in 1,000 rows (a row per
second, like Nexmark's persons) and one in 20,000 (a row per 50 ms). Polled with the same row
budget, the sparse one would run ~600 s ahead and a windowed join of the two would keep its
windows until the dense one catches up (Nexmark q8). Aligned, it reads only about as far as
the dense one gets each epoch. Alignment must never stall a job: a reader with nothing to
give (not started yet, idle, finished) holds no one back.
"""

from __future__ import annotations

import shutil
import time

import pytest
from conftest import fresh_database, make_tmp_dir

from sqlstream.config import Settings
from sqlstream.engine.engine import Engine
from sqlstream.engine.loop import JobOptions, run_engine
from sqlstream.engine.reader import WATERMARK_END

BATCH_ROWS = 640
#: a reader whose rows per microsecond are unknown first reads batch_rows // 64 rows
PROBE_ROWS = BATCH_ROWS // 64

PEOPLE = """CREATE SOURCE people (id BIGINT, ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '1 second')
WITH (connector = 'datagen', datagen.rows.per.second = '0', datagen.rows.total = '1000',
      datagen.time.step = '1s', fields.id.kind = 'sequence')"""

ORDERS = """CREATE SOURCE orders (buyer BIGINT, ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '1 second')
WITH (connector = 'datagen', datagen.rows.per.second = '0', datagen.rows.total = '20000',
      datagen.time.step = '50ms', fields.buyer.min = '0', fields.buyer.max = '999')"""

# Nexmark q8's shape: people of a 10 s window JOIN the buyers of the same window.
JOIN = """CREATE MATERIALIZED VIEW j AS
SELECT P.id, P.ws
FROM (SELECT id, window_start AS ws, window_end AS we
      FROM TUMBLE(people, ts, INTERVAL '10' SECOND) GROUP BY id, window_start, window_end) P
JOIN (SELECT buyer, window_start AS ws, window_end AS we
      FROM TUMBLE(orders, ts, INTERVAL '10' SECOND) GROUP BY buyer, window_start, window_end) O
ON P.id = O.buyer AND P.ws = O.ws AND P.we = O.we"""

JOB = f"{PEOPLE}; {ORDERS}; {JOIN};"

#: an unbounded lead: every reader reads its full budget (alignment effectively off)
UNALIGNED = 2**62


@pytest.fixture
def engine(catalog_dsn, tmp_data_dir):
    e = Engine(
        Settings(data_dir=tmp_data_dir, checkpoint_interval=0.0, batch_rows=BATCH_ROWS),
        catalog_dsn,
    )
    yield e
    e.close()


def _skew_us(engine: Engine) -> int:
    """How far apart the moving watermarks of the readers are (not started / ended excluded)."""
    marks = [
        r.watermark_us for r in engine.readers() if r.watermark_us not in (None, WATERMARK_END)
    ]
    return max(marks) - min(marks) if len(marks) > 1 else 0  # type: ignore[type-var,operator]


def _state_rows(engine: Engine) -> int:
    """Rows the operators keep (the windows' aggregates and the join's inputs), not counting
    the view's own contents."""
    return sum(
        t.row_count()
        for p in engine.pipelines.values()
        for kind, t in p.state_kinds()
        if kind != "MaterializeOperator"
    )


def _run_sampled(engine: Engine) -> tuple[int, int, int]:
    """``run_engine(once=True)``'s loop, with (max skew, peak state rows, epochs) sampled
    after every epoch."""
    engine.freeze()
    skew = state = epochs = 0
    while True:
        rows = engine.run_epoch()
        epochs += 1
        skew = max(skew, _skew_us(engine))
        state = max(state, _state_rows(engine))
        if rows == 0 and engine.finished():
            break
        assert epochs < 1000, "the job does not end"
    engine.run_epoch()
    engine.checkpoint()
    return skew, state, epochs


def _rows(engine: Engine) -> list[tuple]:
    return sorted(tuple(r.values()) for r in engine.query("SELECT id, ws FROM j").to_pylist())


def test_readers_of_a_windowed_join_advance_together(engine, pg_dsn):
    engine.execute_script(JOB)
    skew, state, epochs = _run_sampled(engine)
    aligned = _rows(engine)

    # The same job with alignment off, in a catalog of its own.
    data_dir = make_tmp_dir("sqlstream-t-")
    try:
        with fresh_database(pg_dsn) as dsn:
            other = Engine(
                Settings(data_dir=data_dir, checkpoint_interval=0.0, batch_rows=BATCH_ROWS), dsn
            )
            try:
                other.align_max_lead_us = UNALIGNED
                other.execute_script(JOB)
                skew_off, state_off, epochs_off = _run_sampled(other)
                unaligned = _rows(other)
            finally:
                other.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    # Every row of both sources was read, none late, and the results are the same.
    assert {(r.source_name, r.rows_read, r.late_rows) for r in engine.readers()} == {
        ("people", 1000, 0),
        ("orders", 20000, 0),
    }
    assert len(aligned) > 50
    assert aligned == unaligned
    # Unaligned, the sparse reader runs a whole batch (640 people = 640 s) ahead of the dense
    # one (640 orders = 32 s) ...
    assert skew_off > 500_000_000
    # ... aligned, it leads by at most the tolerance plus its first probe (10 rows = 10 s,
    # read before its rows per second were known).
    assert skew <= engine.align_max_lead_us + PROBE_ROWS * 1_000_000
    # The operators keep the sparse side's windows until the dense side's watermark passes
    # them: unaligned up to ~940 people rows, aligned ~13 (the dense side's ~200 open
    # buyer windows are the same in both runs).
    assert state_off > 1500
    assert state * 4 < state_off, (state, state_off)
    # Alignment costs no epochs: the dense reader reads its full budget every epoch.
    assert epochs <= epochs_off + 1


def test_run_once_ends_and_matches_a_batch_of_the_same_rows(engine):
    # Views of the raw rows (one reader each: nothing to align) give the batch answer.
    engine.execute_script(
        JOB + " CREATE MATERIALIZED VIEW p_all AS SELECT id, ts FROM people;"
        " CREATE MATERIALIZED VIEW o_all AS SELECT buyer, ts FROM orders;"
    )
    engine.settings.checkpoint_interval = 1.0  # not one per epoch: the views hold every row
    run_engine(engine, JobOptions(once=True))
    batch = engine.query(
        "SELECT DISTINCT p.id, time_bucket(INTERVAL '10 seconds', p.ts) AS ws "
        "FROM p_all p JOIN o_all o ON p.id = o.buyer "
        "AND time_bucket(INTERVAL '10 seconds', p.ts) = time_bucket(INTERVAL '10 seconds', o.ts)"
    )
    expected = sorted(tuple(r.values()) for r in batch.to_pylist())
    assert len(expected) > 50
    assert _rows(engine) == expected
    assert all(r.source.finished() for r in engine.readers())


def _readers(engine: Engine) -> tuple:
    by_name = {r.source_name: r for r in engine.pipelines["j"].readers}
    return by_name["people"], by_name["orders"]


def test_a_reader_that_has_not_read_yet_holds_no_one_back(engine):
    # A paced source whose first row is due only after 30 s, and a bounded one: the bounded
    # one is read to its end at once (its job must not wait for the paced one).
    engine.execute_script(
        PEOPLE.replace("rows.per.second = '0'", "rows.per.second = '0.033'")
        + f"; {ORDERS}; {JOIN};"
    )
    people, orders = _readers(engine)
    started = time.monotonic()
    while not orders.source.finished():
        engine.run_epoch()
        assert time.monotonic() - started < 20, "the bounded reader is held back"
    assert people.rows_read == 0 and people.watermark_us is None
    assert orders.rows_read == 20000 and orders.held_epochs == 0


def test_an_idle_reader_stops_holding_the_others_back(engine, tmp_data_dir):
    # A file source with 20 s of rows and nothing after (an unbounded source gone quiet), and
    # a bounded datagen source over 1,000 s: while the file source may still send, the other
    # reader waits near it; once it has been idle for align_idle_s, the other goes on.
    d = tmp_data_dir / "in"
    d.mkdir()
    (d / "a.jsonl").write_text(
        "".join(f'{{"id": {i}, "ts": "2024-01-01 00:00:{i:02d}"}}\n' for i in range(20))
    )
    engine.execute_script(
        "CREATE SOURCE people (id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL "
        f"'1 second') WITH (connector = 'file', path = '{d}') FORMAT PLAIN ENCODE JSON; "
        f"{ORDERS}; {JOIN};"
    )
    people, orders = _readers(engine)
    assert engine.align_idle_s == 1.0
    started = time.monotonic()
    while people.empty_since is None or time.monotonic() - people.empty_since < 0.6:
        engine.run_epoch()
        time.sleep(0.01)
        assert time.monotonic() - started < 20
    # the file is read; the orders reader has read one probe and at most one batch (it was
    # behind), then nothing more: it is held where the file reader stopped
    assert people.rows_read == 20
    held = orders.held_epochs
    assert held > 3
    assert orders.rows_read <= PROBE_ROWS + BATCH_ROWS
    while orders.rows_read < 20000:
        before = orders.held_epochs
        idle = time.monotonic() - people.empty_since >= engine.align_idle_s
        engine.run_epoch()
        if idle:  # never held again once the file reader is idle
            assert orders.held_epochs == before
        assert time.monotonic() - started < 20, "the idle reader stalls the others"
    assert orders.held_epochs > held  # held until then
    assert not people.source.finished()  # unbounded: it never ends, it only went quiet
