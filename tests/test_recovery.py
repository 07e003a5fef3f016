"""Recovery: `sqlstream run` killed with SIGKILL at random moments (and exactly inside a
checkpoint commit), restarted each time, ends with sink contents equal to a failure-free run:
row for row, no duplicates, no gaps."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import psycopg
import pytest
from conftest import fresh_database

ROWS = 240_000

JOB = """
CREATE SOURCE bids (
    id BIGINT, auction BIGINT, price BIGINT, ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '1 second'
) WITH (
    connector = 'datagen', datagen.rows.per.second = '80000', datagen.rows.total = '{rows}',
    datagen.seed = '11', fields.id.kind = 'sequence', fields.auction.min = '1',
    fields.auction.max = '500', fields.price.min = '1', fields.price.max = '100000'
);

CREATE MATERIALIZED VIEW per_second AS
SELECT window_start, auction % 10 AS bucket, count(*) AS bids, sum(price) AS volume,
       max(price) AS top
FROM TUMBLE(bids, ts, INTERVAL '1 second')
GROUP BY window_start, auction % 10
EMIT ON WINDOW CLOSE;

CREATE MATERIALIZED VIEW per_auction AS
SELECT auction, count(*) AS bids, max(price) AS top, min(price) AS low FROM bids GROUP BY auction;

CREATE SINK per_second_pg FROM per_second
WITH (connector = 'postgres', table = 'per_second_out');

CREATE SINK per_auction_pg FROM per_auction
WITH (connector = 'postgres', table = 'per_auction_out', type = 'upsert', primary_key = 'auction');

CREATE SINK big_bids AS SELECT id, auction, price, ts FROM bids WHERE price > 99000
WITH (connector = 'file', path = '{out}/big_bids') FORMAT PLAIN ENCODE PARQUET;

CREATE SINK per_second_files FROM per_second
WITH (connector = 'file', path = '{out}/per_second') FORMAT PLAIN ENCODE JSON;
"""


def _run(job: Path, dsn: str, data_dir: Path, env_extra: dict[str, str] | None = None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "sqlstream", "run", str(job), "--once", "--catalog", dsn,
         "--data-dir", str(data_dir), "--checkpoint-interval", "150ms", "--quiet"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _contents(dsn: str, out: Path) -> dict[str, list[tuple]]:
    with psycopg.connect(dsn) as conn:
        res = {
            t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall())
            for t in ("per_second_out", "per_auction_out")
        }
    con = duckdb.connect()
    res["big_bids"] = sorted(
        con.sql(f"SELECT * FROM read_parquet('{out}/big_bids/*.parquet')").fetchall()
    )
    res["per_second_files"] = sorted(
        con.sql(f"SELECT * FROM read_json_auto('{out}/per_second/*.jsonl')").fetchall()
    )
    return res


def _write_job(tmp: Path, name: str) -> tuple[Path, Path]:
    out = tmp / f"out-{name}"
    job = tmp / f"{name}.sql"
    job.write_text(JOB.format(rows=ROWS, out=out))
    return job, out


def test_sigkill_at_random_moments_gives_exactly_once(pg_dsn, tmp_data_dir):
    with fresh_database(pg_dsn) as clean_dsn, fresh_database(pg_dsn) as dsn:
        _kill_and_compare(clean_dsn, dsn, tmp_data_dir)


def _kill_and_compare(clean_dsn: str, dsn: str, tmp_data_dir: Path) -> None:

    # The failure-free run.
    job, out = _write_job(tmp_data_dir, "clean")
    p = _run(job, clean_dsn, tmp_data_dir / "clean")
    assert p.wait(120) == 0, p.stderr.read().decode()
    expected = _contents(clean_dsn, out)
    assert len(expected["per_second_out"]) > 20 and len(expected["big_bids"]) > 50

    # The same job, killed again and again.
    job, out = _write_job(tmp_data_dir, "crashy")
    rng = random.Random(int(os.environ.get("SQLSTREAM_TEST_SEED", "5")))
    kills = 0
    # Two kills exactly inside a checkpoint commit, then kills at random moments.
    plans = [{"SQLSTREAM_CRASH_POINT": "pre-commit:4"}, {"SQLSTREAM_CRASH_POINT": "post-commit:3"}]
    plans += [None] * 4
    for plan in plans:
        p = _run(job, dsn, tmp_data_dir / "crashy", plan)
        if plan is None:
            time.sleep(rng.uniform(0.4, 2.5))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        code = p.wait(120)
        if code == -signal.SIGKILL:
            kills += 1
        else:
            assert code == 0, p.stderr.read().decode()
    assert kills >= 3
    p = _run(job, dsn, tmp_data_dir / "crashy")
    assert p.wait(120) == 0, p.stderr.read().decode()

    got = _contents(dsn, out)
    for name in expected:
        assert got[name] == expected[name], name


@pytest.fixture(autouse=True)
def _python_path(monkeypatch):
    root = str(Path(__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", root + os.pathsep + os.environ.get("PYTHONPATH", ""))
