"""Nexmark runner: each query as a sqlstream materialized view against DuckDB running the same
query as one batch over the same events materialised to Parquet, in the same run.

    python benchmarks/nexmark/run.py --events 1000000 --queries q0,q1,q5 [--catalog DSN]
    python benchmarks/nexmark/run.py --events 5000 --queries q1,q5 --check

Queries live in ``queries/qN.sql``: a ``CREATE MATERIALIZED VIEW nexmark_qN AS ...``, then
optionally ``-- batch:`` and the DuckDB batch formulation (needed where the view uses
TUMBLE/HOP or Postgres-only functions; otherwise the view's SELECT is run as is). A file with
no CREATE statement (only comments) is a query that does not run; its comment says why.

Every figure is events (of all types) per second of wall time. For throughput each query runs
as a sink into ``blackhole`` (as RisingWave's and Arroyo's Nexmark runs do: the figure is the
query, not the cost of storing every output row), or with ``--into view`` as the materialized
view itself (its contents kept in DuckDB and checkpointed to Postgres). The streaming run is
measured with checkpoints every 1 s and again with checkpoints only at the end; each streaming run is a
fresh process (spawned), so "peak RSS" is that run's own peak (``resource.getrusage``).
Each of the three measurements is taken ``--repeat`` times (default 3), interleaved, and the
median is printed (the peak RSS is the largest): a 2 M-event run lasts 0.1–5 s, and single
runs on a shared machine move by up to 2x.
Without --catalog a throwaway embedded Postgres is started in a temporary directory.
``--check`` compares the view's rows (after the bounded run) with the batch result and exits
non-zero on a difference.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import re
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq

from sqlstream.checkpoint.embedded import scratch_catalog
from sqlstream.config import Settings
from sqlstream.connectors.base import ConnectorContext
from sqlstream.connectors.nexmark.generator import COLUMNS
from sqlstream.connectors.nexmark.source import NexmarkSource
from sqlstream.engine.engine import Engine
from sqlstream.engine.loop import JobOptions, run_engine
from sqlstream.types import Column

HERE = Path(__file__).resolve().parent
QUERIES = HERE / "queries"
TABLES = ("person", "auction", "bid")
ALL_QUERIES = [f"q{i}" for i in range(23)]


class Query:
    """One query file: the view, its batch formulation, or why it does not run."""

    def __init__(self, name: str) -> None:
        self.name = name
        text = (QUERIES / f"{name}.sql").read_text()
        view, _, batch = text.partition("-- batch:")
        code = "\n".join(
            line for line in view.splitlines() if not line.lstrip().startswith("--")
        ).strip()
        self.view = code or None
        self.reason = None if code else _comment(view.splitlines()[0])
        self.batch = batch.strip().rstrip(";") or None
        if self.view and not self.batch:
            m = re.search(r"CREATE\s+MATERIALIZED\s+VIEW\s+\S+\s+AS\s+(.*)", code, re.S | re.I)
            if m is None:
                raise ValueError(f"{name}.sql: no CREATE MATERIALIZED VIEW ... AS")
            self.batch = m.group(1).strip().rstrip(";")

    @property
    def view_name(self) -> str:
        return f"nexmark_{self.name}"

    def script(self, into: str) -> str:
        """The query's statements, the last one as a view or as a sink into ``blackhole``."""
        assert self.view is not None
        if into == "view":
            return self.view
        head, sep, last = self.view.rpartition("CREATE MATERIALIZED VIEW")
        last = last.strip().rstrip(";")
        return f"{head}CREATE SINK {last}\nWITH (connector = 'blackhole');"


def _comment(text: str) -> str:
    lines = [ln.strip().lstrip("-").strip() for ln in text.splitlines()]
    return " ".join(ln for ln in lines if ln)


def sources_sql(events: int) -> str:
    return (HERE / "sources.sql").read_text().replace("{events}", str(events))


# -- Parquet + DuckDB batch ------------------------------------------------------------------


def generate_parquet(events: int, out: Path) -> dict[str, Path]:
    """All columns of the three tables for events 0 .. events-1, one Parquet file each."""
    paths = {}
    for table in TABLES:
        schema = [Column(c, t) for c, t in COLUMNS[table].items()]
        opts = {"nexmark.table.type": table, "nexmark.event.num": str(events)}
        src = NexmarkSource(ConnectorContext(table, "", Path(".")), schema, opts, None)
        src.seek({})
        path = out / f"{table}.parquet"
        writer = None
        while (batch := src.poll(1_000_000)) is not None:
            if writer is None:
                writer = pq.ParquetWriter(path, batch.data.schema)
            writer.write_table(batch.data)
        if writer is None:
            pq.write_table(src._arrow_schema.empty_table(), path)  # noqa: SLF001
        else:
            writer.close()
        paths[table] = path
    return paths


def run_batch(q: Query, events: int, paths: dict[str, Path]) -> tuple[float, pa.Table]:
    """Events/s of DuckDB running the batch query once over the Parquet files, and its rows."""
    con = duckdb.connect()
    for table, path in paths.items():
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{path}')")
    started = time.perf_counter()
    con.execute(f"CREATE TABLE r AS {q.batch}")
    elapsed = time.perf_counter() - started
    result = con.sql("SELECT * FROM r").to_arrow_table()
    con.close()
    return events / elapsed, result


# -- sqlstream -------------------------------------------------------------------------------


def _reset_catalog(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS sqlstream CASCADE")
        conn.execute("DROP SCHEMA IF EXISTS sqlstream_state CASCADE")
        conn.execute("DROP SCHEMA IF EXISTS sqlstream_tables CASCADE")


def run_stream(
    q: Query,
    events: int,
    dsn: str,
    data_dir: Path,
    interval: float,
    fetch: bool = False,
    into: str = "view",
) -> tuple[float, pa.Table | None]:
    """Events/s of the query over a bounded run (``run --once``), and the view's rows if
    ``fetch``."""
    _reset_catalog(dsn)
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    data_dir.chmod(0o711)
    engine = Engine(Settings(data_dir=data_dir, checkpoint_interval=interval), dsn)
    try:
        engine.con.execute("SET enable_progress_bar = false")  # keep the table readable
        engine.execute_script(sources_sql(events) + ";\n" + q.script(into))
        started = time.perf_counter()
        run_engine(engine, JobOptions(once=True))
        rate = events / (time.perf_counter() - started)
        rows = engine.query(f"SELECT * FROM {q.view_name}") if fetch else None
        return rate, rows
    finally:
        engine.close()


def _stream_child(args: tuple) -> tuple[float, int]:  # type: ignore[type-arg]
    name, events, dsn, data_dir, interval, into = args
    rate, _ = run_stream(Query(name), events, dsn, Path(data_dir), interval, into=into)
    return rate, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def run_stream_isolated(
    q: Query, events: int, dsn: str, data_dir: Path, interval: float, timeout: float, into: str
) -> tuple[float, int] | None:
    """``run_stream`` in a fresh process: its rate and its own peak RSS (KiB); None when it
    takes longer than ``timeout`` seconds (the process is terminated)."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        job = pool.apply_async(
            _stream_child, ((q.name, events, dsn, str(data_dir), interval, into),)
        )
        try:
            return job.get(timeout)
        except multiprocessing.TimeoutError:
            return None


# -- comparison ------------------------------------------------------------------------------


def differences(view: pa.Table, batch: pa.Table, limit: int = 5) -> list[str]:
    """Rows in one result and not the other (as multisets, columns by position; floats rounded
    to 6 decimals, everything compared as text). Empty when they are equal."""
    if view.num_columns != batch.num_columns:
        return [f"column count differs: view {view.column_names} vs batch {batch.column_names}"]
    con = duckdb.connect()
    con.register("v", view)
    con.register("b", batch)

    def norm(rel: str, tab: pa.Table) -> str:
        cols = []
        for i, f in enumerate(tab.schema):
            c = f'"{f.name}"'
            if pa.types.is_floating(f.type) or pa.types.is_decimal(f.type):
                c = f"round({c}::DOUBLE, 6)"
            cols.append(f"{c}::VARCHAR AS c{i}")
        return f"SELECT {', '.join(cols)} FROM {rel}"

    nv, nb = norm("v", view), norm("b", batch)
    out = []
    for label, a, b in (("only in view", nv, nb), ("only in batch", nb, nv)):
        rows = con.sql(f"({a}) EXCEPT ALL ({b})").fetchall()
        out += [f"{label}: {r}" for r in rows[:limit]]
        if len(rows) > limit:
            out.append(f"{label}: ... {len(rows) - limit} more")
    con.close()
    return out


def check(names: list[str], events: int, dsn: str, work: Path) -> dict[str, list[str]]:
    """Run each query as a view and as a batch; the differences per query (empty = equal)."""
    paths = generate_parquet(events, work)
    result = {}
    for name in names:
        q = Query(name)
        if q.view is None:
            continue
        try:
            _, batch = run_batch(q, events, paths)
            _, view = run_stream(q, events, dsn, work / f"data-{name}", 1.0, fetch=True)
        except Exception as e:  # noqa: BLE001 - reported per query
            result[name] = [f"error: {type(e).__name__}: {e}"]
            continue
        assert view is not None
        result[name] = differences(view, batch)
    return result


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--queries", default="q0,q1,q5", help="comma-separated, or 'all'")
    ap.add_argument("--catalog", help="Postgres DSN (default: a throwaway embedded Postgres)")
    ap.add_argument("--check", action="store_true", help="compare view and batch rows")
    ap.add_argument(
        "--into", choices=("blackhole", "view"), default="blackhole",
        help="throughput runs: a sink into blackhole (default) or the materialized view",
    )  # fmt: skip
    ap.add_argument(
        "--timeout", type=float, default=300.0, help="seconds per streaming run (default 300)"
    )
    ap.add_argument(
        "--repeat", type=int, default=3,
        help="runs of each measurement, interleaved; the median is printed (default 3)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    names = ALL_QUERIES if args.queries == "all" else args.queries.split(",")

    with scratch_catalog(args.catalog, "sqlstream-nexmark-") as (dsn, tmp):
        if args.check:
            failed = False
            results = check(names, args.events, dsn, tmp)
            for name in names:
                if name not in results:
                    print(f"{name}: does not run ({Query(name).reason})")
                    continue
                diffs = results[name]
                print(f"{name}: {'OK' if not diffs else 'DIFFERENT'}")
                for d in diffs:
                    print(f"  {d}")
                failed |= bool(diffs)
            return 1 if failed else 0

        started = time.perf_counter()
        paths = generate_parquet(args.events, tmp)
        print(f"generated {args.events:,} events to Parquet in {time.perf_counter() - started:.1f} s")
        print(
            f"{'query':6} {'batch ev/s':>12} {'stream ev/s':>12} {'peak RSS':>9} {'ratio':>6} "
            f"{'no-ckpt ev/s':>13} {'ratio':>6}"
        )
        for name in names:
            q = Query(name)
            if q.view is None:
                print(f"{name:6} does not run: {q.reason}")
                continue
            # Interleaved, so that a slow spell of the machine hits every column alike.
            batch, ckpt, plain, peak = [], [], [], 0
            for _ in range(args.repeat):
                batch.append(run_batch(q, args.events, paths)[0])
                first = run_stream_isolated(
                    q, args.events, dsn, tmp / "data", 1.0, args.timeout, args.into
                )
                if first is None:
                    break
                ckpt.append(first[0])
                peak = max(peak, first[1])
                second = run_stream_isolated(
                    q, args.events, dsn, tmp / "data", math.inf, args.timeout, args.into
                )
                plain.append(second[0] if second else float("nan"))
            b = statistics.median(batch)
            if not ckpt:
                print(f"{name:6} {b:12,.0f} timed out after {args.timeout:.0f} s", flush=True)
                continue
            s, n, rss = statistics.median(ckpt), statistics.median(plain), peak
            print(
                f"{name:6} {b:12,.0f} {s:12,.0f} {rss / 1024:7.0f}MB {s / b:6.2f} "
                f"{n:13,.0f} {n / b:6.2f}",
                flush=True,
            )
        return 0


if __name__ == "__main__":
    sys.exit(main())
