"""The commit protocol (DESIGN §6), in one place.

A checkpoint is ONE Postgres transaction holding: every sink's pre-commit (a sink writing
into the catalog database writes its rows right there; the others stage their output before
the transaction commits), every operator's state delta, every reader's offsets and
watermark, the epoch's dead letters, one ``sink_commits`` marker per sink that produced
output, and the checkpoint row. Its commit is the decision; only after it do sinks publish
(``commit``). A crash before the commit leaves the previous checkpoint in force and the
staged output is rolled back at start-up; a crash after it is rolled forward. Either way
every sink ends up with each row exactly once.

A checkpoint has two halves so that Postgres works while the engine goes on:

* ``seal`` runs in the engine's thread, between epochs: it takes each state table's delta as
  Arrow (the only DuckDB work), copies the readers' positions, and has each sink set aside
  the epoch's output. After it the engine may change any of them again.
* ``commit`` runs the transaction from what was sealed, on a connection of its own, in the
  committer's thread, and publishes the sinks once it has committed. It touches no DuckDB
  table and nothing the engine changes.

The engine may seal the next checkpoint while the previous ``commit`` runs, but hands it to
the committer only once that one has returned: commits run one at a time, in epoch order. A
failed ``commit`` makes the engine recover from the last committed checkpoint (the sealed
state, and a checkpoint sealed after it, are gone with it), so at most one epoch is
committing and nothing is lost.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from sqlstream.checkpoint.faults import crash_point
from sqlstream.checkpoint.store import CatalogStore
from sqlstream.connectors.base import DeadLetter
from sqlstream.engine.pipeline import SinkRunner
from sqlstream.engine.reader import Reader
from sqlstream.state.append_log import AppendLog
from sqlstream.state.table import Delta, StateTable


@dataclass
class CheckpointStats:
    epoch: int
    duration_ms: float
    rows_in: int
    rows_out: int
    state_rows: int
    bytes: int


@dataclass
class ReaderPosition:
    consumer: str
    source: str
    offsets: dict[str, Any]
    watermark_us: int | None


@dataclass
class Sealed:
    """One checkpoint's contents, taken between epochs (see the module docstring)."""

    epoch: int
    deltas: list[tuple[StateTable | AppendLog, Delta]]
    positions: list[ReaderPosition]
    dead_letters: list[tuple[str, DeadLetter]]
    sinks: list[tuple[SinkRunner, int]]  # each sink with the rows of this epoch
    rows_in: int
    rows_out: int
    #: more writes for the same transaction (e.g. trimming table logs)
    in_transaction: Callable[[psycopg.Cursor], None] | None
    started: float


def seal(
    epoch: int,
    *,
    state_tables: list[StateTable | AppendLog],
    readers: list[Reader],
    sinks: list[SinkRunner],
    rows_in: int,
    rows_out: int,
    in_transaction: Callable[[psycopg.Cursor], None] | None = None,
) -> Sealed:
    """Take a checkpoint's contents (engine thread)."""
    started = time.perf_counter()
    deltas = [(t, t.delta()) for t in state_tables]
    positions = [
        ReaderPosition(r.consumer, r.source_name, copy.deepcopy(r.offsets), r.watermark_us)
        for r in readers
    ]
    dead_letters = [(r.source_name, d) for r in readers for d in r.dead_letters]
    for r in readers:
        r.dead_letters = []
    sink_rows = []
    for s in sinks:
        s.sink.seal(epoch)
        sink_rows.append((s, s.rows_pending))
        s.rows_pending = 0
    return Sealed(
        epoch, deltas, positions, dead_letters, sink_rows, rows_in, rows_out, in_transaction,
        started,
    )


def commit(store: CatalogStore, conn: psycopg.Connection, sealed: Sealed) -> CheckpointStats:
    """Run the checkpoint transaction on ``conn``, then publish the sinks (any thread)."""
    epoch = sealed.epoch
    state_rows = 0
    # the state's share of the checkpoint, as the Arrow it was sealed in
    nbytes = sum(d.rows.nbytes + d.dropped.nbytes for _, d in sealed.deltas)
    try:
        with conn.transaction(), conn.cursor() as cur:
            for table, delta in sealed.deltas:
                up, down = table.pg_write(cur, delta)
                state_rows += up + down
            for s, _ in sealed.sinks:
                s.sink.pre_commit(epoch, conn)
            for pos in sealed.positions:
                store.write_offsets(cur, pos.consumer, pos.source, pos.offsets, epoch)
                if pos.watermark_us is not None:
                    store.write_watermark(cur, pos.consumer, pos.source, pos.watermark_us, epoch)
            if sealed.dead_letters:
                cur.executemany(
                    'INSERT INTO sqlstream.dead_letters (source, partition, "offset", raw, '
                    "reason, epoch) VALUES (%s, %s, %s, %s, %s, %s)",
                    [
                        (source, d.partition, Jsonb(d.offset), d.raw, d.reason, epoch)
                        for source, d in sealed.dead_letters
                    ],
                )
            for s, rows in sealed.sinks:
                if rows or not s.committed_once:
                    cur.execute(
                        "INSERT INTO sqlstream.sink_commits (sink, epoch, rows) VALUES (%s, %s, %s)",
                        [s.name, epoch, rows],
                    )
            if sealed.in_transaction is not None:
                sealed.in_transaction(cur)
            duration = (time.perf_counter() - sealed.started) * 1000
            cur.execute(
                "INSERT INTO sqlstream.checkpoints (epoch, duration_ms, rows_in, rows_out, "
                "state_rows, bytes) VALUES (%s, %s, %s, %s, %s, %s)",
                [epoch, duration, sealed.rows_in, sealed.rows_out, state_rows, nbytes],
            )
            crash_point("pre-commit")
    except BaseException:
        for s, _ in sealed.sinks:
            try:
                s.sink.abort(epoch)
            except Exception:  # noqa: S110 - the original failure is what matters
                pass
        raise
    # Decided: publish. A crash from here on is rolled forward by Sink.recover.
    crash_point("post-commit")
    for s, rows in sealed.sinks:
        s.sink.commit(epoch)
        s.rows_total += rows
        s.committed_once = True
    return CheckpointStats(
        epoch,
        (time.perf_counter() - sealed.started) * 1000,
        sealed.rows_in,
        sealed.rows_out,
        state_rows,
        nbytes,
    )


def committed_sinks(conn: psycopg.Connection) -> set[str]:
    """Sinks that some checkpoint has recorded (the others still owe their backfill)."""
    return {r[0] for r in conn.execute("SELECT DISTINCT sink FROM sqlstream.sink_commits")}
