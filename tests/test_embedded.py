"""The embedded catalog Postgres: a real cluster per test in a temporary data directory."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import threading
import time
from pathlib import Path

import psycopg
import pytest

from sqlstream.checkpoint.embedded import EmbeddedPostgres, find_pg_bin
from sqlstream.errors import CatalogError


def _cluster_pids(pgdata: Path) -> list[int]:
    """The postmaster and all its children: every process working in the data directory."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.path.samefile(os.readlink(proc / "cwd"), pgdata):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _wait_gone(pids: list[int], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    for pid in pids:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            # A zombie is gone for our purposes; it is reaped by its parent (init).
            try:
                if "State:\tZ" in Path(f"/proc/{pid}/status").read_text():
                    break
            except OSError:
                break
            time.sleep(0.02)


def test_start_connect_stop(tmp_data_dir: Path) -> None:
    pg = EmbeddedPostgres(tmp_data_dir)
    dsn = pg.start()
    assert dsn.startswith("postgresql://") and dsn.endswith("/sqlstream")
    assert pg.owns_server and pg.is_running()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("sqlstream",)
    assert pg.start() == dsn  # idempotent on the same object
    pg.stop()
    assert not pg.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)


def test_settings(tmp_data_dir: Path) -> None:
    with EmbeddedPostgres(tmp_data_dir) as pg:
        assert pg.dsn is not None
        with psycopg.connect(pg.dsn) as conn:

            def show(name: str) -> str:
                row = conn.execute(f"SHOW {name}").fetchone()
                assert row is not None
                return row[0]

            assert show("max_prepared_transactions") == "64"
            assert show("wal_level") == "logical"
            assert show("listen_addresses") == "127.0.0.1"
            assert show("fsync") == "on"
            assert show("server_encoding") == "UTF8"
            assert int(show("port")) == pg.port != 5432
            assert Path(show("unix_socket_directories")) == tmp_data_dir / "pg"
            assert Path(show("data_directory")) == tmp_data_dir / "pg"
        # Two-phase commit really works (what the setting is for).
        with psycopg.connect(pg.dsn) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.commit()
            xid = conn.xid(1, "sqlstream-test", "b")
            conn.tpc_begin(xid)
            conn.execute("INSERT INTO t VALUES (1)")
            conn.tpc_prepare()
            conn.tpc_commit()
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
    if os.geteuid() == 0:
        assert (tmp_data_dir / "pg").stat().st_uid == pwd.getpwnam("postgres").pw_uid


def test_second_start_reuses_and_does_not_stop(tmp_data_dir: Path) -> None:
    first = EmbeddedPostgres(tmp_data_dir)
    dsn = first.start()
    second = EmbeddedPostgres(tmp_data_dir)
    t0 = time.perf_counter()
    assert second.start() == dsn
    assert time.perf_counter() - t0 < 1.0
    assert not second.owns_server
    second.stop()  # not ours: must leave it running
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT 1")
    first.stop()
    assert not second.is_running()


def test_port_is_remembered(tmp_data_dir: Path) -> None:
    pg = EmbeddedPostgres(tmp_data_dir)
    dsn = pg.start()
    pg.stop()
    assert EmbeddedPostgres(tmp_data_dir).start() == dsn


def test_concurrent_first_start(tmp_data_dir: Path) -> None:
    """Two starters on a fresh directory: one runs initdb and starts, the other reuses."""
    pgs = [EmbeddedPostgres(tmp_data_dir) for _ in range(2)]
    dsns: list[str] = []
    errors: list[BaseException] = []

    def run(pg: EmbeddedPostgres) -> None:
        try:
            dsns.append(pg.start())
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(pg,)) for pg in pgs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(dsns)) == 1
    assert sorted(pg.owns_server for pg in pgs) == [False, True]
    for pg in pgs:
        pg.stop()


@pytest.mark.parametrize("victims", ["all", "postmaster"])
def test_restart_after_sigkill(tmp_data_dir: Path, victims: str) -> None:
    pg = EmbeddedPostgres(tmp_data_dir)
    dsn = pg.start()
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE durable (x int)")
        conn.execute("INSERT INTO durable VALUES (42)")
    idle = psycopg.connect(dsn)  # a backend that outlives a killed postmaster for a moment
    pgdata = tmp_data_dir / "pg"
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    pids = _cluster_pids(pgdata) if victims == "all" else [postmaster]
    assert postmaster in pids
    for pid in pids:
        # a process listed a moment ago (the backend of the connection just closed, an
        # autovacuum worker) may have exited since: it is as gone as the kill would make it
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait_gone(pids)
    assert (pgdata / "postmaster.pid").exists()  # stale

    again = EmbeddedPostgres(tmp_data_dir)
    t0 = time.perf_counter()
    assert again.start() == dsn
    elapsed = time.perf_counter() - t0
    assert again.owns_server
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT x FROM durable").fetchall() == [(42,)]
    idle.close()
    again.stop()
    assert elapsed < 15


def test_stale_pidfile_with_reused_pid(tmp_data_dir: Path) -> None:
    pg = EmbeddedPostgres(tmp_data_dir)
    pg.start()
    pg.stop()
    # After a crash the PID in postmaster.pid may belong to another, live process.
    pidfile = tmp_data_dir / "pg" / "postmaster.pid"
    pidfile.write_text(f"{os.getpid()}\n{tmp_data_dir / 'pg'}\n0\n5999\n\n127.0.0.1\n0 0\nready\n")
    again = EmbeddedPostgres(tmp_data_dir)
    assert not again.is_running()
    with psycopg.connect(again.start()) as conn:
        conn.execute("SELECT 1")
    assert again.port != 5999
    again.stop()


def test_initdb_leftover_is_replaced(tmp_data_dir: Path) -> None:
    """A crash during initdb leaves only pg.initdb, which the next start discards."""
    (tmp_data_dir / "pg.initdb").mkdir()
    (tmp_data_dir / "pg.initdb" / "junk").write_text("half made")
    with EmbeddedPostgres(tmp_data_dir) as pg:
        assert pg.is_running()
    assert not (tmp_data_dir / "pg.initdb").exists()


def test_missing_binaries(tmp_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQLSTREAM_PG_BIN", str(tmp_data_dir / "nowhere"))
    with pytest.raises(CatalogError, match="--catalog"):
        find_pg_bin()
    with pytest.raises(CatalogError, match="--catalog"):
        EmbeddedPostgres(tmp_data_dir).start()


def test_finds_machine_binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SQLSTREAM_PG_BIN", raising=False)
    bindir = find_pg_bin()
    assert (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file()


@pytest.mark.skipif(os.geteuid() != 0, reason="the traversal check applies when run as root")
def test_unreachable_data_dir_as_root(tmp_data_dir: Path) -> None:
    private = tmp_data_dir / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    with pytest.raises(CatalogError, match="cannot reach") as info:
        EmbeddedPostgres(private / "data").start()
    assert str(private) in str(info.value)
