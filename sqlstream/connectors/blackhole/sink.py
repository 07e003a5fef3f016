"""The blackhole sink: takes every change and discards it, counting rows.

Useful to measure a query without a real target (benchmarks) and to test plans. It takes
retractions, and since it delivers nothing its counts of committed rows are exact.

>>> import pyarrow as pa
>>> from pathlib import Path
>>> sink = BlackholeSink(ConnectorContext("b", "", Path(".")), [], {}, None)
>>> sink.write(pa.table({"x": [1, 2, 2], "__weight": [1, 1, -1]}))
>>> sink.pre_commit(1, None); sink.commit(1)
>>> sink.inserts, sink.retractions, sink.committed_rows
(2, 1, 3)
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from sqlstream.connectors.base import WEIGHT, ConnectorContext, Format, Sink
from sqlstream.types import Schema


class BlackholeSink(Sink):
    """Discards rows; counts inserts and retractions seen and rows of committed epochs."""

    exactly_once = True
    accepts_retractions = True

    def __init__(
        self, ctx: ConnectorContext, schema: Schema, options: dict[str, str], fmt: Format | None
    ) -> None:
        super().__init__(ctx, schema, options, fmt)
        self.inserts = 0
        self.retractions = 0
        #: rows of epochs whose checkpoint committed
        self.committed_rows = 0
        self._uncommitted = 0
        self._pending: dict[int, int] = {}

    def write(self, changes: pa.Table) -> None:
        n = changes.num_rows
        retracted = 0
        if WEIGHT in changes.column_names and n:
            retracted = pc.sum(pc.less(changes[WEIGHT], 0).cast(pa.int64())).as_py() or 0
        self.retractions += retracted
        self.inserts += n - retracted
        self._uncommitted += n

    def seal(self, epoch: int) -> None:
        self._pending[epoch] = self._uncommitted
        self._uncommitted = 0

    def commit(self, epoch: int) -> None:
        self.committed_rows += self._pending.pop(epoch, 0)

    def abort(self, epoch: int) -> None:
        self._uncommitted += self._pending.pop(epoch, 0)
