"""The file sink: exactly-once Parquet / CSV / JSON-lines files in a directory.

Each checkpoint's rows become one or more files ``<path>/part-<epoch>-<n>.<ext>`` (epoch
zero-padded to 20 digits, so names sort by epoch), written in two phases:

1. ``pre_commit(epoch)`` encodes the rows into ``<path>/_staging/<epoch>/`` and fsyncs them;
2. ``commit(epoch)`` (after the catalog recorded the epoch) renames them into ``<path>``.

A rename is atomic, so a reader never sees a partial file; names starting with ``_`` are
ignored by readers (DuckDB, Spark, pyarrow datasets, the file source), so the staging area is
invisible. ``recover(committed)`` at start-up publishes staged epochs ``<= committed`` (a crash
between the checkpoint and ``commit``) and deletes the others. An epoch with no rows publishes
nothing.

The sink is append-only: should retractions reach it (``force_append_only = 'true'``), only
rows with a positive weight are written.

>>> sink = FileSink(ctx, schema, {"path": "out/big_bids"},
...                 Format("plain", "parquet"))  # doctest: +SKIP
>>> # duckdb.sql("SELECT count(*) FROM 'out/big_bids/*.parquet'")  sees published parts only
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import psycopg
import pyarrow as pa

from sqlstream.connectors.base import ConnectorContext, Format, Sink, normalize_changes
from sqlstream.connectors.options import OptionSpec
from sqlstream.errors import ConnectorError, InvalidParameterValue
from sqlstream.formats.encode import EXTENSIONS, make_encoder
from sqlstream.types import Schema

log = logging.getLogger(__name__)

STAGING = "_staging"
EPOCH_DIGITS = 20


def part_name(epoch: int, n: int, ext: str) -> str:
    """The published name of part ``n`` of ``epoch``.

    >>> part_name(42, 0, "parquet")
    'part-00000000000000000042-0.parquet'
    """
    return f"part-{epoch:0{EPOCH_DIGITS}d}-{n}.{ext}"


def _fsync_dir(path: Path) -> None:
    """Make renames and new entries in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class FileSink(Sink):
    """Append-only files, published atomically per checkpoint (see the module docstring)."""

    options_spec = [
        OptionSpec("path", required=True, description="output directory (created if missing)"),
        OptionSpec(
            "max_rows_per_file",
            default="1000000",
            description="an epoch with more rows is split into several parts",
        ),
    ]
    exactly_once = True
    accepts_retractions = False

    def __init__(
        self, ctx: ConnectorContext, schema: Schema, options: dict[str, str], fmt: Format | None
    ) -> None:
        super().__init__(ctx, schema, options, fmt)
        if fmt is None:
            raise InvalidParameterValue(
                f"sink {ctx.name}: the file sink needs FORMAT PLAIN ENCODE PARQUET | CSV | JSON"
            )
        if fmt.format.lower() != "plain":
            raise InvalidParameterValue(
                f"sink {ctx.name}: the file sink writes FORMAT PLAIN only, not {fmt.format.upper()}"
            )
        self.encoding = fmt.encode.lower()
        self._encode = make_encoder(self.encoding, fmt.options, schema)
        self.extension = EXTENSIONS[self.encoding]
        try:
            self.max_rows = int(self.options["max_rows_per_file"])
        except ValueError:
            self.max_rows = 0
        if self.max_rows <= 0:
            raise InvalidParameterValue(
                f"sink {ctx.name}: max_rows_per_file must be a positive integer"
            )
        # Absolute, so that a later change of working directory cannot move the output.
        self.path = Path(self.options["path"]).absolute()
        self.staging = self.path / STAGING
        self._buffer: list[pa.Table] = []
        self._pending: dict[int, list[pa.Table]] = {}
        # epoch -> publish / discard that failed; finished before the next epoch is staged,
        # so a stale staged epoch can never be mistaken for a later committed one
        self._unfinished: dict[int, str] = {}

    def _epoch_dir(self, epoch: int) -> Path:
        return self.staging / f"{epoch:0{EPOCH_DIGITS}d}"

    def open(self) -> None:
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConnectorError(f"sink {self.ctx.name}: cannot create {self.path}: {e}") from e

    def recover(self, committed_epoch: int | None) -> None:
        """Publish staged epochs ``<= committed_epoch``, delete the rest."""
        self._buffer.clear()
        self._pending.clear()
        self._unfinished.clear()
        if not self.staging.is_dir():
            return
        for entry in sorted(self.staging.iterdir()):
            epoch = int(entry.name) if entry.name.isdigit() else None
            if epoch is not None and committed_epoch is not None and epoch <= committed_epoch:
                log.info("sink %s: publishing staged epoch %d", self.ctx.name, epoch)
                self._publish(epoch)
            else:
                log.info("sink %s: discarding staged %s", self.ctx.name, entry.name)
                self._remove(entry)
        _fsync_dir(self.staging)

    def write(self, changes: pa.Table) -> None:
        # Append-only: retractions only arrive under force_append_only, and are dropped.
        rows = normalize_changes(changes, self.schema, weighted=False)
        if rows.num_rows:
            self._buffer.append(rows)

    def seal(self, epoch: int) -> None:
        self._pending[epoch], self._buffer = self._buffer, []

    def pre_commit(self, epoch: int, txn: psycopg.Connection) -> None:
        """Stage the epoch's rows as complete, fsync'd files under ``_staging/<epoch>``."""
        tables = self._pending.get(epoch, [])
        for stale, action in sorted(self._unfinished.items()):
            self._finish(stale, action)
        epoch_dir = self._epoch_dir(epoch)
        # Leftovers of an earlier attempt at this (aborted, reused) epoch number.
        self._remove(epoch_dir)
        if not tables:
            return
        rows = pa.concat_tables(tables).combine_chunks()
        try:
            epoch_dir.mkdir(parents=True)
            for n, offset in enumerate(range(0, rows.num_rows, self.max_rows)):
                part = rows.slice(offset, self.max_rows)
                _write_durably(epoch_dir / part_name(epoch, n, self.extension), self._encode(part))
            _fsync_dir(epoch_dir)
            _fsync_dir(self.staging)
        except OSError as e:
            raise ConnectorError(f"sink {self.ctx.name}: staging epoch {epoch}: {e}") from e

    def commit(self, epoch: int) -> None:
        self._pending.pop(epoch, None)
        self._finish(epoch, "publish")

    def abort(self, epoch: int) -> None:
        """Delete the staged files; the rows go back to the buffer for the next checkpoint
        (the engine retries a failed checkpoint without replaying what it handed over)."""
        self._buffer[:0] = self._pending.pop(epoch, [])
        self._finish(epoch, "discard")

    def _finish(self, epoch: int, action: str) -> None:
        """Publish or discard a staged epoch, remembering it for a retry if that fails."""
        try:
            if action == "publish":
                self._publish(epoch)
            else:
                try:
                    self._remove(self._epoch_dir(epoch))
                except OSError as e:
                    raise ConnectorError(
                        f"sink {self.ctx.name}: discarding epoch {epoch}: {e}"
                    ) from e
        except ConnectorError:
            self._unfinished[epoch] = action
            raise
        self._unfinished.pop(epoch, None)

    def _publish(self, epoch: int) -> None:
        """Rename the staged parts into place; idempotent (parts already moved are skipped)."""
        epoch_dir = self._epoch_dir(epoch)
        if not epoch_dir.is_dir():
            return
        try:
            for part in sorted(epoch_dir.iterdir()):
                os.replace(part, self.path / part.name)
            _fsync_dir(self.path)
            self._remove(epoch_dir)
        except OSError as e:
            raise ConnectorError(f"sink {self.ctx.name}: publishing epoch {epoch}: {e}") from e

    @staticmethod
    def _remove(entry: Path) -> None:
        if entry.is_dir():
            shutil.rmtree(entry)
        elif entry.exists():
            entry.unlink()
