"""Changelog batches (DESIGN §4): Arrow tables plus an optional int64 ``__weight`` column.

Append-only edges carry no weight column (every row is +1), so the common case pays nothing
for retractions.

>>> import pyarrow as pa
>>> t = pa.table({"a": [1, 2], "__weight": [1, -1]})
>>> is_weighted(t), is_weighted(t.drop_columns(["__weight"]))
(True, False)
"""

from __future__ import annotations

import pyarrow as pa

from sqlstream.connectors.base import WEIGHT


def is_weighted(table: pa.Table) -> bool:
    return WEIGHT in table.column_names


def with_weights(table: pa.Table) -> pa.Table:
    """The same changes with an explicit weight column."""
    if is_weighted(table):
        return table
    return table.append_column(WEIGHT, pa.repeat(pa.scalar(1, pa.int64()), table.num_rows))
