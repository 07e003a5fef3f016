"""Oracle tests: the incremental result equals DuckDB running the same query as one batch
over the same rows, whatever the batch (epoch) sizes, checkpoints and restarts in between."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from sqlstream.config import Settings
from sqlstream.connectors.base import ConnectorContext
from sqlstream.connectors.datagen.source import DatagenSource
from sqlstream.engine.engine import Engine
from sqlstream.engine.loop import JobOptions, run_engine
from sqlstream.sql.parser import parse_one

ROWS = 30_000

SOURCE = f"""
CREATE SOURCE orders (
    id BIGINT, customer BIGINT, category VARCHAR, amount DOUBLE PRECISION, qty INTEGER,
    ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '2 seconds'
) WITH (
    connector = 'datagen', datagen.rows.per.second = '0', datagen.rows.total = '{ROWS}',
    datagen.seed = '7', datagen.time.step = '1ms',
    fields.id.kind = 'sequence', fields.customer.min = '1', fields.customer.max = '40',
    fields.category.values = 'a,b,c,d', fields.amount.min = '0', fields.amount.max = '100',
    fields.qty.min = '0', fields.qty.max = '9'
)"""

#: the rows of ``orders`` in each HOP window of 5 s sliding by 2 s (its start ``ws``)
HOP_2S_5S = """(SELECT *, unnest(generate_series(
        time_bucket(INTERVAL 2 SECOND, ts - INTERVAL 5 SECOND, TIMESTAMP '1970-01-01'),
        time_bucket(INTERVAL 2 SECOND, ts, TIMESTAMP '1970-01-01'), INTERVAL 2 SECOND)) AS ws
    FROM orders) WHERE ts >= ws AND ts < ws + INTERVAL 5 SECOND"""

# (view, batch query over table "orders" written independently of the planner)
CASES = {
    "per_customer": (
        """CREATE MATERIALIZED VIEW v AS
        SELECT customer, count(*) AS n, count(qty) AS nq, sum(qty) AS total, avg(amount) AS mean,
               min(amount) AS lo, max(amount) AS hi
        FROM orders WHERE category <> 'd' GROUP BY customer""",
        """SELECT customer, count(*) AS n, count(qty) AS nq, sum(qty) AS total,
               avg(amount) AS mean, min(amount) AS lo, max(amount) AS hi
        FROM orders WHERE category <> 'd' GROUP BY customer""",
    ),
    # sum, avg and count of one argument share its sum and count; FILTERs on one condition
    # share its column
    "shared_accumulators": (
        """CREATE MATERIALIZED VIEW v AS
        SELECT customer, sum(qty) AS s, avg(qty) AS a, count(qty) AS c,
               count(*) FILTER (WHERE qty > 4) AS big, sum(amount) FILTER (WHERE qty > 4) AS bigs,
               min(qty) AS lo, max(qty) AS hi,
               count(DISTINCT category) FILTER (WHERE qty > 4) AS cats
        FROM orders GROUP BY customer""",
        """SELECT customer, sum(qty), avg(qty), count(qty), count(*) FILTER (WHERE qty > 4),
               sum(amount) FILTER (WHERE qty > 4), min(qty), max(qty),
               count(DISTINCT category) FILTER (WHERE qty > 4)
        FROM orders GROUP BY customer""",
    ),
    "global": (
        "CREATE MATERIALIZED VIEW v AS SELECT count(*) AS n, sum(qty) AS total, max(id) AS top "
        "FROM orders",
        "SELECT count(*) AS n, sum(qty) AS total, max(id) AS top FROM orders",
    ),
    "expressions_having": (
        """CREATE MATERIALIZED VIEW v AS
        SELECT upper(category) AS cat, customer % 3 AS bucket, sum(qty * 2) + 1 AS s, count(*) AS n
        FROM orders GROUP BY upper(category), customer % 3 HAVING count(*) > 2000""",
        """SELECT upper(category) AS cat, customer % 3 AS bucket, sum(qty * 2) + 1 AS s,
               count(*) AS n
        FROM orders GROUP BY upper(category), customer % 3 HAVING count(*) > 2000""",
    ),
    "tumble_eowc": (
        """CREATE MATERIALIZED VIEW v AS
        SELECT window_start, window_end, category, count(*) AS n, sum(amount) AS revenue,
               max(qty) AS most
        FROM TUMBLE(orders, ts, INTERVAL '3 seconds')
        GROUP BY window_start, window_end, category EMIT ON WINDOW CLOSE""",
        """SELECT time_bucket(INTERVAL '3 seconds', ts, TIMESTAMP '1970-01-01') AS window_start,
               time_bucket(INTERVAL '3 seconds', ts, TIMESTAMP '1970-01-01')
                 + INTERVAL '3 seconds' AS window_end,
               category, count(*) AS n, sum(amount) AS revenue, max(qty) AS most
        FROM orders GROUP BY ALL""",
    ),
    "tumble_updating": (
        """CREATE MATERIALIZED VIEW v AS
        SELECT window_start, customer % 5 AS c5, count(*) AS n, min(ts) AS first_ts
        FROM TUMBLE(orders, ts, INTERVAL '1 second') GROUP BY window_start, customer % 5""",
        """SELECT time_bucket(INTERVAL '1 second', ts, TIMESTAMP '1970-01-01') AS window_start,
               customer % 5 AS c5, count(*) AS n, min(ts) AS first_ts
        FROM orders GROUP BY ALL""",
    ),
    # folded per 1 s pane (gcd of 2 s and 5 s), then per window: every accumulator kind
    "hop_panes": (
        """CREATE MATERIALIZED VIEW v AS
        SELECT window_start, window_end, category, count(*) AS n,
               count(*) FILTER (WHERE qty > 4) AS big, sum(qty) AS total, avg(amount) AS mean,
               min(amount) AS lo, max(qty) AS most, count(qty) AS nq
        FROM HOP(orders, ts, INTERVAL '2 seconds', INTERVAL '5 seconds')
        GROUP BY window_start, window_end, category""",
        f"""SELECT ws, ws + INTERVAL 5 SECOND, category, count(*),
               count(*) FILTER (WHERE qty > 4), sum(qty), avg(amount), min(amount), max(qty),
               count(qty)
        FROM {HOP_2S_5S} GROUP BY ALL""",
    ),
    # only window_end as the window key, under EMIT ON WINDOW CLOSE
    "hop_panes_end_eowc": (
        """CREATE MATERIALIZED VIEW v AS
        SELECT window_end, customer % 4 AS c4, count(*) AS n, max(amount) AS hi
        FROM HOP(orders, ts, INTERVAL '2 seconds', INTERVAL '5 seconds')
        GROUP BY window_end, customer % 4 EMIT ON WINDOW CLOSE""",
        f"""SELECT ws + INTERVAL 5 SECOND, customer % 4, count(*), max(amount)
        FROM {HOP_2S_5S} GROUP BY ALL""",
    ),
    # over a retracting input (each customer's latest order moves): weights fold per pane
    "hop_panes_retracting": (
        """CREATE MATERIALIZED VIEW latest AS
        SELECT customer, max(ts) AS ts, max(qty) AS qty FROM orders GROUP BY customer;
        CREATE MATERIALIZED VIEW v AS
        SELECT window_start, count(*) AS n, sum(qty) AS total
        FROM HOP(latest, ts, INTERVAL '2 seconds', INTERVAL '6 seconds') GROUP BY window_start""",
        """SELECT ws, count(*), sum(qty) FROM (
            SELECT *, unnest(generate_series(
                time_bucket(INTERVAL 2 SECOND, ts - INTERVAL 6 SECOND, TIMESTAMP '1970-01-01'),
                time_bucket(INTERVAL 2 SECOND, ts, TIMESTAMP '1970-01-01'), INTERVAL 2 SECOND)) AS ws
            FROM (SELECT customer, max(ts) AS ts, max(qty) AS qty FROM orders GROUP BY customer))
        WHERE ts >= ws AND ts < ws + INTERVAL 6 SECOND GROUP BY ALL""",
    ),
    # as Nexmark q5: the same HOP count twice, keys in another order, outputs named
    # otherwise: the second projects the first's state
    "shared_hop_count": (
        """CREATE MATERIALIZED VIEW v AS
        SELECT c.customer, c.n, c.ws FROM (
            SELECT customer, count(*) AS n, window_start AS ws
            FROM HOP(orders, ts, INTERVAL '2 seconds', INTERVAL '6 seconds')
            GROUP BY window_start, customer) c
        JOIN (
            SELECT max(n2) AS top, ws2 FROM (
                SELECT count(*) AS n2, window_start AS ws2
                FROM HOP(orders, ts, INTERVAL '2 seconds', INTERVAL '6 seconds')
                GROUP BY customer, window_start) x
            GROUP BY ws2) m
        ON c.ws = m.ws2 AND c.n >= m.top""",
        f"""WITH c AS (SELECT customer, ws, count(*) AS n FROM {HOP_2S_5S.replace("5 SECOND", "6 SECOND")}
                   GROUP BY ALL)
        SELECT c.customer, c.n, c.ws FROM c
        JOIN (SELECT ws, max(n) AS top FROM c GROUP BY ws) m ON c.ws = m.ws AND c.n >= m.top""",
    ),
    # HOP over a view with a window bound of its own (ws): ws is a plain column of each row
    # here, kept per pane, not replaced by the HOP's window
    "hop_over_a_windowed_view": (
        """CREATE MATERIALIZED VIEW tw AS
        SELECT window_start AS ws, max(ts) AS ts, count(*) AS c
        FROM TUMBLE(orders, ts, INTERVAL '3 seconds') GROUP BY window_start;
        CREATE MATERIALIZED VIEW v AS
        SELECT h.window_start AS w, h.ws, sum(h.c) AS s
        FROM HOP(tw, ts, INTERVAL '2 seconds', INTERVAL '5 seconds') h
        GROUP BY h.window_start, h.ws""",
        """WITH tw AS (
            SELECT time_bucket(INTERVAL 3 SECOND, ts, TIMESTAMP '1970-01-01') AS ws,
                   max(ts) AS ts, count(*) AS c FROM orders GROUP BY 1)
        SELECT w, ws, sum(c) FROM (
            SELECT *, unnest(generate_series(
                time_bucket(INTERVAL 2 SECOND, ts - INTERVAL 5 SECOND, TIMESTAMP '1970-01-01'),
                time_bucket(INTERVAL 2 SECOND, ts, TIMESTAMP '1970-01-01'), INTERVAL 2 SECOND)) AS w
            FROM tw) WHERE ts >= w AND ts < w + INTERVAL 5 SECOND GROUP BY ALL""",
    ),
    # a key and an argument that read the window bounds: folded per window, not per pane
    "hop_reading_window_columns": (
        """CREATE MATERIALIZED VIEW v AS
        SELECT window_start + INTERVAL '1' SECOND AS later, count(*) AS n,
               max(epoch(window_end) - epoch(ts)) AS most_left
        FROM HOP(orders, ts, INTERVAL '2 seconds', INTERVAL '5 seconds')
        GROUP BY window_start + INTERVAL '1' SECOND""",
        f"""SELECT ws + INTERVAL 1 SECOND, count(*),
               max(epoch(ws + INTERVAL 5 SECOND) - epoch(ts))
        FROM {HOP_2S_5S} GROUP BY ALL""",
    ),
    # Top-N per key over an append-only stream keeps only each key's top rows as state
    "topn_per_key": (
        """CREATE MATERIALIZED VIEW v AS SELECT customer, id, amount, rn FROM (
            SELECT customer, id, amount, row_number() OVER (
                PARTITION BY customer ORDER BY amount DESC, id) AS rn FROM orders) t
        WHERE rn <= 3""",
        """SELECT customer, id, amount, row_number() OVER (
            PARTITION BY customer ORDER BY amount DESC, id) AS rn FROM orders QUALIFY rn <= 3""",
    ),
    # peers (the same qty) rank in arrival order, which is id order here, not by the other
    # columns (amount comes first in the subquery)
    "topn_ties_in_arrival_order": (
        """CREATE MATERIALIZED VIEW v AS SELECT category, id, qty FROM (
            SELECT category, id, qty, row_number() OVER (PARTITION BY category ORDER BY qty) AS rn
            FROM (SELECT category, amount, qty, id FROM orders) o) t
        WHERE rn <= 3""",
        """SELECT category, id, qty FROM orders
        QUALIFY row_number() OVER (PARTITION BY category ORDER BY qty, id) <= 3""",
    ),
    "limit_ties_in_arrival_order": (
        "CREATE MATERIALIZED VIEW v AS SELECT amount, id, qty FROM orders "
        "ORDER BY qty DESC LIMIT 4",
        "SELECT amount, id, qty FROM orders ORDER BY qty DESC, id LIMIT 4",
    ),
    # the rows above the offset stay in state: a later, lower row must not move up past them
    "topn_offset_stream": (
        "CREATE MATERIALIZED VIEW v AS SELECT id, amount FROM orders "
        "ORDER BY amount DESC, id LIMIT 5 OFFSET 3",
        "SELECT id, amount FROM orders ORDER BY amount DESC, id LIMIT 5 OFFSET 3",
    ),
    # the second ranking orders the rows differently: rows below the first's top still
    # count for it, so they must stay in state
    "topn_two_orders_per_key": (
        """CREATE MATERIALIZED VIEW v AS SELECT customer, id, rn, rq FROM (
            SELECT customer, id,
                   row_number() OVER (PARTITION BY customer ORDER BY amount DESC, id) AS rn,
                   row_number() OVER (PARTITION BY customer ORDER BY qty, id) AS rq
            FROM orders) t
        WHERE rn <= 2""",
        """SELECT customer, id,
                  row_number() OVER (PARTITION BY customer ORDER BY amount DESC, id) AS rn,
                  row_number() OVER (PARTITION BY customer ORDER BY qty, id) AS rq
        FROM orders QUALIFY rn <= 2""",
    ),
    "rank_ties_per_key": (
        """CREATE MATERIALIZED VIEW v AS SELECT category, id, qty, r, d FROM (
            SELECT category, id, qty, rank() OVER (PARTITION BY category ORDER BY qty DESC) AS r,
                   dense_rank() OVER (PARTITION BY category ORDER BY qty DESC) AS d
            FROM orders) t
        WHERE 2 >= r""",
        """SELECT category, id, qty, rank() OVER (PARTITION BY category ORDER BY qty DESC) AS r,
                  dense_rank() OVER (PARTITION BY category ORDER BY qty DESC) AS d
        FROM orders QUALIFY r <= 2""",
    ),
    # one rank() alone: its change is found from (row, rank) pairs, and peers share a rank,
    # so a new row can push several rows out at once, or none
    "rank_alone_per_key": (
        """CREATE MATERIALIZED VIEW v AS SELECT category, id, qty, r FROM (
            SELECT category, id, qty, rank() OVER (PARTITION BY category ORDER BY qty DESC) AS r
            FROM orders) t
        WHERE r <= 2""",
        """SELECT category, id, qty, rank() OVER (PARTITION BY category ORDER BY qty DESC) AS r
        FROM orders QUALIFY r <= 2""",
    ),
    "dense_rank_alone_per_key": (
        """CREATE MATERIALIZED VIEW v AS SELECT customer, id, d FROM (
            SELECT customer, id, dense_rank() OVER (PARTITION BY customer ORDER BY qty DESC) AS d
            FROM orders) t
        WHERE d <= 1""",
        """SELECT customer, id, dense_rank() OVER (PARTITION BY customer ORDER BY qty DESC) AS d
        FROM orders QUALIFY d <= 1""",
    ),
    # a row that stays in the top moves down a rank (its output row changes though the rank
    # is not selected), and a second condition drops some top rows from the output
    "topn_with_another_condition": (
        """CREATE MATERIALIZED VIEW v AS SELECT customer, id, amount FROM (
            SELECT customer, id, amount, qty, row_number() OVER (
                PARTITION BY customer ORDER BY amount DESC) AS rn FROM orders) t
        WHERE rn <= 3 AND qty > 2""",
        """SELECT customer, id, amount FROM orders QUALIFY row_number() OVER (
            PARTITION BY customer ORDER BY amount DESC, id) <= 3 AND qty > 2""",
    ),
    "distinct_eowc": (
        """CREATE MATERIALIZED VIEW v AS
        SELECT window_start, count(DISTINCT customer) AS customers,
               count(DISTINCT customer) FILTER (WHERE qty > 5) AS big, count(*) AS n
        FROM TUMBLE(orders, ts, INTERVAL '3 seconds') GROUP BY window_start EMIT ON WINDOW CLOSE""",
        """SELECT time_bucket(INTERVAL '3 seconds', ts, TIMESTAMP '1970-01-01') AS window_start,
               count(DISTINCT customer), count(DISTINCT customer) FILTER (WHERE qty > 5), count(*)
        FROM orders GROUP BY ALL""",
    ),
    "distinct_updating": (
        """CREATE MATERIALIZED VIEW v AS
        SELECT category, count(DISTINCT customer) AS customers,
               count(DISTINCT qty) FILTER (WHERE amount > 50) AS qtys, max(amount) AS hi
        FROM orders GROUP BY category""",
        """SELECT category, count(DISTINCT customer), count(DISTINCT qty) FILTER (WHERE amount > 50),
               max(amount) FROM orders GROUP BY category""",
    ),
    # an append-only stream joined with a retracting aggregate of itself (as Nexmark q7)
    "join_stream_to_aggregate": (
        """CREATE MATERIALIZED VIEW v AS SELECT o.id, o.customer, o.amount FROM orders o
        JOIN (SELECT customer, max(amount) AS top FROM orders GROUP BY customer) m
        ON o.customer = m.customer AND o.amount = m.top""",
        """SELECT o.id, o.customer, o.amount FROM orders o
        JOIN (SELECT customer, max(amount) AS top FROM orders GROUP BY customer) m
        ON o.customer = m.customer AND o.amount = m.top""",
    ),
    "join_stream_to_window_max": (
        """CREATE MATERIALIZED VIEW v AS SELECT o.id, o.qty, m.window_end FROM orders o
        JOIN (SELECT max(qty) AS top, window_end FROM TUMBLE(orders, ts, INTERVAL '3 seconds')
              GROUP BY window_end) m ON o.qty = m.top
        WHERE o.ts BETWEEN m.window_end - INTERVAL '3 seconds' AND m.window_end""",
        """SELECT o.id, o.qty, m.window_end FROM orders o
        JOIN (SELECT max(qty) AS top, time_bucket(INTERVAL '3 seconds', ts,
                     TIMESTAMP '1970-01-01') + INTERVAL '3 seconds' AS window_end
              FROM orders GROUP BY 2) m ON o.qty = m.top
        WHERE o.ts BETWEEN m.window_end - INTERVAL '3 seconds' AND m.window_end""",
    ),
    # a plain selection of columns (renamed) over a retracting view: done on the Arrow batch,
    # weights carried along
    "plain_columns_of_a_retracting_view": (
        """CREATE MATERIALIZED VIEW per AS
        SELECT customer, count(*) AS n, max(qty) AS top FROM orders GROUP BY customer;
        CREATE MATERIALIZED VIEW v AS SELECT top AS most, customer AS who FROM per""",
        "SELECT max(qty), customer FROM orders GROUP BY customer",
    ),
    # GROUP BY without aggregate functions over append-only input: append-only output, each
    # group once (a group seen again in a later batch must not repeat)
    "new_groups_only": (
        "CREATE MATERIALIZED VIEW v AS SELECT customer, category FROM orders "
        "WHERE qty > 3 GROUP BY customer, category",
        "SELECT DISTINCT customer, category FROM orders WHERE qty > 3",
    ),
    # an interval join bounded by a timestamp column that is not an event time (Nexmark q4
    # and q9: a bid between an auction's date_time and its expires)
    "interval_join_to_a_bound_column": (
        """CREATE MATERIALIZED VIEW v AS SELECT a.id AS aid, b.id AS bid FROM
            (SELECT id, customer, ts, ts + INTERVAL '2 seconds' AS until FROM orders
             WHERE category = 'a') a
        JOIN (SELECT id, customer, ts FROM orders WHERE category = 'b') b
        ON a.customer = b.customer WHERE b.ts BETWEEN a.ts AND a.until""",
        """SELECT a.id, b.id FROM orders a JOIN orders b ON a.customer = b.customer
        WHERE a.category = 'a' AND b.category = 'b'
          AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '2 seconds'""",
    ),
    # join keys taken from the batch as they are (a plain column of the key's type), cast
    # (integer against bigint) or computed (customer % 10)
    "join_keys_plain_cast_and_computed": (
        """CREATE MATERIALIZED VIEW v AS SELECT a.id AS aid, b.id AS bid, b.category FROM
            (SELECT id, qty, category, ts, ts + INTERVAL '1 second' AS until FROM orders
             WHERE customer < 8) a
        JOIN (SELECT id, customer, category, ts FROM orders WHERE customer > 30) b
        ON a.qty = b.customer % 10 AND a.category = b.category
        WHERE b.ts BETWEEN a.ts AND a.until""",
        """SELECT a.id, b.id, b.category FROM orders a JOIN orders b
        ON a.qty = b.customer % 10 AND a.category = b.category
        WHERE a.customer < 8 AND b.customer > 30
          AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '1 second'""",
    ),
    # SELECT DISTINCT over a stream: planned as that GROUP BY (append-only, each row once)
    "distinct_over_a_stream": (
        "CREATE MATERIALIZED VIEW v AS SELECT DISTINCT customer % 3 AS c3, upper(category) AS u, "
        "qty FROM orders WHERE amount > 20",
        "SELECT DISTINCT customer % 3, upper(category), qty FROM orders WHERE amount > 20",
    ),
    # Nexmark q8's shape: two such per-window groupings joined on the window bounds
    "new_groups_per_window_joined": (
        """CREATE MATERIALIZED VIEW v AS SELECT p.customer, p.window_start FROM
            (SELECT customer, window_start, window_end FROM TUMBLE(orders, ts, INTERVAL '3 seconds')
             WHERE qty > 6 GROUP BY customer, window_start, window_end) p
        JOIN (SELECT customer, window_start, window_end FROM TUMBLE(orders, ts, INTERVAL '3 seconds')
              WHERE category = 'a' GROUP BY customer, window_start, window_end) a
        ON p.customer = a.customer AND p.window_start = a.window_start
           AND p.window_end = a.window_end""",
        """SELECT DISTINCT p.customer, p.ws FROM
            (SELECT customer, time_bucket(INTERVAL '3 seconds', ts, TIMESTAMP '1970-01-01') AS ws
             FROM orders WHERE qty > 6) p
        JOIN (SELECT customer, time_bucket(INTERVAL '3 seconds', ts, TIMESTAMP '1970-01-01') AS ws
              FROM orders WHERE category = 'a') a ON p.customer = a.customer AND p.ws = a.ws""",
    ),
    # Nexmark q9's shape: a Top-N over a join of a subquery's `o.*`, of which the view
    # shows three columns
    "topn_over_a_star_subquery": (
        """CREATE MATERIALIZED VIEW v AS
        SELECT id, customer, top FROM (
            SELECT o.*, t.top,
                   row_number() OVER (PARTITION BY o.customer ORDER BY o.amount DESC) AS rn
            FROM orders o JOIN (SELECT customer, max(qty) AS top FROM orders GROUP BY customer) t
            ON o.customer = t.customer
        ) WHERE rn <= 2""",
        """SELECT id, customer, top FROM (
            SELECT o.*, t.top,
                   row_number() OVER (PARTITION BY o.customer ORDER BY o.amount DESC, o.id) AS rn
            FROM orders o JOIN (SELECT customer, max(qty) AS top FROM orders GROUP BY customer) t
            ON o.customer = t.customer
        ) WHERE rn <= 2""",
    ),
    # date strings as keys: one-to-one with a truncation (grouped by the truncated timestamp),
    # and not ('SS', grouped by the string itself); a key inside a larger expression
    "time_string_keys": (
        """CREATE MATERIALIZED VIEW v AS
        SELECT to_char(ts, 'YYYY-MM-DD HH24:MI:SS') AS sec, to_char(ts, 'SS') AS ss,
               length(to_char(ts, 'DD/MM/YYYY')) + customer % 2 AS len, count(*) AS n,
               sum(qty) AS total
        FROM orders
        GROUP BY to_char(ts, 'YYYY-MM-DD HH24:MI:SS'), to_char(ts, 'SS'),
                 to_char(ts, 'DD/MM/YYYY'), customer % 2
        HAVING to_char(ts, 'YYYY-MM-DD HH24:MI:SS') > '1970'""",
        """SELECT strftime(ts, '%Y-%m-%d %H:%M:%S'), strftime(ts, '%S'),
               length(strftime(ts, '%d/%m/%Y')) + customer % 2, count(*), sum(qty)
        FROM orders GROUP BY 1, 2, strftime(ts, '%d/%m/%Y'), customer % 2""",
    ),
    "stateless": (
        "CREATE MATERIALIZED VIEW v AS SELECT id, amount * qty AS value FROM orders "
        "WHERE qty > 7 AND category IN ('a', 'b')",
        "SELECT id, amount * qty AS value FROM orders WHERE qty > 7 AND category IN ('a', 'b')",
    ),
}


def _all_rows(tmp: Path):
    stmt = parse_one(SOURCE)
    src = DatagenSource(
        ConnectorContext("orders", "", tmp), stmt.columns, stmt.options, stmt.format
    )
    src.seek({})
    batch = src.poll(10 * ROWS)
    assert batch is not None and batch.data.num_rows == ROWS
    return batch.data


def _normalise(rows: list[tuple]) -> list[tuple]:
    def norm(v):
        return round(v, 6) if isinstance(v, float) else v

    return sorted((tuple(norm(v) for v in r) for r in rows), key=repr)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("batch_rows", [997, 8_000, 1_000_000])
def test_view_equals_batch_query(case, batch_rows, catalog_dsn, tmp_data_dir):
    view_sql, batch_sql = CASES[case]
    con = duckdb.connect()
    con.register("orders", _all_rows(tmp_data_dir))
    expected = _normalise(con.sql(batch_sql).fetchall())

    settings = Settings(data_dir=tmp_data_dir, batch_rows=batch_rows, checkpoint_interval=0.0)
    engine = Engine(settings, catalog_dsn)
    try:
        engine.execute_script(f"{SOURCE}; {view_sql};")
        run_engine(engine, JobOptions(once=True))
        got = _normalise([tuple(r.values()) for r in engine.query("SELECT * FROM v").to_pylist()])
    finally:
        engine.close()
    assert got == expected
    assert len(expected) > 0


@pytest.mark.parametrize(
    "case",
    [
        "per_customer",
        "tumble_eowc",
        "tumble_updating",
        "hop_panes",
        "shared_hop_count",
        "global",
        "topn_per_key",
        "distinct_eowc",
        "distinct_updating",
        "join_stream_to_window_max",
        "new_groups_only",
        "new_groups_per_window_joined",
    ],
)
def test_restart_between_epochs_equals_batch_query(case, catalog_dsn, tmp_data_dir):
    """Stop after some epochs, recover in a new engine from the checkpoint, finish: same result."""
    view_sql, batch_sql = CASES[case]
    con = duckdb.connect()
    con.register("orders", _all_rows(tmp_data_dir))
    expected = _normalise(con.sql(batch_sql).fetchall())

    settings = Settings(data_dir=tmp_data_dir, batch_rows=2_500, checkpoint_interval=3600)
    engine = Engine(settings, catalog_dsn)
    engine.execute_script(f"{SOURCE}; {view_sql};")
    for _ in range(3):
        engine.run_epoch()
    engine.checkpoint()
    for _ in range(2):
        engine.run_epoch()  # processed but never checkpointed: must be replayed, not lost
    engine.close()

    engine = Engine(settings, catalog_dsn)
    try:
        engine.execute_script(f"{SOURCE}; {view_sql};")  # same definitions: resume
        run_engine(engine, JobOptions(once=True))
        got = _normalise([tuple(r.values()) for r in engine.query("SELECT * FROM v").to_pylist()])
    finally:
        engine.close()
    assert got == expected


def test_top_n_per_key_over_a_stream_keeps_only_the_top_rows(catalog_dsn, tmp_data_dir):
    """Over append-only input a row below a key's top N never comes back: not kept."""
    settings = Settings(data_dir=tmp_data_dir, batch_rows=2_000, checkpoint_interval=3600)
    engine = Engine(settings, catalog_dsn)
    try:
        engine.execute_script(f"{SOURCE}; {CASES['topn_per_key'][0]};")
        (op,) = [o for o in engine.pipelines["v"].operators if type(o).__name__ == "RecomputeOperator"]
        assert op.node.top_only  # one ranking per batch: the rows kept are the new top
        run_engine(engine, JobOptions(once=True))
        (pipeline,) = engine.metrics()["pipelines"]
        inputs = {t: n for t, n in pipeline["state_rows"].items() if t.endswith("_in0")}
    finally:
        engine.close()
    # 40 customers, top 3 each (amounts are distinct doubles, so no ties widen it)
    assert inputs and all(n <= 40 * 3 for n in inputs.values()), inputs


def test_stream_joined_to_a_windowed_aggregate_drops_closed_windows(catalog_dsn, tmp_data_dir):
    """The stream's rows go once the windows they can meet have closed (Nexmark q7's shape)."""
    settings = Settings(data_dir=tmp_data_dir, batch_rows=2_000, checkpoint_interval=3600)
    engine = Engine(settings, catalog_dsn)
    try:
        engine.execute_script(f"{SOURCE}; {CASES['join_stream_to_window_max'][0]};")
        (res,) = engine.execute_script(
            "EXPLAIN CREATE MATERIALIZED VIEW e AS "
            + CASES["join_stream_to_window_max"][0].split(" AS ", 1)[1]
        )
        assert "left as a log, right as a multiset, dropped once" in res.rows[2][0], res.rows
        run_engine(engine, JobOptions(once=True))
        (pipeline,) = engine.metrics()["pipelines"]
        left = [n for t, n in pipeline["state_rows"].items() if t.endswith("_left")]
    finally:
        engine.close()
    # 30 s of rows at 1 ms; a row lives for its 3 s window, the 2 s watermark delay and a batch
    assert left and left[0] < 10_000, pipeline["state_rows"]


@pytest.mark.parametrize(
    ("query", "in_panes"),
    [
        (CASES["hop_panes"][0], True),
        (CASES["hop_panes_end_eowc"][0], True),
        (CASES["hop_reading_window_columns"][0], False),
        # a count(DISTINCT ...) keeps its values per window
        (
            "CREATE MATERIALIZED VIEW v AS SELECT window_start, count(DISTINCT customer) AS c "
            "FROM HOP(orders, ts, INTERVAL '2 seconds', INTERVAL '5 seconds') GROUP BY window_start",
            False,
        ),
        # no window bound among the keys: each row counts once per window it is in
        (
            "CREATE MATERIALIZED VIEW v AS SELECT category, count(*) AS n "
            "FROM HOP(orders, ts, INTERVAL '2 seconds', INTERVAL '5 seconds') GROUP BY category",
            False,
        ),
        # a day is not always 24 hours long
        (
            "CREATE MATERIALIZED VIEW v AS SELECT window_start, count(*) AS n "
            "FROM HOP(orders, ts, INTERVAL '1 hour', INTERVAL '1 day') GROUP BY window_start",
            False,
        ),
    ],
)
def test_hop_aggregates_fold_in_panes_only_where_that_is_the_same(
    query, in_panes, catalog_dsn, tmp_data_dir
):
    engine = Engine(Settings(data_dir=tmp_data_dir), catalog_dsn)
    try:
        engine.execute_script(f"{SOURCE};")
        (res,) = engine.execute_script("EXPLAIN " + query)
    finally:
        engine.close()
    plan = "\n".join(r[0] for r in res.rows)
    assert "WindowAssign HOP" in plan
    assert ("in panes" in plan) == in_panes, plan


def test_a_join_stores_only_the_columns_the_query_reads(catalog_dsn, tmp_data_dir):
    """The stream side of join_stream_to_aggregate is kept as state (every order, until the
    end): only id, customer and amount, which the query reads, not category, qty or ts."""
    engine = Engine(Settings(data_dir=tmp_data_dir, batch_rows=5_000), catalog_dsn)
    try:
        engine.execute_script(f"{SOURCE}; {CASES['join_stream_to_aggregate'][0]};")
        run_engine(engine, JobOptions(once=True))
        (join,) = [op for op in engine.pipelines["v"].operators if "Join" in type(op).__name__]
        stored = [
            {n for n, _ in side.columns} - {"__h", "__count", "__k0", "__k1"}
            for side in join.state_tables
        ]
        rows = engine.query("SELECT count(*) AS n FROM v").column("n")[0].as_py()
    finally:
        engine.close()
    assert stored == [{"id", "customer", "amount"}, {"customer", "top"}], stored
    assert rows > 0


def test_calls_share_their_accumulators(catalog_dsn, tmp_data_dir):
    """shared_accumulators keeps 9 state columns (count of rows, sum and count of qty, the
    FILTERed count, sum and count of amount, min, max, the distinct count), not 12."""
    engine = Engine(Settings(data_dir=tmp_data_dir), catalog_dsn)
    try:
        engine.execute_script(f"{SOURCE};")
        (res,) = engine.execute_script("EXPLAIN " + CASES["shared_accumulators"][0])
    finally:
        engine.close()
    assert "[state: 9 accumulators per group" in res.rows[-2][0], res.rows
    assert "__c" not in res.rows[-2][0]


def test_an_aggregate_computed_twice_keeps_one_state(catalog_dsn, tmp_data_dir):
    """shared_hop_count: the second HOP count projects the first's state (EXPLAIN says so,
    and it has no state tables); counts with other accumulators are not shared."""
    engine = Engine(Settings(data_dir=tmp_data_dir, batch_rows=5_000), catalog_dsn)
    try:
        engine.execute_script(f"{SOURCE}; {CASES['shared_hop_count'][0]};")
        (res,) = engine.execute_script(
            "EXPLAIN " + CASES["shared_hop_count"][0].replace("view v", "view e")
        )
        (other,) = engine.execute_script(
            "EXPLAIN "
            + CASES["shared_hop_count"][0]
            .replace("view v", "view e")
            .replace("count(*) AS n2", "count(qty) AS n2")
        )
        run_engine(engine, JobOptions(once=True))
        aggregates = [
            op for op in engine.pipelines["v"].operators if type(op).__name__ == "AggregateOperator"
        ]
    finally:
        engine.close()
    plan = "\n".join(r[0] for r in res.rows)
    assert plan.count("shared with the same aggregate above") == 1, plan
    assert "shared with" not in "\n".join(r[0] for r in other.rows)
    assert [len(op.state_tables) for op in aggregates] == [1, 0]


def test_top_n_reads_the_rank_it_kept_rows_by(catalog_dsn, tmp_data_dir):
    """topn_per_key: the row_number that decides which rows stay is the query's own, so the
    query over the kept rows reads it (``rank_sql``) instead of ranking them again; with
    row_number there is nothing else to compute it from, so the oracle cases above check
    the values."""
    engine = Engine(Settings(data_dir=tmp_data_dir), catalog_dsn)
    try:
        engine.execute_script(f"{SOURCE}; {CASES['topn_per_key'][0]};")
        nodes, todo = [], [engine.pipelines["v"].plan.root]
        while todo:
            n = todo.pop()
            nodes.append(n)
            todo += n.inputs
    finally:
        engine.close()
    (top,) = [n for n in nodes if type(n).__name__ == "Recompute"]
    assert top.rank_sql and top.rank_sql.startswith("ROW_NUMBER()"), top.rank_sql


def test_a_plain_projection_selects_columns_without_duckdb(catalog_dsn, tmp_data_dir):
    engine = Engine(Settings(data_dir=tmp_data_dir), catalog_dsn)
    try:
        engine.execute_script(f"{SOURCE};")
        (plain,) = engine.execute_script(
            "EXPLAIN CREATE MATERIALIZED VIEW e AS SELECT qty AS q, id FROM orders"
        )
        (computed,) = engine.execute_script(
            "EXPLAIN CREATE MATERIALIZED VIEW e AS SELECT qty + 1 AS q, id FROM orders"
        )
    finally:
        engine.close()
    assert "columns selected from the batch" in plain.rows[1][0], plain.rows
    assert "one DuckDB statement" in computed.rows[1][0], computed.rows


def _plan_of(engine: Engine, view: str) -> list[str]:
    """The EXPLAIN lines of a view's query (planned under another name beside the view)."""
    (res,) = engine.execute_script("EXPLAIN " + view.replace(" v AS ", " e AS ", 1))
    return [r[0] for r in res.rows]


def test_groups_without_aggregates_are_append_only_and_their_join_drops_closed_windows(
    catalog_dsn, tmp_data_dir
):
    """Nexmark q8's shape: the per-window groupings emit each group once (append-only), so the
    join keeps append logs, and it drops a window's rows once the window has closed."""
    view = CASES["new_groups_per_window_joined"][0]
    settings = Settings(data_dir=tmp_data_dir, batch_rows=1_000, checkpoint_interval=3600)
    engine = Engine(settings, catalog_dsn)
    try:
        engine.execute_script(f"{SOURCE}; {view};")
        plan = "\n".join(_plan_of(engine, view))
        assert plan.count("emit=new groups (append-only)") == 2, plan
        assert "DeltaJoin (inner join of append-only inputs) [state: both inputs, dropped once the watermark closes their windows]" in plan, plan
        (join,) = [o for o in engine.pipelines["v"].operators if type(o).__name__ == "DeltaJoinOperator"]
        assert not join.node.retracting
        peak = 0
        while not engine.finished():
            engine.run_epoch()
            peak = max(peak, *(side.row_count() for side in join.state_tables))
    finally:
        engine.close()
    # 40 customers per 3 s window on each side; a window's rows live until the watermark
    # (2 s behind) passes its end, and a batch is 1 s of rows: at most 3 windows' worth live,
    # against 10 windows over the 30 s of rows
    assert 0 < peak <= 3 * 40, peak


def test_select_distinct_over_a_stream_keeps_its_column_names(catalog_dsn, tmp_data_dir):
    view = CASES["distinct_over_a_stream"][0]
    settings = Settings(data_dir=tmp_data_dir, batch_rows=3_000, checkpoint_interval=3600)
    engine = Engine(settings, catalog_dsn)
    try:
        engine.execute_script(f"{SOURCE}; {view};")
        plan = _plan_of(engine, view)
        assert "emit=new groups (append-only)" in plan[1], plan
        run_engine(engine, JobOptions(once=True))
        got = engine.query("SELECT u, c3, count(*) AS n FROM v GROUP BY u, c3 ORDER BY u, c3")
    finally:
        engine.close()
    # 4 categories x 3 remainders, each with its 10 quantities
    assert got.to_pylist() == [
        {"u": u, "c3": c, "n": 10} for u in "ABCD" for c in range(3)
    ]


def test_groups_seen_before_are_not_written_again(catalog_dsn, tmp_data_dir):
    """A grouping without aggregates keeps the set of groups: once all 160 (customer,
    category) groups are known and checkpointed, later batches change no state row."""
    settings = Settings(data_dir=tmp_data_dir, batch_rows=2_000, checkpoint_interval=3600)
    engine = Engine(settings, catalog_dsn)
    try:
        engine.execute_script(f"{SOURCE}; {CASES['new_groups_only'][0]};")
        (agg,) = [o for o in engine.pipelines["v"].operators if type(o).__name__ == "AggregateOperator"]
        engine.run_epoch()
        engine.checkpoint()
        dirty = agg.state.dirty
        for _ in range(3):
            assert engine.run_epoch()
            assert engine.con.sql(f"SELECT count(*) FROM {dirty}").fetchall() == [(0,)]
        assert agg.state.row_count() == 40 * 4
    finally:
        engine.close()


def test_an_interval_join_drops_rows_past_a_bound_column(catalog_dsn, tmp_data_dir):
    """The `a` side's rows go once the watermark passes their `until`, a timestamp column
    that is not an event time; and the last rows of a bounded source bring its end, so the
    epoch that reads them leaves no state behind."""
    view = CASES["interval_join_to_a_bound_column"][0]
    settings = Settings(data_dir=tmp_data_dir, batch_rows=1_000, checkpoint_interval=3600)
    engine = Engine(settings, catalog_dsn)
    try:
        engine.execute_script(f"{SOURCE}; {view};")
        (join,) = [o for o in engine.pipelines["v"].operators if type(o).__name__ == "DeltaJoinOperator"]
        assert all(join.node.expiry_sql), join.node.expiry_sql
        peak = 0
        while not engine.finished():
            rows = engine.run_epoch()
            left, right = (side.row_count() for side in join.state_tables)
            peak = max(peak, left)
        # the epoch that read the last rows dropped every row: no later epoch was needed
        assert rows > 0 and (left, right) == (0, 0)
    finally:
        engine.close()
    # a quarter of 1 row a ms, each living its 2 s, the 2 s watermark delay and a 1 s batch
    assert 0 < peak <= 1_500, peak


def test_date_string_keys_are_grouped_as_truncated_timestamps(catalog_dsn, tmp_data_dir):
    """time_string_keys: the keys one-to-one with a truncation of ``ts`` are kept as
    timestamps (formatted when projected); 'SS' is not one-to-one and stays a string."""
    engine = Engine(Settings(data_dir=tmp_data_dir), catalog_dsn)
    try:
        engine.execute_script(f"{SOURCE};")
        agg = next(line for line in _plan_of(engine, CASES["time_string_keys"][0]) if "Aggregate" in line)
    finally:
        engine.close()
    assert "keys=[key0 (a TIMESTAMP, formatted '%Y-%m-%d %H:%M:%S'), key1, " in agg, agg
    assert "key2 (a TIMESTAMP, formatted '%d/%m/%Y'), key3]" in agg, agg


def test_columns_a_subquery_selects_but_nothing_reads_are_not_stored(catalog_dsn, tmp_data_dir):
    """topn_over_a_star_subquery: the join and the Top-N keep what the view reads (id,
    customer, top) and what they order and join by (amount), not the rest of `o.*`."""
    engine = Engine(Settings(data_dir=tmp_data_dir, batch_rows=5_000), catalog_dsn)
    try:
        engine.execute_script(f"{SOURCE}; {CASES['topn_over_a_star_subquery'][0]};")
        run_engine(engine, JobOptions(once=True))
        stored = {
            type(op).__name__: {n for t in op.state_tables for n, _ in t.columns}
            for op in engine.pipelines["v"].operators
        }
    finally:
        engine.close()
    for op, columns in stored.items():
        assert not {"category", "qty", "ts"} & columns, (op, columns)
    assert any("amount" in c for c in stored.values()), stored
