"""The command line, as a user runs it (subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]


def sqlstream(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "sqlstream", *args], capture_output=True, text=True, env=env,
        timeout=120, **kw,
    )


def test_help_is_useful():
    out = sqlstream("--help")
    assert out.returncode == 0
    assert "run" in out.stdout and "checkpoints" in out.stdout
    out = sqlstream("run", "--help")
    assert out.returncode == 0
    for flag in ("--once", "--catalog", "--data-dir", "--checkpoint-interval", "--reset"):
        assert flag in out.stdout


def test_errors_are_one_line_without_traceback(tmp_path, catalog_dsn):
    job = tmp_path / "bad.sql"
    job.write_text("CREATE SOURCE s (a INT) WITH (connector = 'datagen');\nSELECT * FROMM s;\n")
    out = sqlstream("run", str(job), "--once", "--catalog", catalog_dsn)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "42601" in lines[0] and "line 2" in lines[0]
    out = sqlstream("run", str(job), "--once", "--catalog", catalog_dsn, "--debug")
    assert "Traceback" in out.stderr


def test_once_runs_a_file_job_into_postgres(tmp_path, catalog_dsn):
    data = tmp_path / "in"
    data.mkdir()
    (data / "1.jsonl").write_text(
        "\n".join(json.dumps({"user": f"u{i % 3}", "amount": i}) for i in range(30)) + "\n"
    )
    job = tmp_path / "job.sql"
    job.write_text(f"""
        CREATE SOURCE pay (user VARCHAR, amount BIGINT)
        WITH (connector = 'file', path = '{data}') FORMAT PLAIN ENCODE JSON;
        CREATE MATERIALIZED VIEW totals AS SELECT user, sum(amount) AS total FROM pay GROUP BY user;
        CREATE SINK totals_pg FROM totals
        WITH (connector = 'postgres', table = 'totals', type = 'upsert', primary_key = 'user');
    """)
    out = sqlstream("run", str(job), "--once", "--catalog", catalog_dsn)
    assert out.returncode == 0, out.stderr
    expected = {f"u{k}": sum(i for i in range(30) if i % 3 == k) for k in range(3)}
    with psycopg.connect(catalog_dsn) as conn:
        assert dict(conn.execute("SELECT * FROM totals").fetchall()) == expected
    # A new file, the same job again: it resumes and only adds the new rows.
    (data / "2.jsonl").write_text(json.dumps({"user": "u0", "amount": 1000}) + "\n")
    out = sqlstream("run", str(job), "--once", "--catalog", catalog_dsn)
    assert out.returncode == 0, out.stderr
    expected["u0"] += 1000
    with psycopg.connect(catalog_dsn) as conn:
        assert dict(conn.execute("SELECT * FROM totals").fetchall()) == expected


def test_ctrl_c_stops_after_a_final_checkpoint(tmp_path, catalog_dsn):
    job = tmp_path / "job.sql"
    job.write_text("""
        CREATE SOURCE g (id BIGINT) WITH (connector = 'datagen', datagen.rows.per.second = '5000',
            fields.id.kind = 'sequence');
        CREATE MATERIALIZED VIEW c AS SELECT count(*) AS n, max(id) AS top FROM g;
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(
        [sys.executable, "-m", "sqlstream", "run", str(job), "--catalog", catalog_dsn,
         "--checkpoint-interval", "1h"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    with psycopg.connect(catalog_dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait until the job runs
            time.sleep(0.2)
            try:
                if conn.execute("SELECT count(*) FROM sqlstream.objects").fetchone()[0] == 2:
                    break
            except psycopg.errors.UndefinedTable:
                pass
        time.sleep(1.0)
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 0, p.stderr.read().decode()
        # The interval is an hour: besides the first (taken with the first rows read, so
        # output shows at once), the only checkpoint is the one taken on the way out.
        (epochs,) = conn.execute("SELECT count(*) FROM sqlstream.checkpoints").fetchone()
        assert epochs == 2
        (offset,) = conn.execute(
            "SELECT \"offset\" FROM sqlstream.source_offsets WHERE object = 'c'"
        ).fetchone()
        assert offset > 1000
