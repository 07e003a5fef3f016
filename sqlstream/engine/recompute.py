"""Keyed recomputation: exact maintenance of anything deterministic per key.

State: every input, and the output. A retracting input is a multiset (distinct rows with a
count, keyed by a hash of the row, with the row's key columns alongside); an append-only
input is an append log (rows as they come, with a row id: nothing to hash or merge). The
output is keyed by (key, ordinal within the key). For a batch on input i:

1. fold the batch's changes into input i's state;
2. take the keys the batch touched;
3. run the node's query over the inputs restricted to those keys (new output), read the
   stored output of those keys (old output), and emit new - old, consolidated — unchanged
   rows cancel out and are not emitted;
4. store the new output for those keys.

The stored output (rather than recomputing the old one) makes retractions match exactly
what was emitted, whatever floating-point sums or ties did. With EMIT ON WINDOW CLOSE only
step 1 runs per batch; a window's keys are computed once, when the watermark passes its end,
and their state dropped. Windows behind the watermark drop their state in any case.

A Top-N over append-only input keeps only the input rows that can still reach the top, and
stores no output: the old output of a key is the query over its rows from before the batch
(the rows it dropped ranked below the top, so they never changed who is in it or their
ranks), which is what was emitted. Where the bounded ranking is the query's only window
function, the touched keys' rows are ranked once per batch: the rows that stay in the top
give the new output, the same ranking says which rows to drop, and the old output comes from
the rows before the batch (the previous top, a few per key). Where the ranking is the
query's only window function, each output row follows from one input row and its rank, so
the change is found by comparing (row id, rank) pairs before and after, and only the rows
that entered or left the top are fetched. A batch's rows outside the top of their key among
the batch itself are dropped before they are stored.
"""

from __future__ import annotations

import re

import duckdb
import numpy as np
import pyarrow as pa

from sqlstream.connectors.base import WEIGHT
from sqlstream.engine.operator import Operator
from sqlstream.plan.nodes import Recompute, rank_pattern
from sqlstream.state.append_log import AppendLog
from sqlstream.state.table import ROW_ID, StateTable, merge_partial, not_distinct, qi
from sqlstream.types import duckdb_type


def row_hash(columns: list[str]) -> str:
    """md5 of the row's text form (a JSON array: NULL and 'NULL' stay apart)."""
    parts = ", ".join(f"{c}::VARCHAR" for c in columns) or "''"
    return f"md5(to_json([{parts}]))"


#: the column of ``_rank_once``'s rows holding the rank it computed (see Recompute.rank_sql)
RANK_COLUMN = "__rank"


class RecomputeOperator(Operator):
    node: Recompute

    def __init__(self, con: duckdb.DuckDBPyConnection, node: Recompute, operator_id: str) -> None:
        super().__init__(con, node, operator_id)
        self.keys = [f"__k{i}" for i in range(len(node.key_types))]
        key_cols = list(zip(self.keys, node.key_types, strict=True))
        self.inputs: list[StateTable | AppendLog] = [
            StateTable(
                con,
                f"{operator_id}_in{i}",
                keys=[("__h", "VARCHAR")],
                values=key_cols
                + [(c.name, duckdb_type(c.type)) for c in child.columns]
                + [("__count", "BIGINT")],
                bounded=node.window_end_sql is not None,
            )
            if child.retracting
            else AppendLog(
                con,
                f"{operator_id}_in{i}",
                key_cols + [(c.name, duckdb_type(c.type)) for c in child.columns],
            )
            for i, child in enumerate(node.inputs)
        ]
        self.output = StateTable(
            con,
            f"{operator_id}_out",
            keys=key_cols + [("__ord", "BIGINT")],
            values=[(c.name, duckdb_type(c.type)) for c in node.columns],
            bounded=node.window_end_sql is not None,
        )
        self.out_cols = ", ".join(qi(c.name) for c in node.columns)
        #: the old output is recomputed from the input rows before the batch, not stored
        self.output_from_inputs = (
            node.keep_sql is not None
            and len(self.inputs) == 1
            and isinstance(self.inputs[0], AppendLog)
            and not node.emit_on_window_close
            and node.window_end_sql is None
        )

    @property
    def state_tables(self) -> list[StateTable | AppendLog]:
        return self.inputs if self.output_from_inputs else [*self.inputs, self.output]

    @property
    def keep_flag(self) -> str:
        """A column name for ``_rank_once``'s flag that no input column has."""
        taken = {n.lower() for n, _ in self.inputs[0].columns}
        flag = "__keep"
        while flag in taken:
            flag += "_"
        return flag

    # -- life cycle -----------------------------------------------------------------------

    def restored(self) -> pa.Table | None:
        if any(t.row_count() for t in self.state_tables):
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
        state = self.inputs[port]
        select = ", ".join([*keys, *cols])
        before = None
        if isinstance(state, AppendLog) and self.node.keep_sql:
            # A row outside the top of its key among the batch's own rows is outside it among
            # all rows (a row's rank among a subset is never lower), so it is dropped before
            # it is stored: q18's batches keep one bid in three. Rows are numbered first,
            # since the ranking breaks ties by arrival; the ranking reads only the ids and
            # what it orders by (a QUALIFY over every column took 4x as long).
            before = state.next_row
            batch = batch.append_column(ROW_ID, pa.array(state.take_ids(batch.num_rows)))
            top = self.sql(f"SELECT __in.{ROW_ID} FROM __in QUALIFY {self.node.keep_sql}", batch)
            kept = np.zeros(batch.num_rows, dtype=bool)
            kept[top.column(0).to_numpy() - before] = True
            # filtered by DuckDB as it copies the rows (Arrow's filter first: +0.1 s for q18)
            flag = self.keep_flag
            self.con.register("__in", batch.append_column(flag, pa.array(kept)))
            try:
                state.append_numbered(
                    f"(SELECT __in.{ROW_ID}, {select} FROM __in WHERE __in.{flag})"
                )
            finally:
                self.con.unregister("__in")
        elif isinstance(state, AppendLog):
            before = state.next_row
            self.con.register("__in", batch)
            try:
                state.append_from(f"(SELECT {select} FROM __in)")
            finally:
                self.con.unregister("__in")
        else:
            weight = WEIGHT if WEIGHT in batch.column_names else "1"
            self.run(
                f"CREATE OR REPLACE TEMP TABLE __d AS SELECT {row_hash(cols)} AS __h, * FROM ("
                f"SELECT {select}, sum({weight})::BIGINT AS __count FROM __in GROUP BY ALL "
                f"HAVING sum({weight}) <> 0)",
                batch,
            )
            merges = {n: f"p.{qi(n)}" for n, _ in state.values}
            merges["__count"] = "coalesce(o.__count, 0) + p.__count"
            merge_partial(state, "SELECT * FROM __d", merges, "__count <> 0")
        if self.node.emit_on_window_close:
            return None
        if self.keys:
            # an append log's new rows are read where they were appended (the table's end)
            new = f"{state.table} WHERE {ROW_ID} >= {before}" if before is not None else "__d"
            self.con.execute(
                f"CREATE OR REPLACE TEMP TABLE __aff AS SELECT DISTINCT {', '.join(self.keys)} "
                f"FROM {new}"
            )
            return self._recompute("__aff", before)
        return self._recompute(None, before)

    def _restricted(
        self, state: StateTable | AppendLog, affected: str | None, before: int | None = None
    ) -> str:
        """An input's rows (a multiset's repeated by count) whose key is in ``affected`` (and,
        of an append log, with a row id below ``before``)."""
        rows = self._of_keys(state.table, affected)
        if isinstance(state, AppendLog):
            # with the row id: over append-only input ties rank in arrival order
            older = f" WHERE t.{ROW_ID} < {before}" if before is not None else ""
            return f"(SELECT t.* FROM {rows} t{older})"
        return f"(SELECT t.* EXCLUDE (__h, __count) FROM {rows} t, range(t.__count))"

    def _of_keys(self, table: str, affected: str | None) -> str:
        """The rows of ``table`` whose key is in ``affected`` (all of them without one)."""
        if not affected:
            return table
        return f"(SELECT s.* FROM {table} s SEMI JOIN {affected} a ON {not_distinct('s', 'a', self.keys)})"

    def _new_output(
        self, affected: str | None, target: str = "__new", before: int | None = None
    ) -> None:
        query = self.node.query_sql
        for i, t in enumerate(self.inputs):
            rows = self._restricted(t, affected, before)
            query = re.sub(rf"\b__r{i}\b", lambda _, r=rows: r, query)
        self._output_of(query, target)

    def _output_of(self, query: str, target: str) -> None:
        """``target``: the rows of ``query`` numbered within each key (the output's key)."""
        part = f"PARTITION BY {', '.join(self.keys)}" if self.keys else ""
        keys = "".join(f"{k}, " for k in self.keys)
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE {target} AS SELECT {keys}"
            f"row_number() OVER ({part})::BIGINT AS __ord, {self.out_cols} FROM ({query})"
        )

    def _recompute(self, affected: str | None, before: int | None = None) -> pa.Table | None:
        ranked = self.output_from_inputs and self.node.top_only
        if ranked and self.node.by_rank:
            delta = self._rank_changes(affected, before if before is not None else 0)
        elif ranked:
            self._rank_once(affected, before if before is not None else 0)
        elif self.output_from_inputs:
            self._new_output(affected)
            self._new_output(affected, "__was", before if before is not None else 0)
        else:
            self._new_output(affected)
            self.con.execute(
                f"CREATE OR REPLACE TEMP TABLE __was AS SELECT * FROM "
                f"{self._of_keys(self.output.table, affected)}"
            )
        if not (ranked and self.node.by_rank):
            delta = self.con.sql(
                f"SELECT {self.out_cols}, sum(__dw)::BIGINT AS {WEIGHT} FROM ("
                f"SELECT {self.out_cols}, 1 AS __dw FROM __new UNION ALL "
                f"SELECT {self.out_cols}, -1 AS __dw FROM __was) GROUP BY ALL "
                "HAVING sum(__dw) <> 0"
            ).to_arrow_table()
        if not self.output_from_inputs:
            self._store_output(affected)
        if ranked:
            self.inputs[0].delete_where(
                f"s.{ROW_ID} IN (SELECT {ROW_ID} FROM __rows WHERE NOT {self.keep_flag})"
            )
        elif self.node.keep_sql:
            self._prune(affected, self.node.keep_sql)
        return delta if delta.num_rows else None

    def _rank_once(self, affected: str | None, before: int) -> None:
        """Top-N over an append log, ranking the touched keys' rows once: ``__new`` is the
        query over the rows that stay in the top (``top_only``: their ranks are the same
        among themselves), ``__was`` the query over the rows from before the batch (the top
        of the last batch, few per key), and the rows that fell out are pruned after."""
        (state,) = self.inputs
        rows = self._of_keys(state.table, affected)
        flag = self.keep_flag
        # Only the row ids and their flags: the ranking then reads just the columns it
        # orders by, not every column of every row (q19 at 2 M events: 1.4 -> 0.55 s, and
        # 0.2 s more to fetch the kept rows by id).
        rank = self.node.rank_sql
        ranked = f", {rank} AS {RANK_COLUMN}" if rank else ""
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE __rows AS SELECT __in.{ROW_ID}, "
            f"{self.node.keep_sql} AS {flag}{ranked} FROM {rows} AS __in"
        )
        kept = (
            f"(SELECT s.*{f', r.{RANK_COLUMN}' if rank else ''} FROM {state.table} s "
            f"JOIN __rows r ON s.{ROW_ID} = r.{ROW_ID} AND r.{flag})"
        )
        new_query = self.node.query_sql
        if rank:
            # the kept rows' ranks among all are their ranks among themselves (top_only):
            # the query reads them instead of ranking the kept rows again
            new_query = rank_pattern(rank).sub(f"__in.{RANK_COLUMN}", new_query)
        was = f"(SELECT * FROM {rows} WHERE {ROW_ID} < {before})"
        for target, rel, query in (
            ("__new", kept, new_query),
            ("__was", was, self.node.query_sql),
        ):
            query = re.sub(r"\b__r0\b", lambda _, r=rel: r, query)
            self._output_of(query, target)

    def _rank_changes(self, affected: str | None, before: int) -> pa.Table:
        """Top-N over an append log whose output rows each follow from one input row and its
        rank (``by_rank``): the change is the query over the (row, rank) pairs that entered
        the top, less the query over those that left it, found by comparing ids and ranks
        only. Rows that stayed at their rank (most of a top) are neither fetched nor
        compared column by column (q18 at 2 M events: 0.66 -> 0.19 s of DuckDB).

        ``__rows`` ranks the touched keys' rows (before and in the batch), ``__old`` the rows
        from before it: all of them were the top then, what was emitted (the rows that fell
        out of a top are pruned after each batch, as here)."""
        (state,) = self.inputs
        rows = self._of_keys(state.table, affected)
        flag, rank, keep = self.keep_flag, self.node.rank_sql, self.node.keep_sql
        assert rank is not None and keep is not None
        r = RANK_COLUMN
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE __rows AS SELECT __in.{ROW_ID}, {keep} AS {flag}, "
            f"{rank} AS {r} FROM {rows} AS __in"
        )
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE __old AS SELECT __in.{ROW_ID}, {rank} AS {r} "
            f"FROM (SELECT * FROM {rows} WHERE {ROW_ID} < {before}) AS __in"
        )
        pairs = f"n.{ROW_ID} = o.{ROW_ID} AND n.{r} = o.{r}"
        top = f"(SELECT {ROW_ID}, {r} FROM __rows WHERE {flag})"
        entered = f"(SELECT n.* FROM {top} n ANTI JOIN __old o ON {pairs})"
        left = f"(SELECT o.* FROM __old o ANTI JOIN {top} n ON {pairs})"
        query = rank_pattern(rank).sub(f"__in.{r}", self.node.query_sql)

        def output(ids: str, weight: int) -> str:
            of = (
                f"(SELECT s.*, i.{r} FROM {state.table} s JOIN {ids} i "
                f"ON s.{ROW_ID} = i.{ROW_ID})"
            )
            rows_of = re.sub(r"\b__r0\b", lambda _: of, query)
            return f"SELECT {self.out_cols}, {weight}::BIGINT AS {WEIGHT} FROM ({rows_of})"

        return self.con.sql(f"{output(left, -1)} UNION ALL {output(entered, 1)}").to_arrow_table()

    def _store_output(self, affected: str | None) -> None:
        """``__new`` replaces the stored output of the affected keys (``__was``)."""
        out = self.output
        ids = "".join(f"{k}, " for k in self.keys) + "__ord"
        self.con.execute(
            f"INSERT INTO {out.dirty} SELECT {ids} FROM __was UNION ALL SELECT {ids} FROM __new"
        )
        if affected:
            self.con.execute(
                f"DELETE FROM {out.table} USING {affected} a WHERE {not_distinct(out.table, 'a', self.keys)}"
            )
        else:
            self.con.execute(f"DELETE FROM {out.table}")
        self.con.execute(f"INSERT INTO {out.table} SELECT * FROM __new")

    def _prune(self, affected: str | None, keep: str) -> None:
        """Drop the touched keys' input rows that fail ``keep`` (a multiset's ranked as
        distinct rows, which ranks no row lower than with duplicates counted: it keeps a
        superset)."""
        (state,) = self.inputs
        rows = self._of_keys(state.table, affected)
        row_id = ROW_ID if isinstance(state, AppendLog) else "__h"
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE __drop AS SELECT __in.{row_id} FROM {rows} AS __in "
            f"QUALIFY NOT ({keep})"
        )
        state.delete_where(f"s.{row_id} IN (SELECT {row_id} FROM __drop)")

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
            out = self.con.sql(f"SELECT {self.out_cols} FROM __new").to_arrow_table()
        for t in self.state_tables:
            t.delete_where(
                f"EXISTS (SELECT 1 FROM __closed a WHERE {not_distinct('s', 'a', self.keys)})"
            )
        return out if out is not None and out.num_rows else None
