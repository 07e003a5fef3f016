"""One consumer's reader of a source: offsets, watermark, and dropping late rows.

As in RisingWave, a source stores nothing; each view or sink reading it has its own reader,
so its offsets and watermark are its own. The watermark is the largest value of the source's
``WATERMARK FOR`` expression seen so far; rows whose event time is behind the watermark when
they arrive are late: counted and dropped, never folded into closed windows.

The usual watermark is the event-time column minus a fixed interval
(``WATERMARK FOR ts AS ts - INTERVAL '5 seconds'``). For that form the reader knows the
constant (:func:`sqlstream.plan.intervals.fixed_offset_us`) and takes the batch's bounds
from one Arrow ``min_max`` over the column instead of a DuckDB query over the batch.

For the engine's watermark alignment (:meth:`Engine.run_epoch`) a reader also keeps how many
rows one microsecond of its watermark takes (``rows_per_us``, from its last batch) and since
when its source has had nothing to give (``empty_since``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from sqlstream.connectors.base import DeadLetter, Source
from sqlstream.state.table import qi

_US_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1}


def _timestamp_bounds_us(column: pa.ChunkedArray) -> tuple[int | None, int | None] | None:
    """(min, max) of a timestamp column in epoch microseconds, or None for other types."""
    if not pa.types.is_timestamp(column.type) or column.type.unit not in _US_PER_UNIT:
        return None
    mm = pc.min_max(column)
    low, high = mm["min"].value, mm["max"].value
    scale = _US_PER_UNIT[column.type.unit]
    return (
        None if low is None else low * scale,
        None if high is None else high * scale,
    )

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
    #: the constant the watermark adds to its column (``plan.intervals.fixed_offset_us``);
    #: None means: evaluate ``watermark_sql`` over the batch
    watermark_offset_us: int | None = None
    offsets: dict[str, Any] = field(default_factory=dict)
    watermark_us: int | None = None
    late_rows: int = 0
    rows_read: int = 0
    skipped: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    #: source rows per microsecond of event time in the last batch whose event time moved
    #: (None until one has); the engine sizes the polls of a reader that leads with it
    rows_per_us: float | None = None
    #: ``time.monotonic()`` of the first of the polls in a row that found nothing, or None
    #: when the last poll had rows: a reader empty for long is idle (holds no one back)
    empty_since: float | None = None
    #: epochs in which the engine skipped this reader because it led its pipeline's slowest
    held_epochs: int = 0

    def seek(self, offsets: dict[str, Any], watermark_us: int | None) -> None:
        self.offsets = dict(offsets)
        self.watermark_us = watermark_us
        self.source.seek(self.offsets)

    def poll(self, con: duckdb.DuckDBPyConnection, max_rows: int) -> pa.Table | None:
        batch = self.source.poll(max_rows)
        if batch is None or (batch.data.num_rows == 0 and not batch.dead_letters):
            if self.empty_since is None:
                self.empty_since = time.monotonic()
        else:
            self.empty_since = None
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
        bounds = (
            _timestamp_bounds_us(data.column(self.watermark_column))
            if self.watermark_offset_us is not None
            else None
        )
        con.register("__batch", data)
        try:
            # One pass for the new watermark and the oldest row; a copy without the late
            # rows is made only when there are any (rarely, for ordered input).
            if bounds is not None:
                low, high = bounds
                if high is not None:
                    high += self.watermark_offset_us
            else:
                low, high, top = con.sql(
                    f"SELECT min(epoch_us({col})), max(epoch_us({self.watermark_sql})), "
                    f"max(epoch_us({col})) FROM __batch"
                ).fetchall()[0]
                bounds = (low, top)
            if self.watermark_us is not None and low is not None and low < self.watermark_us:
                kept = con.sql(
                    f"SELECT * FROM __batch WHERE epoch_us({col}) >= {self.watermark_us} "
                    f"OR {col} IS NULL"
                ).to_arrow_table()
                self.late_rows += data.num_rows - kept.num_rows
                data = kept
        finally:
            con.unregister("__batch")
        assert bounds is not None
        self._note_density(batch.data.num_rows, bounds, high)
        if high is not None and (self.watermark_us is None or high > self.watermark_us):
            self.watermark_us = int(high)
        if self.source.finished():
            # the last rows of a bounded source bring its end with them: windows close and
            # state expires in this epoch, so the checkpoint after it never writes the state
            # that the end drops (Nexmark q9's final commit: 121 MB, ~1.1 s, at 2 M events)
            self.watermark_us = WATERMARK_END
        self.rows_read += data.num_rows
        return data if data.num_rows else None

    def _note_density(
        self, rows: int, bounds: tuple[int | None, int | None], high: int | None
    ) -> None:
        """Rows per microsecond of event time of a batch: over the watermark's advance when
        it had one (robust to disorder within the batch), else over the batch's own span."""
        span = 0
        if high is not None and self.watermark_us not in (None, WATERMARK_END):
            span = high - self.watermark_us  # type: ignore[operator]
        if span <= 0 and bounds[0] is not None and bounds[1] is not None:
            span = bounds[1] - bounds[0]
        if span > 0:
            self.rows_per_us = rows / span
