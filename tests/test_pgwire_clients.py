"""Real clients against a real ``sqlstream serve`` subprocess: psql, psycopg 3 (plain, with
parameters, pipeline mode, binary), asyncpg (binary extended protocol), JDBC, SCRAM."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

import asyncpg
import psycopg
import pytest
from server_util import ROOT, ServerProcess, running_server

ROWS = 1000
JOB = f"""
-- a bounded generator, a view of every row, and an aggregate over it
CREATE SOURCE orders (
    id BIGINT, customer INT, amount NUMERIC(10,2), status VARCHAR, ts TIMESTAMP, paid BOOLEAN
) WITH (
    connector = 'datagen', datagen.rows.per.second = '0', datagen.rows.total = '{ROWS}',
    fields.id.kind = 'sequence', fields.customer.max = '9',
    fields.status.values = 'new,paid,shipped'
);
CREATE MATERIALIZED VIEW raw_orders AS SELECT * FROM orders;
CREATE MATERIALIZED VIEW per_customer AS
SELECT customer, count(*) AS orders, sum(amount) AS total, max(ts) AS last_ts
FROM orders GROUP BY customer;
FLUSH;
"""


def psql(server: ServerProcess, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    if password:
        env["PGPASSWORD"] = password
    return subprocess.run(
        ["psql", "-X", "-h", "127.0.0.1", "-p", str(server.port), "-U", "tester", "-d", "sqlstream", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )


@pytest.fixture(scope="module")
def server(pg_dsn: str):
    with running_server(pg_dsn, ["--auth", "trust", "--checkpoint-interval", "200ms"]) as s:
        yield s


@pytest.fixture(scope="module")
def pipeline(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    """The job created with `psql -f` (as a user would), once for the module."""
    job = tmp_path_factory.mktemp("job") / "job.sql"
    job.write_text(JOB)
    out = psql(server, "-v", "ON_ERROR_STOP=1", "-f", str(job))
    assert out.returncode == 0, out.stderr + server.log()
    assert out.stdout.split() == ["CREATE", "SOURCE", "CREATE", "MATERIALIZED", "VIEW",
                                  "CREATE", "MATERIALIZED", "VIEW", "FLUSH"]
    return server


@pytest.fixture(scope="module")
def raw_rows(pipeline: ServerProcess) -> list[tuple]:
    with psycopg.connect(pipeline.dsn(), autocommit=True) as conn:
        return conn.execute("SELECT id, customer, amount, status, ts, paid FROM raw_orders").fetchall()


def expected_per_customer(raw_rows: list[tuple]) -> list[tuple]:
    """per_customer computed here, in Python, from every generated row."""
    counts: Counter[int] = Counter()
    totals: dict[int, Decimal] = defaultdict(Decimal)
    last: dict[int, object] = {}
    for _id, customer, amount, _status, ts, _paid in raw_rows:
        counts[customer] += 1
        totals[customer] += amount
        last[customer] = max(last.get(customer, ts), ts)
    return [(c, counts[c], totals[c], last[c]) for c in sorted(counts)]


# -- psql ------------------------------------------------------------------------------------


def test_psql_script_queries_and_meta_commands(pipeline: ServerProcess):
    out = psql(pipeline, "-At", "-c", "SELECT sum(orders), count(*) FROM per_customer")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{ROWS}|10"

    out = psql(pipeline, "-c", r"\dm")
    assert "per_customer" in out.stdout and "raw_orders" in out.stdout
    assert "materialized view" in out.stdout
    out = psql(pipeline, "-c", r"\dt")
    assert "Did not find any relations." in out.stdout + out.stderr  # no TABLEs yet
    out = psql(pipeline, "-c", r"\dv")
    assert "Did not find any relations." in out.stdout + out.stderr  # plain views: none
    out = psql(pipeline, "-c", r"\d")
    assert "orders" in out.stdout and "foreign table" in out.stdout  # a source: data outside

    out = psql(pipeline, "-c", r"\d per_customer")
    assert out.returncode == 0, out.stderr
    assert 'Materialized view "public.per_customer"' in out.stdout
    for column, type_ in [("customer", "integer"), ("orders", "bigint"), ("total", "numeric"),
                          ("last_ts", "timestamp without time zone")]:
        assert any(line.split("|")[0].strip() == column and type_ in line
                   for line in out.stdout.splitlines()), out.stdout
    out = psql(pipeline, "-c", r"\d+ per_customer")
    assert "View definition:" in out.stdout and "GROUP BY customer" in out.stdout
    out = psql(pipeline, "-c", r"\d orders")
    assert 'Foreign table "public.orders"' in out.stdout and "Server: datagen" in out.stdout
    out = psql(pipeline, "-c", r"\d nothing_here")
    assert 'Did not find any relation named "nothing_here"' in out.stderr

    out = psql(pipeline, "-c", r"\l")
    assert "sqlstream" in out.stdout and "UTF8" in out.stdout
    out = psql(pipeline, "-c", r"\dn")
    assert "public" in out.stdout and "sqlstream" in out.stdout


def test_psql_shows_errors_with_position_and_goes_on(pipeline: ServerProcess):
    out = psql(pipeline, "-c", "SELECT nope FROM per_customer", "-c", "SELECT 42 AS answer")
    assert 'ERROR:  column "nope" does not exist' in out.stderr
    assert "LINE 1: SELECT nope FROM per_customer" in out.stderr
    assert "^" in out.stderr
    out = psql(pipeline, "-At", "-c", "SELECT 1; SELECT 2")  # two statements in one Query
    assert out.stdout.split() == ["1", "2"]


# -- psycopg ---------------------------------------------------------------------------------


def test_psycopg_plain_query_matches_the_rows_generated(pipeline: ServerProcess, raw_rows):
    assert len(raw_rows) == ROWS
    assert sorted(r[0] for r in raw_rows) == list(range(ROWS))  # a sequence, each id once
    with psycopg.connect(pipeline.dsn(), autocommit=True) as conn:
        got = conn.execute(
            "SELECT customer, orders, total, last_ts FROM per_customer ORDER BY customer"
        ).fetchall()
        cur = conn.execute("SELECT * FROM per_customer LIMIT 1")
        assert [(d.name, d.type_code) for d in cur.description] == [
            ("customer", 23), ("orders", 20), ("total", 1700), ("last_ts", 1114)
        ]
    assert got == expected_per_customer(raw_rows)


def test_psycopg_parameters_use_the_extended_protocol(pipeline: ServerProcess, raw_rows):
    expected = {c: n for c, n, _, _ in expected_per_customer(raw_rows)}
    nasty = ["it's", "back\\slash", "\\' OR 1=1 --", "x'; DROP SOURCE orders; --", "ünï€ødé", "$1", "a;b"]
    with psycopg.connect(pipeline.dsn(), autocommit=True) as conn:
        for customer in (0, 3, 9):
            row = conn.execute("SELECT orders FROM per_customer WHERE customer = %s", [customer]).fetchone()
            assert row == (expected[customer],)
        # Values are literals, never SQL: each comes back exactly as sent.
        for value in nasty:
            assert conn.execute("SELECT %s::text AS v", [value]).fetchone() == (value,)
            n = conn.execute("SELECT count(*) FROM raw_orders WHERE status <> %s", [value]).fetchone()
            assert n == (ROWS,)
        paid = sum(1 for r in raw_rows if r[5] and r[2] > Decimal("500"))
        row = conn.execute(
            "SELECT count(*) FROM raw_orders WHERE paid = %s AND amount > %s", [True, Decimal("500")]
        ).fetchone()
        assert row == (paid,)
        assert conn.execute("SHOW SOURCES").fetchall() == [("orders",)]
        # A prepared statement (psycopg prepares after a few executions) keeps working.
        for _ in range(6):
            assert conn.execute("SELECT orders FROM per_customer WHERE customer = %s", [1]).fetchone() == (expected[1],)


def test_psycopg_pipeline_mode_and_binary(pipeline: ServerProcess, raw_rows):
    expected = expected_per_customer(raw_rows)
    with psycopg.connect(pipeline.dsn(), autocommit=True) as conn:
        with conn.pipeline():
            c1 = conn.execute("SELECT count(*) FROM per_customer")
            c2 = conn.execute("SELECT sum(orders) FROM per_customer WHERE customer >= %s", [5])
            c3 = conn.execute("SELECT customer, orders, total, last_ts FROM per_customer ORDER BY customer")
        assert c1.fetchone() == (10,)
        assert c2.fetchone() == (sum(n for c, n, _, _ in expected if c >= 5),)
        assert c3.fetchall() == expected
        binary = conn.cursor(binary=True)
        binary.execute("SELECT customer, orders, total, last_ts FROM per_customer ORDER BY customer")
        assert binary.fetchall() == expected
        binary.execute("SELECT id, amount, status, ts, paid FROM raw_orders ORDER BY id LIMIT 5")
        assert binary.fetchall() == sorted((r[0], r[2], r[3], r[4], r[5]) for r in raw_rows)[:5]


def test_psycopg_errors_keep_the_session_usable(pipeline: ServerProcess):
    with psycopg.connect(pipeline.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UndefinedColumn) as e:
            conn.execute("SELECT nope FROM per_customer")
        assert e.value.diag.sqlstate == "42703" and e.value.diag.statement_position == "8"
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("SELEC 1")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("INSERT INTO per_customer VALUES (1, 2, 3, now())")
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # psycopg's default (not autocommit) sends BEGIN: the transaction status follows Postgres.
    with psycopg.connect(pipeline.dsn()) as conn:
        assert conn.execute("SELECT count(*) FROM per_customer").fetchone() == (10,)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM missing")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 2").fetchone() == (2,)
        conn.commit()


def test_introspection_and_system_schema(pipeline: ServerProcess):
    with psycopg.connect(pipeline.dsn(), autocommit=True) as conn:
        version = conn.execute("SELECT version()").fetchone()[0]
        assert version.startswith("PostgreSQL 15.0 (sqlstream")
        assert conn.execute("SHOW server_version").fetchone()[0].startswith("15.0")
        assert conn.execute("SELECT current_database(), current_user").fetchone() == ("sqlstream", "tester")
        assert conn.info.server_version == 150000
        cur = conn.execute("SET extra_float_digits = 3")
        assert cur.statusmessage == "SET"
        conn.execute("SET application_name = 'tests'")
        assert conn.execute("SHOW application_name").fetchone() == ("tests",)
        assert conn.info.parameter_status("application_name") == "tests"
        conn.execute("SET some_other_engine_setting = 'x'")  # accepted with a notice

        objects = conn.execute("SELECT name, kind, connector FROM sqlstream.objects ORDER BY name").fetchall()
        assert objects == [("orders", "source", "datagen"), ("per_customer", "materialized view", None),
                           ("raw_orders", "materialized view", None)]
        jobs = conn.execute("SELECT name, rows_in, rows_out FROM sqlstream.jobs ORDER BY name").fetchall()
        assert jobs == [("per_customer", ROWS, 10), ("raw_orders", ROWS, ROWS)]
        epochs = conn.execute("SELECT count(*), sum(rows_in) FROM sqlstream.checkpoints").fetchone()
        assert epochs[0] >= 1 and epochs[1] == 2 * ROWS  # two views read every row once
        offsets = conn.execute(
            "SELECT object, source, \"offset\" FROM sqlstream.source_offsets ORDER BY object"
        ).fetchall()
        assert offsets == [("per_customer", "orders", str(ROWS)), ("raw_orders", "orders", str(ROWS))]
        assert conn.execute("SELECT count(*) FROM sqlstream.dead_letters").fetchone() == (0,)
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
        ).fetchall()
        assert tables == [("orders",), ("per_customer",), ("raw_orders",)]


def test_health_and_metrics(pipeline: ServerProcess):
    assert pipeline.health() == 200
    text = pipeline.metrics()
    assert f'sqlstream_source_rows_in_total{{object="per_customer",source="orders"}} {ROWS}' in text
    assert 'sqlstream_rows_out_total{object="per_customer",kind="materialized view"} 10' in text
    for name in ("sqlstream_ready 1", "sqlstream_epoch ", "sqlstream_checkpoint_duration_seconds ",
                 "sqlstream_checkpoint_age_seconds ", "sqlstream_state_rows{", "sqlstream_pgwire_connections ",
                 "sqlstream_source_late_rows_total{", "sqlstream_epoch_duration_seconds_count ",
                 "sqlstream_dead_letters_total", "sqlstream_pgwire_queries_total "):
        assert name in text, name


# -- asyncpg ---------------------------------------------------------------------------------


def test_asyncpg_binary_protocol(pipeline: ServerProcess, raw_rows):
    expected = expected_per_customer(raw_rows)

    async def main() -> None:
        conn = await asyncpg.connect(pipeline.dsn())
        try:
            rows = await conn.fetch(
                "SELECT customer, orders, total, last_ts FROM per_customer WHERE customer >= $1 ORDER BY customer", 0
            )
            assert [tuple(r) for r in rows] == expected
            assert await conn.fetchval("SELECT sum(orders) FROM per_customer") == ROWS
            stmt = await conn.prepare("SELECT orders FROM per_customer WHERE customer = $1")
            assert [await stmt.fetchval(c) for c, *_ in expected] == [n for _, n, _, _ in expected]
            paid = sum(1 for r in raw_rows if r[5] and r[3] == "paid")
            assert await conn.fetchval(
                "SELECT count(*) FROM raw_orders WHERE paid = $1 AND status = $2", True, "paid"
            ) == paid
            with pytest.raises(asyncpg.UndefinedColumnError):
                await conn.fetch("SELECT nope FROM per_customer")
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()

    asyncio.run(main())


# -- JDBC ------------------------------------------------------------------------------------

JDBC_JAR = Path("/usr/share/java/postgresql.jar")
JAVA = """
import java.sql.*;
public class JdbcCheck {
    public static void main(String[] args) throws Exception {
        try (Connection c = DriverManager.getConnection(args[0], "tester", "")) {
            try (Statement s = c.createStatement();
                 ResultSet rs = s.executeQuery("SELECT sum(orders) AS total FROM per_customer")) {
                rs.next(); System.out.println("total=" + rs.getLong(1));
            }
            try (PreparedStatement p = c.prepareStatement("SELECT orders FROM per_customer WHERE customer = ?")) {
                for (int i = 0; i < 7; i++) {  // past prepareThreshold (5): a named server-side statement
                    p.setInt(1, 3);
                    try (ResultSet rs = p.executeQuery()) { rs.next(); if (i == 6) System.out.println("c3=" + rs.getLong(1)); }
                }
            }
            System.out.println("product=" + c.getMetaData().getDatabaseProductVersion());
            c.setAutoCommit(false);
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT count(*) FROM raw_orders")) {
                rs.next(); System.out.println("rows=" + rs.getLong(1));
            }
            c.commit();
        }
    }
}
"""


def test_jdbc(pipeline: ServerProcess, raw_rows, tmp_path: Path):
    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.skip("no Java compiler on this machine (javac)")
    if not JDBC_JAR.exists():
        pytest.skip(f"JDBC driver not installed ({JDBC_JAR}; apt-get install libpostgresql-jdbc-java)")
    (tmp_path / "JdbcCheck.java").write_text(JAVA)
    subprocess.run(["javac", "JdbcCheck.java"], cwd=tmp_path, check=True, timeout=120)
    url = f"jdbc:postgresql://127.0.0.1:{pipeline.port}/sqlstream"
    out = subprocess.run(["java", "-cp", f"{JDBC_JAR}:.", "JdbcCheck", url], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split("=", 1) for line in out.stdout.splitlines())
    expected = {c: n for c, n, _, _ in expected_per_customer(raw_rows)}
    assert lines["total"] == str(ROWS)
    assert lines["c3"] == str(expected[3])
    assert lines["rows"] == str(ROWS)
    assert lines["product"].startswith("15.0")


# -- authentication --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path] | None:
    """A throwaway self-signed certificate (None when openssl is not installed)."""
    if shutil.which("openssl") is None:
        return None
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-days", "1", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        check=True, capture_output=True, timeout=60,
    )
    return d / "cert.pem", d / "key.pem"


@pytest.fixture(scope="module")
def scram_server(pg_dsn: str, tls_files):
    env = {"SQLSTREAM_USER": "tester", "SQLSTREAM_PASSWORD": "pa ss'wörd"}
    args = ["--tls-cert", str(tls_files[0]), "--tls-key", str(tls_files[1])] if tls_files else []
    with running_server(pg_dsn, args, env) as s:
        yield s


def test_scram_sha_256(scram_server: ServerProcess):
    good = "pa ss'wörd"
    with psycopg.connect(scram_server.dsn(), password=good, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("tester",)
    out = psql(scram_server, "-At", "-c", "SELECT 7", password=good)
    assert out.stdout.strip() == "7", out.stderr
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(scram_server.dsn(), password="wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(scram_server.dsn(user="someone_else"), password=good)

    async def asyncpg_checks() -> None:
        conn = await asyncpg.connect(scram_server.dsn(), password=good)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
        with pytest.raises(asyncpg.InvalidPasswordError) as e:
            await asyncpg.connect(scram_server.dsn(), password="wrong")
        assert e.value.sqlstate == "28P01"

    asyncio.run(asyncpg_checks())


def test_serve_refuses_to_start_without_a_password_or_trust(catalog_dsn: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQLSTREAM_")}
    out = subprocess.run(
        [sys.executable, "-m", "sqlstream", "serve", "--catalog", catalog_dsn, "--port", "0"],
        capture_output=True, text=True, timeout=60, env={**env, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 1
    assert "--auth trust" in out.stderr and "SQLSTREAM_PASSWORD" in out.stderr


def test_tls_when_a_certificate_is_configured(scram_server: ServerProcess, tls_files):
    if tls_files is None:
        pytest.skip("openssl is not installed: no certificate to test TLS with")
    good = "pa ss'wörd"
    with psycopg.connect(scram_server.dsn(), password=good, sslmode="require") as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 5").fetchone() == (5,)
    out = psql(scram_server, "-At", "-c", "SELECT 6", password=good)  # psql prefers TLS
    assert out.stdout.strip() == "6", out.stderr
    with psycopg.connect(scram_server.dsn(), password=good, sslmode="disable") as conn:
        assert not conn.pgconn.ssl_in_use


def test_tables_with_insert_update_delete(pipeline: ServerProcess):
    """INSERT/UPDATE/DELETE travel with Postgres's command tags (runs last: it adds a table)."""
    with psycopg.connect(pipeline.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id INT PRIMARY KEY, owner VARCHAR, balance NUMERIC(12,2))")
        cur = conn.execute("INSERT INTO accounts VALUES (%s, %s, %s)", [1, "o'brien", Decimal("10.50")])
        assert (cur.statusmessage, cur.rowcount) == ("INSERT 0 1", 1)
        cur.executemany("INSERT INTO accounts VALUES (%s, %s, %s)",
                        [(2, "b", Decimal("20")), (3, "c\\d", Decimal("-1.25"))])
        cur = conn.execute("UPDATE accounts SET balance = balance + %s WHERE id >= %s", [Decimal("1"), 2])
        assert (cur.statusmessage, cur.rowcount) == ("UPDATE 2", 2)
        cur = conn.execute("DELETE FROM accounts WHERE id = %s", [2])
        assert (cur.statusmessage, cur.rowcount) == ("DELETE 1", 1)
        assert conn.execute("SELECT id, owner, balance FROM accounts ORDER BY id").fetchall() == [
            (1, "o'brien", Decimal("10.50")), (3, "c\\d", Decimal("-0.25"))]
    out = psql(pipeline, "-c", r"\dt")
    assert "accounts" in out.stdout and "table" in out.stdout
    out = psql(pipeline, "-c", r"\d accounts")
    assert 'Table "public.accounts"' in out.stdout and "numeric(12,2)" in out.stdout


def test_the_same_job_file_runs_embedded(raw_rows, catalog_dsn: str, tmp_path: Path):
    """What `psql -f job.sql` built on the server, `sqlstream run job.sql` builds embedded."""
    from sqlstream.config import Settings
    from sqlstream.engine.engine import Engine
    from sqlstream.engine.loop import JobOptions, run_engine

    engine = Engine(Settings(data_dir=tmp_path), catalog_dsn)
    try:
        engine.execute_script(JOB)
        run_engine(engine, JobOptions(once=True))
        rows = [tuple(r.values()) for r in engine.query(
            "SELECT customer, orders, total, last_ts FROM per_customer ORDER BY customer"
        ).to_pylist()]
    finally:
        engine.close()
    assert rows == expected_per_customer(raw_rows)
