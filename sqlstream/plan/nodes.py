"""The logical plan of one continuous query, with the decisions of how it is maintained.

A plan is a short pipeline, read bottom-up as EXPLAIN prints it::

    Scan(source) -> WindowAssign? -> Filter/Project (one fused DuckDB statement)
                 -> Aggregate? -> Project (over the aggregate's state)

Each node records what the incremental engine needs: whether its output can retract, which
state it keeps, and when that state can be dropped (watermarks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlstream.types import Schema


@dataclass
class Scan:
    source: str
    alias: str
    schema: Schema
    append_only: bool
    #: the source's ``WATERMARK FOR`` column and expression (DuckDB SQL), if any
    watermark_column: str | None = None
    watermark_sql: str | None = None


@dataclass
class WindowAssign:
    kind: str  # 'tumble'
    time_column: str
    size_sql: str  # a DuckDB interval literal
    size_us: int
    time_type: str  # 'timestamp' | 'timestamptz'


@dataclass
class Stateless:
    """Filter and project fused into one DuckDB statement over the input batch ``__in``."""

    sql: str
    filter_sql: str | None
    output: list[str]


@dataclass
class Accumulator:
    """One state column of an aggregate and how a batch's partial merges into it."""

    name: str
    duck_type: str
    partial_sql: str  # over the pre-projection of a batch
    merge_sql: str  # combines o.<name> (old) and p.<name> (partial); NULL-safe


@dataclass
class Aggregate:
    keys: list[tuple[str, str]]  # (state column, DuckDB type)
    accumulators: list[Accumulator]
    #: SQL over the state row (alias s) giving the window end, for cleanup and emission
    window_end_sql: str | None
    emit_on_window_close: bool
    describe: list[str] = field(default_factory=list)  # the aggregate calls, for EXPLAIN

    @property
    def is_global(self) -> bool:
        return not self.keys


@dataclass
class Project:
    """The query's output computed over aggregate state rows (alias ``s``), HAVING applied."""

    sql: str


@dataclass
class QueryPlan:
    name: str
    scan: Scan
    window: WindowAssign | None
    stateless: Stateless
    aggregate: Aggregate | None
    project: Project | None
    schema: Schema
    #: whether the output edge carries retractions (weights)
    retracting: bool
    fingerprint: str = ""
