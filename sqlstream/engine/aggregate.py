"""GROUP BY over a changelog, with state in DuckDB.

Per batch: the stateless statement computes keys and arguments, one GROUP BY folds the batch
into partial accumulators, and :func:`merge_partial` folds those into the state. The output
is the change of the query's rows for the touched groups (old row -1, new row +1), or, under
EMIT ON WINDOW CLOSE, nothing until the watermark passes a window's end, when its final rows
are emitted once and its state dropped. Windows behind the watermark drop their state either
way: late rows never reach them (the reader drops and counts rows behind the watermark).
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from sqlstream.plan.nodes import Aggregate, QueryPlan
from sqlstream.state.table import StateTable, merge_partial, qi


class AggregateOperator:
    def __init__(self, con: duckdb.DuckDBPyConnection, operator_id: str, plan: QueryPlan) -> None:
        assert plan.aggregate is not None and plan.project is not None
        self.con = con
        self.spec: Aggregate = plan.aggregate
        self.project_sql = plan.project.sql
        self.state = StateTable(
            con, operator_id, self.spec.keys, [(a.name, a.duck_type) for a in self.spec.accumulators]
        )

    def create(self) -> pa.Table | None:
        """Fresh state. A global aggregate has its one row from the start (count 0)."""
        self.state.create()
        return self._init_global()

    def _init_global(self) -> pa.Table | None:
        if not self.spec.is_global or self.state.row_count():
            return None
        zeros = ", ".join(
            f"{'0' if a.name.startswith(('_rows', '_count', '_nonnull')) else 'NULL'}::{a.duck_type}"
            for a in self.spec.accumulators
        )
        self.con.execute(f"INSERT INTO {self.state.table} VALUES ({zeros})")
        self.state.mark_all_dirty()
        return self._rows_of(self.state.table, +1)

    def restored(self) -> pa.Table | None:
        """After loading state: a global aggregate never checkpointed gets its first row."""
        return self._init_global()

    def _rows_of(self, relation: str, weight: int | None) -> pa.Table:
        sql = self.project_sql.replace("__st", relation)
        if weight is not None:
            sql = f"SELECT *, {weight}::BIGINT AS __weight FROM ({sql})"
        return self.con.sql(sql).to_arrow_table()

    def process(self, pre_sql: str) -> pa.Table | None:
        """Fold a batch (``pre_sql`` yields keys and arguments) into the state."""
        keys = ", ".join(qi(k) for k, _ in self.spec.keys)
        partials = ", ".join(f"{a.partial_sql} AS {qi(a.name)}" for a in self.spec.accumulators)
        group = f" GROUP BY {keys}" if keys else ""
        partial_sql = f"SELECT {keys + ', ' if keys else ''}{partials} FROM ({pre_sql}){group}"
        if self.spec.is_global:
            partial_sql += ' HAVING count(*) > 0'
        keep = "TRUE" if self.spec.is_global else '"_rows" <> 0'
        old, new = merge_partial(
            self.state, partial_sql, {a.name: a.merge_sql for a in self.spec.accumulators}, keep
        )
        if self.spec.emit_on_window_close:
            return None
        before = self._rows_of(old, -1)
        after = self._rows_of(new, +1)
        if not before.num_rows and not after.num_rows:
            return None
        return pa.concat_tables([before, after.cast(before.schema)])

    def on_watermark(self, watermark_us: int) -> pa.Table | None:
        """Close windows ending at or before the watermark: emit (EOWC) and drop their state."""
        end = self.spec.window_end_sql
        if end is None:
            return None
        closed = f"epoch_us({end}) <= {watermark_us}"
        count = self.con.sql(
            f"SELECT count(*) FROM {self.state.table} s WHERE {closed}"
        ).fetchall()[0][0]
        if not count:
            return None
        out = None
        if self.spec.emit_on_window_close:
            out = self._rows_of(f"(SELECT * FROM {self.state.table} s WHERE {closed})", None)
        self.con.execute(
            f"INSERT INTO {self.state.dirty} SELECT {self.state._key_select('s')} "
            f"FROM {self.state.table} s WHERE {closed}"
        )
        self.con.execute(f"DELETE FROM {self.state.table} AS s WHERE {closed}")
        return out
