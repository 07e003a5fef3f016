"""One consumer's reader of a source: offsets, watermark, and dropping late rows.

As in RisingWave, a source stores nothing; each view or sink reading it has its own reader,
so its offsets and watermark are its own. The watermark is the largest value of the source's
``WATERMARK FOR`` expression seen so far; rows whose event time is behind the watermark when
they arrive are late: counted and dropped, never folded into closed windows.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from sqlstream.connectors.base import DeadLetter, Source
from sqlstream.state.table import qi

#: the watermark of a source that will never produce another row: every window closes
WATERMARK_END = sys.maxsize


@dataclass
class Reader:
    consumer: str
    source_name: str
    source: Source
    watermark_column: str | None = None
    watermark_sql: str | None = None
    on_error: str = "dead_letter"
    offsets: dict[str, Any] = field(default_factory=dict)
    watermark_us: int | None = None
    late_rows: int = 0
    rows_read: int = 0
    skipped: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def seek(self, offsets: dict[str, Any], watermark_us: int | None) -> None:
        self.offsets = dict(offsets)
        self.watermark_us = watermark_us
        self.source.seek(self.offsets)

    def poll(self, con: duckdb.DuckDBPyConnection, max_rows: int) -> pa.Table | None:
        batch = self.source.poll(max_rows)
        if batch is None:
            if self.watermark_column and self.source.finished():
                self.watermark_us = WATERMARK_END
            return None
        self.offsets.update(batch.offsets)
        self.dead_letters.extend(batch.dead_letters)
        data = batch.data
        if self.watermark_column is None or data.num_rows == 0:
            self.rows_read += data.num_rows
            return data if data.num_rows else None
        col = qi(self.watermark_column)
        con.register("__batch", data)
        try:
            # One pass for the new watermark and the oldest row; a copy without the late
            # rows is made only when there are any (rarely, for ordered input).
            low, high = con.sql(
                f"SELECT min(epoch_us({col})), max(epoch_us({self.watermark_sql})) FROM __batch"
            ).fetchall()[0]
            if self.watermark_us is not None and low is not None and low < self.watermark_us:
                kept = con.sql(
                    f"SELECT * FROM __batch WHERE epoch_us({col}) >= {self.watermark_us} "
                    f"OR {col} IS NULL"
                ).to_arrow_table()
                self.late_rows += data.num_rows - kept.num_rows
                data = kept
        finally:
            con.unregister("__batch")
        if high is not None and (self.watermark_us is None or high > self.watermark_us):
            self.watermark_us = int(high)
        self.rows_read += data.num_rows
        return data if data.num_rows else None
