"""A materialized view's contents, as a DuckDB table that ``SELECT`` reads.

Over an append-only changelog the rows are simply appended (an :class:`AppendLog`). Over a
retracting one the table holds distinct rows with their multiplicity: changes are
consolidated per row (summing weights) and merged, so the table is always the Z-set the
view's changelog adds up to, and the view repeats each row ``__count`` times. Either way the
table is checkpointed like any operator state.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from sqlstream.engine.changes import is_weighted
from sqlstream.state.append_log import AppendLog
from sqlstream.state.table import StateTable, merge_partial, qi
from sqlstream.types import Schema, duckdb_type


class MaterializeOperator:
    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        operator_id: str,
        name: str,
        schema: Schema,
        *,
        retracting: bool,
    ) -> None:
        self.con = con
        self.name = name
        self.schema = schema
        columns = [(c.name, duckdb_type(c.type)) for c in schema]
        self.state: StateTable | AppendLog = (
            StateTable(con, operator_id, keys=columns, values=[("__count", "BIGINT")])
            if retracting
            else AppendLog(con, operator_id, columns)
        )

    def create(self) -> None:
        self.state.create()
        cols = ", ".join(f"t.{qi(c.name)}" for c in self.schema)
        source = (
            f"{self.state.table} t, range(t.__count)"
            if isinstance(self.state, StateTable)
            else f"{self.state.table} t"
        )
        self.con.execute(f"CREATE OR REPLACE VIEW {qi(self.name)} AS SELECT {cols} FROM {source}")

    def apply(self, changes: pa.Table) -> None:
        if isinstance(self.state, AppendLog):
            self.state.append(changes)
            return
        cols = ", ".join(qi(c.name) for c in self.schema)
        weight = "sum(__weight)" if is_weighted(changes) else "count(*)"
        self.con.register("__changes", changes)
        try:
            merge_partial(
                self.state,
                f"SELECT {cols}, {weight} AS __count FROM __changes GROUP BY ALL",
                {"__count": "coalesce(o.__count, 0) + p.__count"},
                "__count <> 0",
            )
        finally:
            self.con.unregister("__changes")

    def rows(self) -> pa.Table:
        return self.con.sql(f"SELECT * FROM {qi(self.name)}").to_arrow_table()

    def drop(self) -> None:
        self.con.execute(f"DROP VIEW IF EXISTS {qi(self.name)}")
        self.con.execute(f"DROP TABLE IF EXISTS {self.state.table}")
        if isinstance(self.state, StateTable):
            self.con.execute(f"DROP TABLE IF EXISTS {self.state.dirty}")
