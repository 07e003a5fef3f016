"""The operator contract: changelog batches in, changelog batches out.

An operator receives batches on numbered ports (one per input of its plan node) and returns
the changes of its output, or None. ``on_watermark`` lets it close windows and drop state
behind the watermark. Stateful operators list their state tables, which the checkpoint
writes (changed rows only) and recovery loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa

from sqlstream.connectors.base import WEIGHT

if TYPE_CHECKING:
    from sqlstream.plan.nodes import Node
    from sqlstream.state.append_log import AppendLog
    from sqlstream.state.table import StateTable


class Operator:
    def __init__(self, con: duckdb.DuckDBPyConnection, node: Node, operator_id: str) -> None:
        self.con = con
        self.node = node
        self.operator_id = operator_id
        self.parent: Operator | None = None
        self.parent_port = 0
        self.children: list[Operator] = []

    @property
    def state_tables(self) -> list[StateTable | AppendLog]:
        return []

    def create(self) -> None:
        """Empty state tables (recovery then loads them from the checkpoint)."""
        for t in self.state_tables:
            t.create()

    def initial(self) -> pa.Table | None:
        """Output that exists before any input (a global aggregate's row), on a fresh start."""
        return None

    def restored(self) -> pa.Table | None:
        """Called after the state tables were loaded from a checkpoint."""
        return None

    def process(self, port: int, batch: pa.Table) -> pa.Table | None:
        raise NotImplementedError

    def on_watermark(self, watermark_us: int) -> pa.Table | None:
        return None

    def before_checkpoint(self) -> None:
        """Whatever the operator holds outside its state tables must be in them now."""

    def sql(self, query: str, batch: pa.Table) -> pa.Table:
        """Run ``query`` with ``batch`` as ``__in``."""
        self.con.register("__in", batch)
        try:
            return self.con.sql(query).to_arrow_table()
        finally:
            self.con.unregister("__in")

    def run(self, statement: str, batch: pa.Table) -> None:
        self.con.register("__in", batch)
        try:
            self.con.execute(statement)
        finally:
            self.con.unregister("__in")


class PassThrough(Operator):
    """A scan: the batches of a source or view enter the query here."""

    def process(self, port: int, batch: pa.Table) -> pa.Table | None:
        return batch


class StatelessOperator(Operator):
    """Fused filter/project/window assignment: one DuckDB statement per batch."""

    def process(self, port: int, batch: pa.Table) -> pa.Table | None:
        renames = self.node.renames  # type: ignore[attr-defined]
        if renames is not None and not any(
            pa.types.is_dictionary(batch.schema.field(src).type) for src, _ in renames
        ):
            # plain columns: a selection of the batch's own arrays, no copy (dictionary
            # columns go through DuckDB, which puts them out as the declared strings)
            names = [src for src, _ in renames] + [WEIGHT] * (WEIGHT in batch.column_names)
            out = batch.select(names)
            return out.rename_columns([dst for _, dst in renames] + names[len(renames) :])
        return self.sql(self.node.sql, batch)  # type: ignore[attr-defined]
