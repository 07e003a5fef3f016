"""The catalog migration runner against a real, fresh database."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import psycopg
import pytest

from sqlstream.checkpoint.migrations import catalog_dir, migrate, migration_files
from sqlstream.errors import CatalogError


def _v001_tables() -> list[str]:
    text = (catalog_dir() / "V001__catalog.sql").read_text()
    return re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?([\w.]+)", text)


def test_catalog_dir_holds_v001() -> None:
    files = migration_files()
    assert files[0].version == 1
    assert files[0].filename == "V001__catalog.sql"
    assert [m.version for m in files] == sorted(m.version for m in files)


def test_applies_on_fresh_db_then_nothing(catalog_dsn: str) -> None:
    with psycopg.connect(catalog_dsn, autocommit=True) as conn:
        applied = migrate(conn)
        assert applied == [m.filename for m in migration_files()]
        assert "V001__catalog.sql" in applied
        rows = conn.execute(
            "SELECT version, name, applied_at IS NOT NULL FROM sqlstream.schema_migrations"
            " ORDER BY version"
        ).fetchall()
        assert rows[0] == (1, "catalog", True)
        assert migrate(conn) == []
        assert conn.execute("SELECT count(*) FROM sqlstream.schema_migrations").fetchone() == (
            len(rows),
        )


def test_non_autocommit_connection(catalog_dsn: str) -> None:
    with psycopg.connect(catalog_dsn) as conn:
        assert migrate(conn) != []
        # Committed, not left in an open transaction.
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with psycopg.connect(catalog_dsn) as conn:
        assert migrate(conn) == []


def test_refuses_connection_inside_transaction(catalog_dsn: str) -> None:
    with psycopg.connect(catalog_dsn) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(CatalogError, match="inside a transaction"):
            migrate(conn)


def test_all_v001_tables_exist(catalog_conn: psycopg.Connection) -> None:
    tables = _v001_tables()
    assert "sqlstream.checkpoints" in tables and len(tables) >= 7
    for table in tables:
        row = catalog_conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        assert row is not None and row[0] is not None, table
    schemas = {r[0] for r in catalog_conn.execute("SELECT nspname FROM pg_namespace")}
    assert {"sqlstream", "sqlstream_state"} <= schemas


def test_concurrent_migrate_is_safe(catalog_dsn: str) -> None:
    n = 4
    barrier = threading.Barrier(n)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(catalog_dsn, autocommit=True) as conn:
                barrier.wait()
                results.append(migrate(conn))
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    applied = [name for r in results for name in r]
    assert sorted(applied) == sorted(m.filename for m in migration_files())
    with psycopg.connect(catalog_dsn) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM sqlstream.schema_migrations")]
    assert sorted(versions) == [m.version for m in migration_files()]


def test_version_order_and_failure_rolls_back(catalog_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "V010__third.sql").write_text("CREATE TABLE sqlstream.t3 (x int);")
    (tmp_path / "V2__second.sql").write_text(
        "CREATE TABLE sqlstream.t2 (x int); INSERT INTO sqlstream.t2 VALUES (1);"
    )
    (tmp_path / "V001__first.sql").write_text(
        "CREATE SCHEMA IF NOT EXISTS sqlstream; CREATE TABLE sqlstream.t1 (pct text DEFAULT '%');"
    )
    (tmp_path / "notes.txt").write_text("not a migration")
    (tmp_path / "V011__broken.sql").write_text(
        "CREATE TABLE sqlstream.t4 (x int); SELECT no_such_function();"
    )
    with psycopg.connect(catalog_dsn, autocommit=True) as conn:
        with pytest.raises(CatalogError, match="V011__broken.sql"):
            migrate(conn, tmp_path)
        versions = [
            r[0]
            for r in conn.execute(
                "SELECT version FROM sqlstream.schema_migrations ORDER BY version"
            )
        ]
        assert versions == [1, 2, 10]
        # The failed file left nothing behind: neither its table nor its bookkeeping row.
        assert conn.execute("SELECT to_regclass('sqlstream.t4')").fetchone() == (None,)

        (tmp_path / "V011__broken.sql").write_text("CREATE TABLE sqlstream.t4 (x int);")
        assert migrate(conn, tmp_path) == ["V011__broken.sql"]
        assert migrate(conn, tmp_path) == []


def test_duplicate_versions_refused(tmp_path: Path) -> None:
    (tmp_path / "V001__a.sql").write_text("SELECT 1;")
    (tmp_path / "V1__b.sql").write_text("SELECT 1;")
    with pytest.raises(CatalogError, match="share version 1"):
        migration_files(tmp_path)


def test_catalog_newer_than_code_refused(catalog_conn: psycopg.Connection) -> None:
    catalog_conn.execute(
        "INSERT INTO sqlstream.schema_migrations (version, name) VALUES (999, 'future')"
    )
    with pytest.raises(CatalogError, match="upgrade sqlstream"):
        migrate(catalog_conn)
