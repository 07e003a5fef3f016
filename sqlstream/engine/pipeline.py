"""A running continuous query: its readers, its operator tree and the consumers of its output.

Each materialized view, and each sink defined by its own query, is one pipeline. A batch from
a source (or the changes of a view it reads) enters at the query's scans of that relation and
is pushed up the operator tree; what reaches the root goes to the view's contents, to every
sink attached to it, and to the pipelines of views reading this one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from sqlstream.connectors.base import WEIGHT, Sink
from sqlstream.engine.build import build
from sqlstream.engine.materialize import MaterializeOperator
from sqlstream.engine.operator import Operator, PassThrough
from sqlstream.engine.reader import Reader
from sqlstream.plan.nodes import QueryPlan, Scan
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
            changes = changes.filter(pc.greater(changes.column(WEIGHT), 0)).drop_columns([WEIGHT])
        if changes.num_rows:
            self.sink.write(changes)
            self.rows_pending += changes.num_rows


@dataclass(eq=False)
class Pipeline:
    name: str
    kind: str  # 'materialized view' | 'sink'
    plan: QueryPlan
    con: duckdb.DuckDBPyConnection
    readers: list[Reader]
    materialize: MaterializeOperator | None = None
    sinks: list[SinkRunner] = field(default_factory=list)
    #: pipelines of views that read this one
    subscribers: list[Pipeline] = field(default_factory=list)
    #: pipelines of the views this one reads
    upstream: list[Pipeline] = field(default_factory=list)
    rows_out: int = 0

    def __post_init__(self) -> None:
        self.root, self.operators = build(self.con, self.name, self.plan.root)
        self.scans: dict[str, list[Operator]] = {}
        for op in self.operators:
            if isinstance(op, PassThrough):
                assert isinstance(op.node, Scan)
                self.scans.setdefault(op.node.relation, []).append(op)

    @property
    def state_tables(self) -> list[StateTable | AppendLog]:
        out = [t for op in self.operators for t in op.state_tables]
        if self.materialize:
            out.append(self.materialize.state)
        return out

    def state_kinds(self) -> list[tuple[str, StateTable | AppendLog]]:
        out = [(type(op).__name__, t) for op in self.operators for t in op.state_tables]
        if self.materialize:
            out.append(("MaterializeOperator", self.materialize.state))
        return out

    def create(self) -> None:
        """Empty state for every operator (recovery then loads the checkpoint into it)."""
        if self.materialize:
            self.materialize.create()
        for op in self.operators:
            op.create()

    def start_fresh(self) -> None:
        """Deliver what exists before any input (a global aggregate's row)."""
        for op in self.operators:
            self._push_from(op, op.initial())

    def restored(self) -> None:
        for op in self.operators:
            self._push_from(op, op.restored())

    def feed(self, relation: str, batch: pa.Table) -> None:
        """A batch of ``relation`` (a source or a view this query reads)."""
        for scan in self.scans.get(relation, []):
            self._push(scan, 0, batch)

    def _push(self, op: Operator, port: int, batch: pa.Table) -> None:
        self._push_from(op, op.process(port, batch))

    def _push_from(self, op: Operator, out: pa.Table | None) -> None:
        if out is None or out.num_rows == 0:
            return
        if op.parent is None:
            self.deliver(out)
        else:
            self._push(op.parent, op.parent_port, out)

    def watermark_us(self) -> int | None:
        marks = [r.watermark_us for r in self.readers if r.watermark_column]
        marks += [u.watermark_us() for u in self.upstream]
        if not marks or any(m is None for m in marks):
            return None
        return min(marks)  # type: ignore[type-var]

    def advance(self) -> None:
        """End of epoch: operators close windows and drop state behind the watermark."""
        wm = self.watermark_us()
        if wm is None:
            return
        for op in self.operators:  # bottom-up, so what one emits reaches the next
            self._push_from(op, op.on_watermark(wm))

    def before_checkpoint(self) -> None:
        for op in self.operators:
            op.before_checkpoint()

    def deliver(self, changes: pa.Table) -> None:
        self.rows_out += changes.num_rows
        if self.materialize:
            self.materialize.apply(changes)
        for s in self.sinks:
            s.write(changes)
        for sub in self.subscribers:
            sub.feed(self.name, changes)
