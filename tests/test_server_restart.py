"""A pipeline created over the wire survives ``kill -9`` of the server: after a restart the
view and the sink table hold exactly what they held, and the server reports itself healthy
only once recovery is done."""

from __future__ import annotations

import time
from collections import Counter

import psycopg
from server_util import ServerProcess

ROWS = 20_000


def test_kill_9_and_restart(catalog_dsn: str, tmp_data_dir):
    server = ServerProcess(catalog_dsn, tmp_data_dir, ["--auth", "trust", "--checkpoint-interval", "200ms"])
    server.start()
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute(
                "CREATE SOURCE clicks (id BIGINT, page INT, ms INT, ts TIMESTAMP) WITH ("
                "connector = 'datagen', datagen.rows.per.second = '0', "
                f"datagen.rows.total = '{ROWS}', fields.id.kind = 'sequence', "
                "fields.page.max = '49', fields.ms.max = '999')"
            )
            conn.execute("CREATE MATERIALIZED VIEW all_clicks AS SELECT id, page, ms FROM clicks")
            conn.execute(
                "CREATE MATERIALIZED VIEW per_page AS SELECT page, count(*) AS hits, sum(ms) AS total_ms, "
                "max(ms) AS worst FROM clicks GROUP BY page"
            )
            conn.execute(
                "CREATE SINK per_page_pg FROM per_page WITH (connector = 'postgres', "
                "table = 'per_page_out', type = 'upsert', primary_key = 'page')"
            )
            conn.execute("FLUSH")
            raw = conn.execute("SELECT id, page, ms FROM all_clicks").fetchall()
            before = conn.execute("SELECT page, hits, total_ms, worst FROM per_page ORDER BY page").fetchall()
            epoch = conn.execute("SELECT max(epoch) FROM sqlstream.checkpoints").fetchone()[0]

        # The view equals the aggregate computed here from every generated row.
        assert sorted(r[0] for r in raw) == list(range(ROWS))
        hits = Counter(page for _, page, _ in raw)
        expected = [
            (p, hits[p], sum(ms for _, q, ms in raw if q == p), max(ms for _, q, ms in raw if q == p))
            for p in sorted(hits)
        ]
        assert [(p, n, int(t), w) for p, n, t, w in before] == expected
        with psycopg.connect(catalog_dsn) as cat:
            sink = cat.execute("SELECT page, hits, total_ms, worst FROM per_page_out ORDER BY page").fetchall()
        assert [(p, n, int(t), w) for p, n, t, w in sink] == expected

        server.kill()  # kill -9: no final checkpoint
        assert server.health() is None

        server.start(wait=False)
        # /health is 200 only once recovery is done; then everything is back at once.
        deadline = time.monotonic() + 60
        while server.health() != 200:
            assert server.proc.poll() is None, server.log()
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        assert "sqlstream_ready 1" in server.metrics()
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            assert conn.execute("SHOW MATERIALIZED VIEWS").fetchall() == [("all_clicks",), ("per_page",)]
            assert conn.execute("SHOW SINKS").fetchall() == [("per_page_pg",)]
            after = conn.execute("SELECT page, hits, total_ms, worst FROM per_page ORDER BY page").fetchall()
            assert after == before
            assert conn.execute("SELECT count(*) FROM all_clicks").fetchone() == (ROWS,)
            conn.execute("FLUSH")  # the source is exhausted: nothing is read twice
            assert conn.execute("SELECT sum(hits) FROM per_page").fetchone() == (ROWS,)
            assert conn.execute("SELECT max(epoch) FROM sqlstream.checkpoints").fetchone()[0] > epoch
        with psycopg.connect(catalog_dsn) as cat:
            sink = cat.execute("SELECT page, hits, total_ms, worst FROM per_page_out ORDER BY page").fetchall()
        assert [(p, n, int(t), w) for p, n, t, w in sink] == expected

        # SIGTERM: a clean stop with a final checkpoint, exit 0.
        with psycopg.connect(catalog_dsn) as cat:
            last = cat.execute("SELECT max(epoch) FROM sqlstream.checkpoints").fetchone()[0]
        assert server.stop() == 0
        with psycopg.connect(catalog_dsn) as cat:
            assert cat.execute("SELECT max(epoch) FROM sqlstream.checkpoints").fetchone()[0] > last
    finally:
        server.kill()


def test_catalog_connection_lost_recovers_in_place(catalog_dsn: str, tmp_data_dir):
    """The catalog drops the engine's connections: the server recovers from the last
    checkpoint by itself (/health 503, then 200) and keeps serving."""
    server = ServerProcess(catalog_dsn, tmp_data_dir, ["--auth", "trust", "--checkpoint-interval", "100ms"])
    server.start()
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute(
                "CREATE SOURCE s (k INT) WITH (connector = 'datagen', datagen.rows.per.second = '0', "
                "datagen.rows.total = '5000', fields.k.max = '9')"
            )
            conn.execute("CREATE MATERIALIZED VIEW per_k AS SELECT k, count(*) AS n FROM s GROUP BY k")
            conn.execute("FLUSH")
            before = conn.execute("SELECT k, n FROM per_k ORDER BY k").fetchall()
            assert sum(n for _, n in before) == 5000
            with psycopg.connect(catalog_dsn, autocommit=True) as cat:
                killed = cat.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).fetchone()[0]
            assert killed >= 1
            deadline = time.monotonic() + 30
            while "sqlstream_engine_failures_total 1" not in server.metrics() or server.health() != 200:
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.05)
            assert "recovered from the last checkpoint" in server.log()
            assert conn.execute("SELECT k, n FROM per_k ORDER BY k").fetchall() == before
    finally:
        assert server.stop() == 0
