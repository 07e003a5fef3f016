"""The commit protocol (DESIGN §6), in one place.

A checkpoint is ONE Postgres transaction holding: every sink's pre-commit (a sink writing
into the catalog database writes its rows right there; the others stage their output before
the transaction commits), every operator's state delta, every reader's offsets and
watermark, the epoch's dead letters, one ``sink_commits`` marker per sink that produced
output, and the checkpoint row. Its commit is the decision; only after it do sinks publish
(``commit``). A crash before the commit leaves the previous checkpoint in force and the
staged output is rolled back at start-up; a crash after it is rolled forward. Either way
every sink ends up with each row exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from sqlstream.checkpoint.faults import crash_point
from sqlstream.checkpoint.store import CatalogStore
from sqlstream.engine.pipeline import SinkRunner
from sqlstream.engine.reader import Reader
from sqlstream.state.append_log import AppendLog
from sqlstream.state.table import StateTable


@dataclass
class CheckpointStats:
    epoch: int
    duration_ms: float
    rows_in: int
    rows_out: int
    state_rows: int
    bytes: int


def commit_checkpoint(
    store: CatalogStore,
    epoch: int,
    *,
    state_tables: list[StateTable | AppendLog],
    readers: list[Reader],
    sinks: list[SinkRunner],
    rows_in: int,
    rows_out: int,
    in_transaction: Callable[[psycopg.Cursor], None] | None = None,
) -> CheckpointStats:
    started = time.perf_counter()
    conn = store.conn
    state_rows = 0
    nbytes = 0
    try:
        with conn.transaction(), conn.cursor() as cur:
            for s in sinks:
                s.sink.pre_commit(epoch, conn)
            for st in state_tables:
                up, down = st.pg_write_delta(cur)
                state_rows += up + down
            for r in readers:
                store.write_offsets(cur, r.consumer, r.source_name, r.offsets, epoch)
                if r.watermark_us is not None:
                    store.write_watermark(cur, r.consumer, r.source_name, r.watermark_us, epoch)
                if r.dead_letters:
                    cur.executemany(
                        'INSERT INTO sqlstream.dead_letters (source, partition, "offset", raw, '
                        "reason, epoch) VALUES (%s, %s, %s, %s, %s, %s)",
                        [
                            (r.source_name, d.partition, Jsonb(d.offset), d.raw, d.reason, epoch)
                            for d in r.dead_letters
                        ],
                    )
            for s in sinks:
                if s.rows_pending or not s.committed_once:
                    cur.execute(
                        "INSERT INTO sqlstream.sink_commits (sink, epoch, rows) VALUES (%s, %s, %s)",
                        [s.name, epoch, s.rows_pending],
                    )
            if in_transaction is not None:
                in_transaction(cur)
            duration = (time.perf_counter() - started) * 1000
            cur.execute(
                "INSERT INTO sqlstream.checkpoints (epoch, duration_ms, rows_in, rows_out, "
                "state_rows, bytes) VALUES (%s, %s, %s, %s, %s, %s)",
                [epoch, duration, rows_in, rows_out, state_rows, nbytes],
            )
            crash_point("pre-commit")
    except BaseException:
        for s in sinks:
            try:
                s.sink.abort(epoch)
            except Exception:  # noqa: S110 - the original failure is what matters
                pass
        raise
    # Decided: publish. A crash from here on is rolled forward by Sink.recover.
    crash_point("post-commit")
    for s in sinks:
        s.sink.commit(epoch)
        s.rows_total += s.rows_pending
        s.rows_pending = 0
        s.committed_once = True
    for r in readers:
        r.dead_letters.clear()
    return CheckpointStats(
        epoch, (time.perf_counter() - started) * 1000, rows_in, rows_out, state_rows, nbytes
    )


def committed_sinks(conn: psycopg.Connection) -> set[str]:
    """Sinks that some checkpoint has recorded (the others still owe their backfill)."""
    return {r[0] for r in conn.execute("SELECT DISTINCT sink FROM sqlstream.sink_commits")}
