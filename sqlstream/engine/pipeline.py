"""A running continuous query: its readers, operators and the consumers of its output.

Each materialized view, and each sink defined by its own query, is one pipeline. Per batch
the fused stateless statement runs over the batch (registered as ``__in``, never converted
row by row), an aggregate folds it into its state, and the resulting changes go to the view's
contents and to every sink attached to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from sqlstream.connectors.base import WEIGHT, Sink
from sqlstream.engine.aggregate import AggregateOperator
from sqlstream.engine.materialize import MaterializeOperator
from sqlstream.engine.reader import Reader
from sqlstream.plan.nodes import QueryPlan
from sqlstream.state.append_log import AppendLog
from sqlstream.state.table import StateTable


@dataclass
class SinkRunner:
    """A sink and what the engine tracks for it between checkpoints."""

    name: str
    sink: Sink
    force_append_only: bool = False
    rows_pending: int = 0
    rows_total: int = 0
    #: whether any checkpoint has recorded this sink yet (else it still owes its backfill)
    committed_once: bool = False

    def write(self, changes: pa.Table) -> None:
        if WEIGHT in changes.column_names and self.force_append_only:
            # As RisingWave's force_append_only: retractions are dropped, inserts kept.
            mask = pc.greater(changes.column(WEIGHT), 0)
            changes = changes.filter(mask).drop_columns([WEIGHT])
        if changes.num_rows:
            self.sink.write(changes)
            self.rows_pending += changes.num_rows


@dataclass
class Pipeline:
    name: str
    kind: str  # 'materialized view' | 'sink'
    plan: QueryPlan
    con: duckdb.DuckDBPyConnection
    readers: list[Reader]
    aggregate: AggregateOperator | None = None
    materialize: MaterializeOperator | None = None
    sinks: list[SinkRunner] = field(default_factory=list)
    rows_out: int = 0

    @property
    def state_tables(self) -> list[StateTable | AppendLog]:
        out = []
        if self.aggregate:
            out.append(self.aggregate.state)
        if self.materialize:
            out.append(self.materialize.state)
        return out

    def process(self, data: pa.Table) -> None:
        """Push one source batch through the pipeline."""
        self.con.register("__in", data)
        try:
            if self.aggregate:
                changes = self.aggregate.process(self.plan.stateless.sql)
            else:
                changes = self.con.sql(self.plan.stateless.sql).to_arrow_table()
        finally:
            self.con.unregister("__in")
        self.deliver(changes)

    def watermark_us(self) -> int | None:
        marks = [r.watermark_us for r in self.readers if r.watermark_column]
        if not marks or any(m is None for m in marks):
            return None
        return min(marks)  # type: ignore[type-var]

    def advance(self) -> None:
        """End of epoch: let the aggregate close windows behind the watermark."""
        wm = self.watermark_us()
        if wm is not None and self.aggregate:
            self.deliver(self.aggregate.on_watermark(wm))

    def deliver(self, changes: pa.Table | None) -> None:
        if changes is None or changes.num_rows == 0:
            return
        self.rows_out += changes.num_rows
        if self.materialize:
            self.materialize.apply(changes)
        for s in self.sinks:
            s.write(changes)
