"""A materialized view's contents: a DuckDB table of distinct rows with their multiplicity.

Changes are consolidated per row (summing weights) and merged, so the table is always the
Z-set the view's changelog adds up to; ``SELECT`` reads it through a view that repeats each
row ``__count`` times. The table is checkpointed like any operator state.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from sqlstream.engine.changes import is_weighted
from sqlstream.state.table import StateTable, merge_partial, qi
from sqlstream.types import Schema, duckdb_type


def contents_table(name: str) -> str:
    return qi(f"mv_{name}")


class MaterializeOperator:
    def __init__(self, con: duckdb.DuckDBPyConnection, operator_id: str, name: str, schema: Schema):
        self.con = con
        self.name = name
        self.schema = schema
        self.state = StateTable(
            con,
            operator_id,
            keys=[(c.name, duckdb_type(c.type)) for c in schema],
            values=[("__count", "BIGINT")],
        )

    def create(self) -> None:
        self.state.create()
        self._create_view()

    def _create_view(self) -> None:
        cols = ", ".join(f"t.{qi(c.name)}" for c in self.schema)
        self.con.execute(
            f"CREATE OR REPLACE VIEW {qi(self.name)} AS "
            f"SELECT {cols} FROM {self.state.table} t, range(t.__count)"
        )

    def apply(self, changes: pa.Table) -> None:
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
        self.con.execute(f"DROP TABLE IF EXISTS {self.state.dirty}")
