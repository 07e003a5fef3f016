"""A catalog database that goes away mid-run: the job waits, recovers from the last
checkpoint when it returns, and the sink still ends up exactly right."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from sqlstream.checkpoint.embedded import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[1]
ROWS = 60_000

JOB = f"""
CREATE SOURCE g (id BIGINT, k BIGINT) WITH (
    connector = 'datagen', datagen.rows.per.second = '15000', datagen.rows.total = '{ROWS}',
    fields.id.kind = 'sequence', fields.k.min = '1', fields.k.max = '7');
CREATE MATERIALIZED VIEW per_k AS SELECT k, count(*) AS n, sum(id) AS s FROM g GROUP BY k;
CREATE SINK per_k_pg FROM per_k
WITH (connector = 'postgres', table = 'per_k', type = 'upsert', primary_key = 'k');
"""


def test_job_survives_the_catalog_going_away(tmp_data_dir):
    pg = EmbeddedPostgres(tmp_data_dir / "catalog", settings={"fsync": "off"})
    dsn = pg.start()
    job = tmp_data_dir / "job.sql"
    job.write_text(JOB)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(
        [sys.executable, "-m", "sqlstream", "run", str(job), "--once", "--catalog", dsn,
         "--data-dir", str(tmp_data_dir), "--checkpoint-interval", "200ms"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until a first checkpoint is committed
            time.sleep(0.2)
            with psycopg.connect(dsn) as conn:
                try:
                    if conn.execute("SELECT count(*) FROM sqlstream.checkpoints").fetchone()[0]:
                        break
                except psycopg.errors.UndefinedTable:
                    pass
        pg.stop()
        time.sleep(2.0)
        assert p.poll() is None, p.stderr.read().decode()  # still waiting, not dead
        assert pg.start() == dsn
        assert p.wait(90) == 0, p.stderr.read().decode()
        with psycopg.connect(dsn) as conn:
            got = dict((k, (n, int(s))) for k, n, s in conn.execute("SELECT k, n, s FROM per_k"))
            (restarts,) = conn.execute("SELECT count(*) FROM sqlstream.checkpoints").fetchone()
        assert restarts > 1
    finally:
        if p.poll() is None:
            p.kill()
        pg.stop()
    # The expected result, from the same generator as one batch.
    import duckdb

    from sqlstream.connectors.base import ConnectorContext
    from sqlstream.connectors.datagen.source import DatagenSource
    from sqlstream.sql.parser import parse

    src_stmt = parse(JOB)[0]
    unpaced = {**src_stmt.options, "datagen.rows.per.second": "0"}  # same rows, at once
    src = DatagenSource(ConnectorContext("g", "", tmp_data_dir), src_stmt.columns, unpaced, None)
    src.seek({})
    con = duckdb.connect()
    con.register("g", src.poll(ROWS + 1).data)
    expected = {k: (n, int(s)) for k, n, s in
                con.sql("SELECT k, count(*), sum(id) FROM g GROUP BY k").fetchall()}
    assert got == expected
