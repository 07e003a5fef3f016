"""Shared fixtures: a real Postgres for every test (DESIGN §10), never a mocked one.

* ``pg_dsn`` (session): DSN of a database on the test server. ``SQLSTREAM_TEST_DSN`` when
  set; otherwise a throwaway cluster started from the machine's Postgres binaries with
  :class:`EmbeddedPostgres` in a temporary directory, stopped and removed at the end.
* ``catalog_dsn`` (function): a fresh, empty database ``sqlstream_t_<random>`` on that
  server; dropped afterwards (``WITH (FORCE)``, so leaked connections do not block it).
* ``catalog_conn`` (function): an autocommit psycopg connection to ``catalog_dsn`` with the
  catalog migrations applied.
* ``tmp_data_dir`` (function): an empty sqlstream data directory that the ``postgres`` OS
  user can reach (pytest's own tmp_path is private to root) and short enough for a Unix
  socket path; removed afterwards.
* ``two_phase_available`` (session): whether the server allows prepared transactions.
  Mark tests that need them ``@pytest.mark.two_phase``: they are skipped, with the reason,
  on a ``SQLSTREAM_TEST_DSN`` server whose ``max_prepared_transactions`` is 0. The
  throwaway cluster always has them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from sqlstream.checkpoint.embedded import EmbeddedPostgres
from sqlstream.checkpoint.migrations import migrate

TEST_DSN_ENV = "SQLSTREAM_TEST_DSN"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "two_phase: needs max_prepared_transactions > 0 on the test server"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("two_phase") is None:
        return
    dsn = os.environ.get(TEST_DSN_ENV)
    # The throwaway cluster is started with max_prepared_transactions = 64.
    if dsn and max_prepared_transactions(dsn) == 0:
        pytest.skip(f"max_prepared_transactions = 0 on {TEST_DSN_ENV}; two-phase commit needs > 0")


@cache
def max_prepared_transactions(dsn: str) -> int:
    """The server's ``max_prepared_transactions`` (cached per DSN)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SHOW max_prepared_transactions").fetchone()
    assert row is not None
    return int(row[0])


def with_dbname(dsn: str, dbname: str) -> str:
    """``dsn`` pointing at another database; keeps the URL form when given a URL, because
    some consumers (ADBC, DuckDB's postgres scanner) are happiest with URLs."""
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urllib.parse.urlsplit(dsn)
        query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "dbname"]
        return urllib.parse.urlunsplit(
            parts._replace(
                path="/" + urllib.parse.quote(dbname), query=urllib.parse.urlencode(query)
            )
        )
    return make_conninfo(dsn, dbname=dbname)


def make_tmp_dir(prefix: str) -> Path:
    """A fresh temporary directory the ``postgres`` OS user can traverse (mode 0711)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    env = os.environ.get(TEST_DSN_ENV)
    if env:
        yield env
        return
    root = make_tmp_dir("sqlstream-pg-")
    # fsync off: a throwaway cluster need not survive a power cut, and tests create and drop
    # many databases. Killing processes (the recovery tests) loses nothing without fsync.
    pg = EmbeddedPostgres(root, settings={"fsync": "off"})
    try:
        yield pg.start()
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def two_phase_available(pg_dsn: str) -> bool:
    return max_prepared_transactions(pg_dsn) > 0


@contextlib.contextmanager
def fresh_database(pg_dsn: str, prefix: str = "sqlstream_t") -> Iterator[str]:
    """A new empty database on the test server, dropped afterwards (``WITH (FORCE)``, so
    connections a test leaked do not block it)."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_dbname(pg_dsn, name)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def catalog_dsn(pg_dsn: str) -> Iterator[str]:
    with fresh_database(pg_dsn) as dsn:
        yield dsn


@pytest.fixture
def catalog_conn(catalog_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(catalog_dsn, autocommit=True) as conn:
        migrate(conn)
        yield conn


@pytest.fixture
def tmp_data_dir() -> Iterator[Path]:
    path = make_tmp_dir("sqlstream-t-")
    try:
        yield path
    finally:
        _stop_leftover_cluster(path)
        shutil.rmtree(path, ignore_errors=True)


def _stop_leftover_cluster(data_dir: Path) -> None:
    """Stop an embedded cluster a test started in ``data_dir`` and left running."""
    if not (data_dir / "pg" / "postmaster.pid").exists():
        return
    pg = EmbeddedPostgres(data_dir)
    if pg.is_running():
        pg.owns_server = True  # we are its last user: take it over to shut it down
        pg.stop()
