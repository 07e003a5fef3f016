"""Recovery time: from restarting a SIGKILLed job with 1 M keys of state to its first new output.

    python benchmarks/recovery_time.py [--keys 1000000] [--restarts 2] [--catalog postgresql://...]

The job (a file run with ``sqlstream run``) is a paced ``datagen`` source whose key column
cycles through ``--keys`` distinct values, aggregated per key into an upsert Postgres sink in
the catalog database::

    SELECT k, count(*) AS n, sum(v) AS total FROM src GROUP BY k   -- into agg_out

so the aggregate's state holds one row per key. The job first runs (``.venv/bin/sqlstream
run``) until a checkpoint has committed every key (``agg_out`` has ``--keys`` rows; the sink
writes inside the checkpoint transaction, so the state is committed too), and is then killed
with SIGKILL. It is restarted with the same command and file, and this process polls
``sqlstream.checkpoints`` every 10 ms until a checkpoint newer than the killed run's with
``rows_out > 0`` is visible: that is the **restart to first new output** time (wall clock
from just before spawning the process). It is repeated ``--restarts`` times (each restart is
killed in turn once it has produced output and one more checkpoint).

The restarted process is the same CLI entry point (``sqlstream.cli.main``) started through a
small ``python -c`` wrapper that wraps a few methods (``Engine.__init__``,
``StateTable.pg_load``, ``Engine.run_epoch``, ``Engine.settle``) to log wall-clock
times, which gives the split: interpreter and imports, catalog connection and graph rebuild,
state load, then running until the first epoch with rows and the first checkpoint with
output.

Without --catalog a throwaway embedded Postgres is started in a temporary directory (the
engine processes get its URL with --catalog).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from sqlstream.checkpoint.embedded import scratch_catalog

JOB = """CREATE SOURCE src (k BIGINT, v BIGINT)
WITH (connector = 'datagen', datagen.rows.per.second = '{rate}',
      fields.k.kind = 'sequence', fields.k.start = '0', fields.k.end = '{last_key}',
      fields.v.min = '1', fields.v.max = '1000');
CREATE SINK agg AS SELECT k, count(*) AS n, sum(v) AS total FROM src GROUP BY k
WITH (connector = 'postgres', table = 'agg_out', type = 'upsert', primary_key = 'k');
"""

# Runs `sqlstream run ...` (the real CLI) with wall-clock marks written to argv[1] (JSON lines).
WRAPPER = r"""
import json, sys, time
_log = open(sys.argv[1], "a")
def mark(event, **kw):
    _log.write(json.dumps({"event": event, "t": time.time(), **kw}) + "\n")
    _log.flush()
mark("interpreter")
from sqlstream.cli import main
from sqlstream.engine.engine import Engine
from sqlstream.state.table import StateTable
mark("imported")
_init, _load, _epoch, _settle = Engine.__init__, StateTable.pg_load, Engine.run_epoch, Engine.settle
_seen = set()
def init(self, *a, **kw):
    mark("engine_init")
    _init(self, *a, **kw)
    mark("engine_ready")
def load(self, conn):
    t = time.time()
    n = _load(self, conn)
    mark("state_loaded", rows=n, seconds=time.time() - t)
    return n
def epoch(self):
    if "first_epoch" not in _seen:
        _seen.add("first_epoch")
        mark("first_epoch")
    rows = _epoch(self)
    if rows and "rows" not in _seen:
        _seen.add("rows")
        mark("first_rows", rows=rows)
    return rows
def settle(self):  # a checkpoint's commit has returned (it runs beside the engine)
    stats = _settle(self)
    if stats is None:
        return stats
    if "ckpt" not in _seen:
        _seen.add("ckpt")
        mark("first_checkpoint", rows_out=stats.rows_out, ms=stats.duration_ms)
    if stats.rows_out and "out" not in _seen:
        _seen.add("out")
        mark("first_output", rows_out=stats.rows_out, ms=stats.duration_ms)
    return stats
Engine.__init__, StateTable.pg_load, Engine.run_epoch, Engine.settle = init, load, epoch, settle
sys.argv = ["sqlstream", *sys.argv[2:]]
main()
"""

_ENGINE_LOCK = 0x5351_5354  # sqlstream.checkpoint.store._ENGINE_LOCK


def _sqlstream_bin() -> str:
    exe = Path(sys.executable).with_name("sqlstream")
    return str(exe) if exe.exists() else "sqlstream"


def _last_epoch(conn: psycopg.Connection) -> int:
    try:
        return conn.execute("SELECT coalesce(max(epoch), 0) FROM sqlstream.checkpoints").fetchone()[0]
    except psycopg.errors.UndefinedTable:
        return 0


def _wait_lock_free(conn: psycopg.Connection, timeout: float = 30.0) -> float:
    """After a SIGKILL the engine's catalog session (holding the engine lock) ends when
    Postgres notices the closed socket; returns how long that took."""
    started = time.time()
    while conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND granted",
        [_ENGINE_LOCK & 0xFFFFFFFF],
    ).fetchone()[0]:
        if time.time() - started > timeout:
            raise SystemExit("the killed engine's session still holds the catalog lock")
        time.sleep(0.01)
    return time.time() - started


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def fill(conn: psycopg.Connection, cmd: list[str], keys: int, timeout: float) -> float:
    """Run the job until a committed checkpoint holds every key; SIGKILL it."""
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the job exited early (code {proc.returncode})")
            try:
                (n,) = conn.execute("SELECT count(*) FROM agg_out").fetchone()
            except psycopg.errors.UndefinedTable:
                n = 0
            if n >= keys:
                return time.time() - started
            if time.time() - started > timeout:
                raise SystemExit(f"only {n:,} of {keys:,} keys after {timeout:.0f} s")
            time.sleep(0.2)
    finally:
        _kill(proc)


def restart(conn: psycopg.Connection, cmd: list[str], log: Path, timeout: float) -> dict:
    """Restart the job; time until a new checkpoint with output is visible; SIGKILL it."""
    before = _last_epoch(conn)
    log.write_text("")
    spawned = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, str(log), *cmd[1:]], stdout=subprocess.DEVNULL
    )
    visible = first_ckpt = None
    try:
        while True:
            now = time.time()
            rows = conn.execute(
                "SELECT epoch, rows_out FROM sqlstream.checkpoints WHERE epoch > %s ORDER BY epoch",
                [before],
            ).fetchall()
            if rows and first_ckpt is None:
                first_ckpt = now
            if any(r[1] > 0 for r in rows):
                visible = now
                break
            if proc.poll() is not None:
                raise SystemExit(f"the restarted job exited (code {proc.returncode})")
            if now - spawned > timeout:
                raise SystemExit(f"no new output {timeout:.0f} s after the restart")
            time.sleep(0.01)
        # one more checkpoint, so that the next restart starts from a steady state
        target = _last_epoch(conn) + 1
        while _last_epoch(conn) < target and time.time() - visible < 10:
            time.sleep(0.05)
    finally:
        _kill(proc)
    marks: dict[str, dict] = {}
    loads = []
    for line in log.read_text().splitlines():
        m = json.loads(line)
        if m["event"] == "state_loaded":
            loads.append(m)
        marks.setdefault(m["event"], m)
    t = {k: v["t"] - spawned for k, v in marks.items()}
    return {
        "total": visible - spawned,
        "first_checkpoint_visible": first_ckpt - spawned,
        "interpreter": t["interpreter"],
        "imports": t["imported"] - t["interpreter"],
        "cli_to_engine": t["engine_init"] - t["imported"],
        "catalog_and_graph": t["engine_ready"] - t["engine_init"]
        - sum(m["seconds"] for m in loads),
        "state_load": sum(m["seconds"] for m in loads),
        "state_rows": sum(m["rows"] for m in loads),
        "script": t["first_epoch"] - t["engine_ready"],
        "first_rows": t["first_rows"] - t["first_epoch"],
        "first_checkpoint": t["first_checkpoint"] - t["first_epoch"],
        "first_checkpoint_rows_out": marks["first_checkpoint"]["rows_out"],
        "first_output": t["first_output"] - t["first_epoch"],
        "first_output_ms": marks["first_output"]["ms"],
        "visible_after_commit": visible - marks["first_output"]["t"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1_000_000, help="distinct keys in the state")
    ap.add_argument("--rate", type=int, default=200_000, help="source rows per second")
    ap.add_argument("--restarts", type=int, default=2, help="kill-and-restart rounds")
    ap.add_argument("--checkpoint-interval", default="1s")
    ap.add_argument("--timeout", type=float, default=90.0, help="seconds per phase at most")
    ap.add_argument("--catalog", help="Postgres URL (default: a throwaway embedded Postgres)")
    args = ap.parse_args()
    with scratch_catalog(args.catalog, "sqlstream-recovery-") as (dsn, tmp):
        job = tmp / "job.sql"
        job.write_text(JOB.format(rate=args.rate, last_key=args.keys - 1))
        cmd = [_sqlstream_bin(), "run", str(job), "--catalog", dsn, "--data-dir", str(tmp),
               "--checkpoint-interval", args.checkpoint_interval, "--quiet"]
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS sqlstream CASCADE")
            conn.execute("DROP SCHEMA IF EXISTS sqlstream_state CASCADE")
            conn.execute("DROP TABLE IF EXISTS agg_out")
            took = fill(conn, cmd, args.keys, args.timeout)
            print(f"fill: {args.keys:,} keys committed after {took:.1f} s "
                  f"(datagen at {args.rate:,} rows/s), then SIGKILL")
            results = []
            for i in range(args.restarts):
                freed = _wait_lock_free(conn)
                r = restart(conn, cmd, tmp / f"restart{i}.jsonl", args.timeout)
                results.append(r)
                print(f"restart {i + 1}: catalog lock of the killed process freed after "
                      f"{freed * 1000:.0f} ms; restart -> first new output visible "
                      f"{r['total']:.2f} s")
                print(f"  interpreter start {r['interpreter']:.2f} s | imports "
                      f"{r['imports']:.2f} s | CLI + embedded-catalog check "
                      f"{r['cli_to_engine']:.2f} s | catalog connect, migrations, graph rebuild "
                      f"{r['catalog_and_graph']:.2f} s | state load {r['state_load']:.2f} s "
                      f"({r['state_rows']:,} rows) | job file (resume) {r['script']:.2f} s")
                print(f"  then: first epoch with rows +{r['first_rows']:.2f} s | first "
                      f"checkpoint +{r['first_checkpoint']:.2f} s "
                      f"(rows_out {r['first_checkpoint_rows_out']:,}) | first checkpoint with "
                      f"output committed +{r['first_output']:.2f} s "
                      f"(commit {r['first_output_ms']:.0f} ms; the poller saw it "
                      f"{r['visible_after_commit'] * 1000:+.0f} ms from then)")
            (counted,) = conn.execute("SELECT sum(n) FROM agg_out").fetchone()
            (consumed,) = conn.execute(
                "SELECT sum((\"offset\")::bigint) FROM sqlstream.source_offsets "
                "WHERE object = 'agg'"
            ).fetchone()
            print(f"exactly-once check after {args.restarts + 1} kills: sum(n) in agg_out "
                  f"{counted:,} vs rows consumed by the committed offset {consumed:,}: "
                  f"{'ok' if counted == consumed else 'MISMATCH'}")
            totals = [r["total"] for r in results]
            loads = [r["state_load"] for r in results]
            print(f"restart -> first new output: median {statistics.median(totals):.2f} s "
                  f"(all: {', '.join(f'{x:.2f}' for x in totals)}); state load median "
                  f"{statistics.median(loads):.2f} s for {results[0]['state_rows']:,} rows")


if __name__ == "__main__":
    main()
