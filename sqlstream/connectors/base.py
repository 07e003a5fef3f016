"""The contract between the engine and connectors (DESIGN §7).

A source declares partitions and, per partition, an offset Postgres can store (JSON). The
engine, not the source, decides when offsets become durable: it calls :meth:`Source.seek`
with the offsets of the last checkpoint and then :meth:`Source.poll` repeatedly.

A sink receives changelog batches (the row's columns plus an optional ``__weight`` int64
column: +1 insert, -1 retraction; absent means all +1) and takes part in the checkpoint's
commit protocol: ``write`` during the epoch, ``pre_commit`` before the catalog transaction
commits (stage, or write inside that transaction), ``commit`` after it, ``recover`` at start.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from sqlstream.connectors.options import OptionSpec, validate_options
from sqlstream.errors import ConnectorError
from sqlstream.types import Schema, arrow_schema

WEIGHT = "__weight"


@dataclass(frozen=True)
class Format:
    """``FORMAT <format> ENCODE <encode> [(options)]``, lower-cased."""

    format: str = "plain"
    encode: str = "json"
    options: dict[str, str] = field(default_factory=dict)


@dataclass
class DeadLetter:
    """A record that could not be decoded; stored with the epoch that read it."""

    partition: str
    offset: Any
    raw: bytes
    reason: str


@dataclass
class SourceBatch:
    """What one poll returns: rows (matching the source schema), offsets reached, rejects."""

    data: pa.Table
    offsets: dict[str, Any]
    dead_letters: list[DeadLetter] = field(default_factory=list)


@dataclass(frozen=True)
class ConnectorContext:
    """Where a connector runs: its object name, the catalog DSN and the data directory."""

    name: str
    catalog_dsn: str
    data_dir: Path


class Source(ABC):
    """An append-only stream of rows from outside."""

    #: options this connector accepts (validated at CREATE SOURCE)
    options_spec: list[OptionSpec] = []

    def __init__(
        self, ctx: ConnectorContext, schema: Schema, options: dict[str, str], fmt: Format | None
    ) -> None:
        self.ctx = ctx
        self.schema = schema
        self.options = validate_options(self.options_spec, options, what=f"source {ctx.name}")
        self.format = fmt

    @abstractmethod
    def partitions(self) -> list[str]:
        """Names of the partitions; stable across restarts."""

    @abstractmethod
    def seek(self, offsets: dict[str, Any]) -> None:
        """Resume after ``offsets`` (partition -> offset); missing partitions start at the beginning."""

    @abstractmethod
    def poll(self, max_rows: int) -> SourceBatch | None:
        """Up to about ``max_rows`` rows available now, or None when there are none now."""

    def use_columns(self, names: set[str]) -> None:
        """The consumer reads only these columns; the others may come back as NULL.

        A generator skips producing what nobody reads (column pruning, as every streaming
        engine does at its scans). Called before the first ``poll``; the default reads all.
        """

    def freeze(self) -> None:
        """Fix the end of input at what is available now (``run --once``).

        After this, ``poll`` returns None for good once that input is read.
        """

    def finished(self) -> bool:
        """True when this source will never produce another row (bounded and fully read)."""
        return False

    def close(self) -> None:
        """Release connections and files."""


class Sink(ABC):
    """Continuous delivery of a changelog to an external system."""

    options_spec: list[OptionSpec] = []
    #: whether the sink delivers exactly once (stages or writes transactionally)
    exactly_once: bool = True
    #: whether the sink can take retractions (upsert by key, or print them)
    accepts_retractions: bool = False

    def __init__(
        self, ctx: ConnectorContext, schema: Schema, options: dict[str, str], fmt: Format | None
    ) -> None:
        self.ctx = ctx
        self.schema = schema
        self.options = validate_options(self.options_spec, options, what=f"sink {ctx.name}")
        self.format = fmt

    def open(self) -> None:
        """Connect / create targets. Called once before ``recover``."""

    def recover(self, committed_epoch: int | None) -> None:
        """Roll staged epochs <= ``committed_epoch`` forward and the others back."""

    @abstractmethod
    def write(self, changes: pa.Table) -> None:
        """Take a changelog batch of the current epoch."""

    def seal(self, epoch: int) -> None:
        """Set aside what was written since the last checkpoint as ``epoch``'s output.

        Called in the engine's thread as a checkpoint begins; what is written after it belongs
        to the next epoch. ``pre_commit`` and ``commit`` of ``epoch`` then run in the
        checkpoint committer's thread while the engine goes on (DESIGN §6).
        """

    def pre_commit(self, epoch: int, txn: psycopg.Connection) -> None:
        """Stage ``epoch``'s output (what ``seal`` set aside).

        ``txn`` is the open checkpoint transaction on the catalog database; a sink writing
        into that database writes its rows there, so they commit with the checkpoint.
        """

    def commit(self, epoch: int) -> None:
        """Publish ``epoch`` once the catalog has recorded it as committed."""

    def abort(self, epoch: int) -> None:
        """Throw away what was staged for ``epoch`` (the checkpoint transaction failed)."""

    def close(self) -> None:
        """Release connections and files."""


def normalize_changes(changes: pa.Table, schema: Schema, *, weighted: bool) -> pa.Table:
    """The sink's columns in schema order, cast to its Arrow types.

    ``weighted``: with a ``__weight`` column always (all +1 when absent); otherwise only the
    inserted rows (append-only sinks get retractions only under ``force_append_only``, and
    drop them).
    """
    target = arrow_schema(schema)
    missing = [n for n in target.names if n not in changes.column_names]
    if missing:
        raise ConnectorError(f"changes lack column(s) {', '.join(missing)}")
    has_weight = WEIGHT in changes.column_names
    if has_weight and not weighted:
        changes = changes.filter(pc.greater(changes[WEIGHT], 0))
    out = changes.select(target.names)
    if not out.schema.equals(target, check_metadata=False):
        out = out.cast(target)
    if weighted:
        weight = (
            changes[WEIGHT].cast(pa.int64())
            if has_weight
            else pa.array(np.ones(changes.num_rows, dtype=np.int64))
        )
        out = out.append_column(WEIGHT, weight)
    return out
