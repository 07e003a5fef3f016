"""Joins of append-only streams, by their deltas; and temporal (lookup) joins.

:class:`DeltaJoinOperator`: an inner equi-join by deltas. A batch from the left meets the
right's state and is then added to the left's state (and vice versa), so each pair of rows
is joined exactly once: ΔL ⋈ R + L' ⋈ ΔR. Over append-only inputs the sides are append logs;
when an input retracts, each side is a multiset (distinct rows with their count) and the
weights multiply, as in DBSP: a retracted row meets the same partners its insertion met, so
the work per batch follows the changed rows and their matches, never a whole key's group.
State is dropped behind the watermark where no future change can meet it: for interval joins
of append-only inputs, and on both sides of a join on a window bound, once that window has
closed.

:class:`TemporalJoinOperator`: ``JOIN t FOR SYSTEM_TIME AS OF PROCTIME()``: each stream row
looks up the current rows of ``t``; changes of ``t`` update the lookup state and never revise
earlier output (the output is append-only, as in Flink and RisingWave).
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from sqlstream.connectors.base import WEIGHT
from sqlstream.engine.operator import Operator
from sqlstream.engine.recompute import row_hash
from sqlstream.plan.nodes import DeltaJoin, TemporalJoin
from sqlstream.state.append_log import AppendLog
from sqlstream.state.table import StateTable, merge_partial, qi
from sqlstream.types import duckdb_type


def _key_select(keys: list[str]) -> str:
    return ", ".join(f"{k} AS __k{i}" for i, k in enumerate(keys))


def _on(n: int, residual: str | None) -> str:
    conds = [f"l.__k{i} = r.__k{i}" for i in range(n)]
    if residual:
        conds.append(residual)
    return " AND ".join(conds) or "TRUE"


class DeltaJoinOperator(Operator):
    node: DeltaJoin

    def __init__(self, con: duckdb.DuckDBPyConnection, node: DeltaJoin, operator_id: str) -> None:
        super().__init__(con, node, operator_id)
        self.key_types = self._key_types()
        self.sides: list[AppendLog | StateTable] = []
        for side, child in zip(("left", "right"), node.inputs, strict=True):
            columns = [(f"__k{i}", t) for i, t in enumerate(self.key_types)] + [
                (c.name, duckdb_type(c.type)) for c in child.columns
            ]
            self.sides.append(
                StateTable(con, f"{operator_id}_{side}", [("__h", "VARCHAR")],
                           [*columns, ("__count", "BIGINT")])
                if node.retracting
                else AppendLog(con, f"{operator_id}_{side}", columns)
            )  # fmt: skip

    def _key_types(self) -> list[str]:
        from sqlstream.plan.planner import _key_types

        return _key_types([self.node.left_keys], [self.node.inputs[0]])

    @property
    def state_tables(self) -> list[AppendLog | StateTable]:
        return self.sides

    def process(self, port: int, batch: pa.Table) -> pa.Table | None:
        keys = self.node.left_keys if port == 0 else self.node.right_keys
        casts = ", ".join(
            f"CAST({k} AS {t}) AS __k{i}" for i, (k, t) in enumerate(zip(keys, self.key_types, strict=True))
        )
        if self.node.retracting:
            return self._process_weighted(port, batch, casts)
        delta = self.sql(f"SELECT {casts}, * FROM __in", batch)
        other = self.sides[1 - port].table
        self.con.register("__delta", delta)
        try:
            left, right = ("__delta", other) if port == 0 else (other, "__delta")
            out = self.con.sql(
                f"SELECT {self.node.select_sql} FROM {left} AS l JOIN {right} AS r "
                f"ON {_on(len(keys), self.node.residual_sql)}"
            ).to_arrow_table()
        finally:
            self.con.unregister("__delta")
        side = self.sides[port]
        assert isinstance(side, AppendLog)
        side.append(delta)
        return out if out.num_rows else None

    def _process_weighted(self, port: int, batch: pa.Table, casts: str) -> pa.Table | None:
        """Δ ⋈ other side's multiset, weights multiplied; then Δ joins this side's multiset."""
        own, other = self.sides[port], self.sides[1 - port]
        assert isinstance(own, StateTable)
        cols = [qi(c.name) for c in self.node.inputs[port].columns]
        keys = [f"__k{i}" for i in range(len(self.key_types))]
        weight = WEIGHT if WEIGHT in batch.column_names else "1"
        # consolidated: a row inserted and retracted in one batch meets nothing
        self.run(
            f"CREATE OR REPLACE TEMP TABLE __dj AS SELECT {row_hash(keys + cols)} AS __h, * "
            f"FROM (SELECT {casts}, {', '.join(cols)}, sum({weight})::BIGINT AS __count "
            f"FROM __in GROUP BY ALL HAVING sum({weight}) <> 0)",
            batch,
        )
        left, right = ("__dj", other.table) if port == 0 else (other.table, "__dj")
        out = self.con.sql(
            # one output row per unit of weight, each +1 or -1, as every edge carries
            f"SELECT j.* EXCLUDE (__c), sign(j.__c)::BIGINT AS {WEIGHT} FROM ("
            f"SELECT {self.node.select_sql}, l.__count * r.__count AS __c "
            f"FROM {left} AS l JOIN {right} AS r ON {_on(len(keys), self.node.residual_sql)}"
            f") j, range(abs(j.__c))"
        ).to_arrow_table()
        merges = {n: f"p.{qi(n)}" for n, _ in own.values}
        merges["__count"] = "coalesce(o.__count, 0) + p.__count"
        merge_partial(own, "SELECT * FROM __dj", merges, "__count <> 0")
        return out if out.num_rows else None

    def on_watermark(self, watermark_us: int) -> pa.Table | None:
        for side, expiry in zip(self.sides, self.node.expiry_sql, strict=True):
            if expiry:
                side.delete_where(f"epoch_us({expiry}) < {watermark_us}")
        return None


class TemporalJoinOperator(Operator):
    node: TemporalJoin

    def __init__(
        self, con: duckdb.DuckDBPyConnection, node: TemporalJoin, operator_id: str
    ) -> None:
        super().__init__(con, node, operator_id)
        from sqlstream.plan.planner import _key_types

        self.key_types = _key_types([node.left_keys], [node.inputs[0]])
        right = node.inputs[1]
        self.lookup = StateTable(
            con,
            f"{operator_id}_lookup",
            keys=[("__h", "VARCHAR")],
            values=[(f"__k{i}", t) for i, t in enumerate(self.key_types)]
            + [(c.name, duckdb_type(c.type)) for c in right.columns]
            + [("__count", "BIGINT")],
        )

    @property
    def state_tables(self) -> list[StateTable]:
        return [self.lookup]

    def _casts(self, keys: list[str]) -> str:
        return ", ".join(
            f"CAST({k} AS {t}) AS __k{i}" for i, (k, t) in enumerate(zip(keys, self.key_types, strict=True))
        )

    def process(self, port: int, batch: pa.Table) -> pa.Table | None:
        if port == 1:
            cols = [qi(c.name) for c in self.node.inputs[1].columns]
            weight = WEIGHT if WEIGHT in batch.column_names else "1"
            self.run(
                f"CREATE OR REPLACE TEMP TABLE __d AS SELECT {row_hash(cols)} AS __h, * FROM ("
                f"SELECT {self._casts(self.node.right_keys)}, {', '.join(cols)}, "
                f"sum({weight})::BIGINT AS __count FROM __in GROUP BY ALL HAVING sum({weight}) <> 0)",
                batch,
            )
            merges = {n: f"p.{qi(n)}" for n, _ in self.lookup.values}
            merges["__count"] = "coalesce(o.__count, 0) + p.__count"
            merge_partial(self.lookup, "SELECT * FROM __d", merges, "__count <> 0")
            return None
        join = "LEFT JOIN" if self.node.outer else "JOIN"
        right = f"(SELECT t.* EXCLUDE (__h, __count) FROM {self.lookup.table} t, range(t.__count))"
        out = self.sql(
            f"SELECT {self.node.select_sql} FROM (SELECT {self._casts(self.node.left_keys)}, * "
            f"FROM __in) AS l {join} {right} AS r "
            f"ON {_on(len(self.key_types), self.node.residual_sql)}",
            batch,
        )
        return out if out.num_rows else None
