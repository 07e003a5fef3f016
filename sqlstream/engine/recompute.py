"""Keyed recomputation: exact maintenance of anything deterministic per key.

State: every input as a multiset (rows with a count, keyed by a hash of the row, with the
row's key columns alongside) and the output the same way. For a batch on input i:

1. fold the batch's changes into input i's multiset;
2. take the keys the batch touched;
3. run the node's query over the inputs restricted to those keys (new output), read the
   stored output of those keys (old output), and emit new - old, consolidated — unchanged
   rows cancel out and are not emitted;
4. store the new output for those keys.

The stored output (rather than recomputing the old one) makes retractions match exactly
what was emitted, whatever floating-point sums or ties did. With EMIT ON WINDOW CLOSE only
step 1 runs per batch; a window's keys are computed once, when the watermark passes its end,
and their state dropped. Windows behind the watermark drop their state in any case.
"""

from __future__ import annotations

import re

import duckdb
import pyarrow as pa

from sqlstream.connectors.base import WEIGHT
from sqlstream.engine.operator import Operator
from sqlstream.plan.nodes import Recompute
from sqlstream.state.table import StateTable, merge_partial, not_distinct, qi
from sqlstream.types import duckdb_type


def row_hash(columns: list[str]) -> str:
    """md5 of the row's text form (a JSON array: NULL and 'NULL' stay apart)."""
    parts = ", ".join(f"{c}::VARCHAR" for c in columns) or "''"
    return f"md5(to_json([{parts}]))"


class RecomputeOperator(Operator):
    node: Recompute

    def __init__(self, con: duckdb.DuckDBPyConnection, node: Recompute, operator_id: str) -> None:
        super().__init__(con, node, operator_id)
        self.keys = [f"__k{i}" for i in range(len(node.key_types))]
        key_cols = list(zip(self.keys, node.key_types, strict=True))
        self.inputs = [
            StateTable(
                con,
                f"{operator_id}_in{i}",
                keys=[("__h", "VARCHAR")],
                values=key_cols
                + [(c.name, duckdb_type(c.type)) for c in child.columns]
                + [("__count", "BIGINT")],
            )
            for i, child in enumerate(node.inputs)
        ]
        self.output = StateTable(
            con,
            f"{operator_id}_out",
            keys=[("__h", "VARCHAR")],
            values=key_cols
            + [(c.name, duckdb_type(c.type)) for c in node.columns]
            + [("__count", "BIGINT")],
        )
        self.out_cols = ", ".join(qi(c.name) for c in node.columns)

    @property
    def state_tables(self) -> list[StateTable]:
        return [*self.inputs, self.output]

    # -- life cycle -----------------------------------------------------------------------

    def restored(self) -> pa.Table | None:
        if self.output.row_count() or any(t.row_count() for t in self.inputs):
            return None
        return self.initial()

    def initial(self) -> pa.Table | None:
        """Output that exists before any input: a global aggregate's one row."""
        if self.keys or self.node.emit_on_window_close:
            return None
        return self._recompute(None)

    # -- per batch ------------------------------------------------------------------------

    def process(self, port: int, batch: pa.Table) -> pa.Table | None:
        child = self.node.inputs[port]
        cols = [qi(c.name) for c in child.columns]
        keys = [
            f"CAST({k} AS {t}) AS {name}"
            for k, t, name in zip(self.node.key_sql[port], self.node.key_types, self.keys, strict=True)
        ]
        weight = WEIGHT if WEIGHT in batch.column_names else "1"
        select = ", ".join([*keys, *cols])
        self.run(
            f"CREATE OR REPLACE TEMP TABLE __d AS SELECT {row_hash(cols)} AS __h, * FROM ("
            f"SELECT {select}, sum({weight})::BIGINT AS __count FROM __in GROUP BY ALL "
            f"HAVING sum({weight}) <> 0)",
            batch,
        )
        state = self.inputs[port]
        merges = {n: f"p.{qi(n)}" for n, _ in state.values}
        merges["__count"] = "coalesce(o.__count, 0) + p.__count"
        merge_partial(state, "SELECT * FROM __d", merges, "__count <> 0")
        if self.node.emit_on_window_close:
            return None
        if self.keys:
            self.con.execute(
                f"CREATE OR REPLACE TEMP TABLE __aff AS SELECT DISTINCT {', '.join(self.keys)} FROM __d"
            )
            return self._recompute("__aff")
        return self._recompute(None)

    def _restricted(self, table: str, affected: str | None) -> str:
        """An input's rows (repeated by count) whose key is in ``affected``."""
        rows = table
        if affected:
            rows = f"(SELECT s.* FROM {table} s SEMI JOIN {affected} a ON {not_distinct('s', 'a', self.keys)})"
        return f"(SELECT t.* EXCLUDE (__h, __count) FROM {rows} t, range(t.__count))"

    def _new_output(self, affected: str | None) -> None:
        query = self.node.query_sql
        for i, t in enumerate(self.inputs):
            rows = self._restricted(t.table, affected)
            query = re.sub(rf"\b__r{i}\b", lambda _, r=rows: r, query)
        cols = [*self.keys, *[qi(c.name) for c in self.node.columns]]
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE __new AS SELECT {row_hash(cols)} AS __h, "
            f"{', '.join(cols)}, count(*)::BIGINT AS __count FROM ({query}) GROUP BY ALL"
        )

    def _recompute(self, affected: str | None) -> pa.Table | None:
        self._new_output(affected)
        out = self.output
        where = (
            f"SEMI JOIN {affected} a ON {not_distinct('o', 'a', self.keys)}" if affected else ""
        )
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE __was AS SELECT o.* FROM {out.table} o {where}")
        delta = self.con.sql(
            f"SELECT {self.out_cols}, sum(__dw)::BIGINT AS {WEIGHT} FROM ("
            f"SELECT {self.out_cols}, __count AS __dw FROM __new UNION ALL "
            f"SELECT {self.out_cols}, -__count AS __dw FROM __was) GROUP BY ALL HAVING sum(__dw) <> 0"
        ).to_arrow_table()
        self.con.execute(f"INSERT INTO {out.dirty} SELECT __h FROM __was UNION ALL SELECT __h FROM __new")
        if affected:
            self.con.execute(
                f"DELETE FROM {out.table} USING {affected} a WHERE {not_distinct(out.table, 'a', self.keys)}"
            )
        else:
            self.con.execute(f"DELETE FROM {out.table}")
        self.con.execute(f"INSERT INTO {out.table} SELECT * FROM __new")
        if self.node.keep_sql and affected:
            self._prune(affected, self.node.keep_sql)
        if self.node.prune_input:
            # Without keys the input rows hash like the output rows: keep just the top ones.
            (state,) = self.inputs
            self.con.execute(f"INSERT INTO {state.dirty} SELECT __h FROM {state.table}")
            self.con.execute(f"DELETE FROM {state.table}")
            self.con.execute(f"INSERT INTO {state.table} SELECT * FROM {out.table}")
        return delta if delta.num_rows else None

    def _prune(self, affected: str, keep: str) -> None:
        """Drop the touched keys' input rows that fail ``keep`` (ranked over distinct rows,
        which ranks no row lower than with duplicates counted: it keeps a superset)."""
        (state,) = self.inputs
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE __drop AS SELECT __in.__h FROM ("
            f"SELECT s.* FROM {state.table} s SEMI JOIN {affected} a "
            f"ON {not_distinct('s', 'a', self.keys)}) AS __in QUALIFY NOT ({keep})"
        )
        self.con.execute(f"INSERT INTO {state.dirty} SELECT __h FROM __drop")
        self.con.execute(f"DELETE FROM {state.table} s USING __drop d WHERE s.__h = d.__h")

    # -- watermarks -----------------------------------------------------------------------

    def on_watermark(self, watermark_us: int) -> pa.Table | None:
        end = self.node.window_end_sql
        if end is None:
            return None
        first = self.inputs[0]
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE __closed AS SELECT DISTINCT {', '.join(self.keys)} "
            f"FROM {first.table} a WHERE epoch_us({end}) <= {watermark_us}"
        )
        if not self.con.sql("SELECT count(*) FROM __closed").fetchall()[0][0]:
            return None
        out = None
        if self.node.emit_on_window_close:
            self._new_output("__closed")
            out = self.con.sql(
                f"SELECT {self.out_cols} FROM __new, range(__new.__count)"
            ).to_arrow_table()
        for t in self.state_tables:
            self.con.execute(
                f"INSERT INTO {t.dirty} SELECT s.__h FROM {t.table} s "
                f"SEMI JOIN __closed a ON {not_distinct('s', 'a', self.keys)}"
            )
            self.con.execute(
                f"DELETE FROM {t.table} USING __closed a WHERE {not_distinct(t.table, 'a', self.keys)}"
            )
        return out if out is not None and out.num_rows else None
