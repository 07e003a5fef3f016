"""Throughput of incremental queries (windowed aggregates, a join, a filter) as a ratio
against DuckDB running the same query as one batch over the same rows (already in memory),
in the same run.

    python benchmarks/incremental.py [--rows 20000000] [--catalog postgresql://...]

Without --catalog a throwaway embedded Postgres is started in a temporary directory.
Checkpoints run at the default 1 s interval; the figure with checkpoints only at the end
(an infinite interval) is printed beside it.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import duckdb

from sqlstream.checkpoint.embedded import scratch_catalog
from sqlstream.config import Settings
from sqlstream.connectors.base import ConnectorContext
from sqlstream.connectors.datagen.source import DatagenSource
from sqlstream.engine.engine import Engine
from sqlstream.engine.loop import JobOptions, run_engine
from sqlstream.sql.parser import parse

SOURCE = """CREATE SOURCE bids (auction BIGINT, bidder BIGINT, price BIGINT, ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '1 second')
WITH (connector = 'datagen', datagen.rows.per.second = '0', datagen.rows.total = '{rows}',
      datagen.time.step = '10us', fields.auction.min = '1000', fields.auction.max = '11000',
      fields.price.min = '100', fields.price.max = '100000000');
CREATE SOURCE auctions (id BIGINT, seller BIGINT, ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '1 second')
WITH (connector = 'datagen', datagen.rows.per.second = '0', datagen.rows.total = '{auctions}',
      datagen.time.step = '1ms', fields.id.kind = 'sequence', fields.id.start = '1000',
      fields.seller.min = '1', fields.seller.max = '500')"""

QUERIES = {
    "tumble_eowc": (
        "SELECT auction, window_start, count(*) AS n, max(price) AS top, avg(price) AS mean "
        "FROM TUMBLE(bids, ts, INTERVAL '10 seconds') GROUP BY auction, window_start "
        "EMIT ON WINDOW CLOSE",
        "SELECT auction, time_bucket(INTERVAL '10 seconds', ts, TIMESTAMP '1970-01-01') AS ws, "
        "count(*), max(price), avg(price) FROM bids GROUP BY ALL",
    ),
    "hop_aggregate": (
        "SELECT auction, window_start, count(*) AS n FROM HOP(bids, ts, INTERVAL '2 seconds', "
        "INTERVAL '10 seconds') GROUP BY auction, window_start EMIT ON WINDOW CLOSE",
        "SELECT auction, ws, count(*) FROM (SELECT *, unnest(generate_series(time_bucket("
        "INTERVAL '2 seconds', ts - INTERVAL '10 seconds', TIMESTAMP '1970-01-01'), time_bucket("
        "INTERVAL '2 seconds', ts, TIMESTAMP '1970-01-01'), INTERVAL '2 seconds')) AS ws FROM bids) "
        "WHERE ws + INTERVAL '10 seconds' > ts GROUP BY ALL",
    ),
    "interval_join": (
        "SELECT b.auction, b.price, a.seller FROM bids b JOIN auctions a ON b.auction = a.id "
        "AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '20 seconds'",
        "SELECT b.auction, b.price, a.seller FROM bids b JOIN auctions a ON b.auction = a.id "
        "AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '20 seconds'",
    ),
    "filter_project": (
        "SELECT auction, price * 0.9 AS eur FROM bids WHERE price % 7 = 0",
        "SELECT auction, price * 0.9 AS eur FROM bids WHERE price % 7 = 0",
    ),
}


def batch_rate(rows: int, batch_sql: str) -> float:
    con = duckdb.connect()
    for stmt in parse(SOURCE.format(rows=rows, auctions=rows // 50)):
        ctx = ConnectorContext(stmt.name, "", Path("."))
        src = DatagenSource(ctx, stmt.columns, stmt.options, None)
        src.seek({})
        con.register(stmt.name, src.poll(rows + 1).data)
    started = time.perf_counter()
    con.sql(f"CREATE TABLE r AS {batch_sql}")
    return rows / (time.perf_counter() - started)


def stream_rate(rows: int, query: str, dsn: str, data_dir: Path, interval: float) -> float:
    with __import__("psycopg").connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS sqlstream CASCADE")
        conn.execute("DROP SCHEMA IF EXISTS sqlstream_state CASCADE")
    engine = Engine(Settings(data_dir=data_dir, checkpoint_interval=interval), dsn)
    try:
        engine.execute_script(
            SOURCE.format(rows=rows, auctions=rows // 50)
            + f"; CREATE MATERIALIZED VIEW out AS {query};"
        )
        started = time.perf_counter()
        run_engine(engine, JobOptions(once=True))
        return rows / (time.perf_counter() - started)
    finally:
        engine.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000_000)
    ap.add_argument("--catalog")
    args = ap.parse_args()
    with scratch_catalog(args.catalog, "sqlstream-bench-") as (dsn, tmp):
        print(f"{'query':16} {'batch rows/s':>14} {'stream rows/s':>14} {'ratio':>6} "
              f"{'no-ckpt rows/s':>15} {'ratio':>6}")
        for name, (query, batch_sql) in QUERIES.items():
            b = batch_rate(args.rows, batch_sql)
            s = stream_rate(args.rows, query, dsn, tmp, 1.0)
            n = stream_rate(args.rows, query, dsn, tmp, math.inf)
            print(f"{name:16} {b:14,.0f} {s:14,.0f} {s / b:6.2f} {n:15,.0f} {n / b:6.2f}")


if __name__ == "__main__":
    main()
