"""Query latency under load: N concurrent pgwire clients query a view while a generator
streams rows into it, against a real ``sqlstream serve`` subprocess.

    python benchmarks/server_load.py --clients 8 --seconds 10 --rate 200000 [--catalog postgresql://...]

Reports the latency percentiles of the clients' queries (p50/p95/p99), queries per second,
and the ingest rate the engine kept meanwhile (from /metrics), next to the ingest rate with
no clients at all, measured first in the same run -- the ratio shows what serving costs the
pipeline. Without --catalog a throwaway embedded Postgres is started in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psycopg

from sqlstream.checkpoint.embedded import scratch_catalog

PIPELINE = """
CREATE SOURCE events (id BIGINT, k INT, v DOUBLE PRECISION, ts TIMESTAMP)
WITH (connector = 'datagen', datagen.rows.per.second = '{rate}', fields.id.kind = 'sequence',
      fields.k.max = '999');
CREATE MATERIALIZED VIEW per_key AS
SELECT k, count(*) AS n, sum(v) AS total, max(ts) AS last_ts FROM events GROUP BY k;
"""
QUERIES = [
    ("point", "SELECT n, total FROM per_key WHERE k = %s"),
    ("scan", "SELECT count(*), sum(n) FROM per_key"),
    ("top", "SELECT k, n FROM per_key ORDER BY n DESC LIMIT 10"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(http_port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf"^{name} (\S+)", text, re.M)
    return float(m.group(1)) if m else 0.0


def rows_in(http_port: int) -> int:
    return int(metric(http_port, "sqlstream_rows_in_total"))


def ingest_rate(http_port: int, seconds: float) -> float:
    start, t0 = rows_in(http_port), time.monotonic()
    time.sleep(seconds)
    return (rows_in(http_port) - start) / (time.monotonic() - t0)


def client(dsn: str, until: float, latencies: dict[str, list[float]], errors: list[str]) -> None:
    rng = random.Random()
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < until:
            name, sql = rng.choice(QUERIES)
            params = [rng.randrange(1000)] if "%s" in sql else None
            t0 = time.perf_counter()
            try:
                conn.execute(sql, params).fetchall()
            except psycopg.Error as e:
                errors.append(str(e))
                continue
            latencies[name].append(time.perf_counter() - t0)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=200_000, help="generated rows per second")
    ap.add_argument("--catalog", help="catalog Postgres URL (default: a throwaway embedded one)")
    args = ap.parse_args()

    with scratch_catalog(args.catalog, "sqlstream-load-", {"fsync": "off"}) as (catalog, tmp):
        load(args, catalog, tmp)


def load(args: argparse.Namespace, catalog: str, tmp: Path) -> None:
    pg_port, http_port = free_port(), free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "sqlstream", "serve", "--catalog", catalog, "--data-dir", str(tmp),
         "--port", str(pg_port), "--http-port", str(http_port), "--auth", "trust"],
        stderr=subprocess.PIPE, text=True, env={**os.environ},
    )
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        if "ready" not in line:
            raise SystemExit(f"server did not start: {line}{server.stderr.read()}")
        dsn = f"postgresql://bench@127.0.0.1:{pg_port}/sqlstream"
        with psycopg.connect(dsn, autocommit=True) as conn:
            for stmt in PIPELINE.format(rate=args.rate).split(";"):
                if stmt.strip():
                    conn.execute(stmt)
        time.sleep(2)  # let the pipeline warm up
        quiet = ingest_rate(http_port, min(5.0, args.seconds))

        latencies: dict[str, list[float]] = {name: [] for name, _ in QUERIES}
        errors: list[str] = []
        start_rows, t0 = rows_in(http_port), time.monotonic()
        epoch_sum = metric(http_port, "sqlstream_epoch_duration_seconds_sum")
        epoch_count = metric(http_port, "sqlstream_epoch_duration_seconds_count")
        until = t0 + args.seconds
        threads = [threading.Thread(target=client, args=(dsn, until, latencies, errors))
                   for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        loaded = (rows_in(http_port) - start_rows) / elapsed

        every = [x for values in latencies.values() for x in values]
        print(f"{args.clients} clients for {elapsed:.1f}s, generator at {args.rate:,} rows/s")
        print(f"queries: {len(every):,} ({len(every) / elapsed:,.0f}/s), errors: {len(errors)}")
        print(f"{'query':<8}{'count':>8}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
        for name, values in [*latencies.items(), ("all", every)]:
            if values:
                print(f"{name:<8}{len(values):>8}{percentile(values, 50):>10.2f}"
                      f"{percentile(values, 95):>10.2f}{percentile(values, 99):>10.2f}")
        print(f"ingest with no clients: {quiet:,.0f} rows/s")
        print(f"ingest under load:      {loaded:,.0f} rows/s "
              f"(ratio {loaded / quiet if quiet else float('nan'):.2f})")
        if every:
            print(f"mean query latency: {statistics.mean(every) * 1000:.2f} ms")
        epochs = metric(http_port, "sqlstream_epoch_duration_seconds_count") - epoch_count
        spent = metric(http_port, "sqlstream_epoch_duration_seconds_sum") - epoch_sum
        if epochs:
            print(f"epochs: {epochs:.0f}, mean {spent / epochs * 1000:.1f} ms "
                  f"(a query waits for the epoch in progress)")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
