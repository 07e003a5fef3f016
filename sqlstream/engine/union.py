"""UNION ALL: batches of every input pass through, renamed and cast to the union's columns."""

from __future__ import annotations

import pyarrow as pa

from sqlstream.connectors.base import WEIGHT
from sqlstream.engine.operator import Operator
from sqlstream.state.table import qi
from sqlstream.types import duckdb_type


class UnionOperator(Operator):
    def process(self, port: int, batch: pa.Table) -> pa.Table | None:
        names = [n for n in batch.column_names if n != WEIGHT]
        cols = [
            f"CAST({qi(src)} AS {duckdb_type(c.type)}) AS {qi(c.name)}"
            for src, c in zip(names, self.node.columns, strict=True)
        ]
        if WEIGHT in batch.column_names:
            cols.append(WEIGHT)
        elif self.node.retracting:
            cols.append(f"1::BIGINT AS {WEIGHT}")
        return self.sql(f"SELECT {', '.join(cols)} FROM __in", batch)
