"""The logical plan of a continuous query: a tree of operators, each recording how it is
maintained incrementally.

Every node has output columns with *physical* names (unique within the node), whether its
output edge can retract (carries a ``__weight`` column), and which of its columns carry event
time (so windows and interval joins can drop state behind the watermark). Stateless steps
(filter, project, window assignment) are SQL over the input batch ``__in``; chains of them
are fused into one DuckDB statement (:func:`sqlstream.plan.fuse.fuse`).

Stateful nodes come in three kinds:

- :class:`Aggregate` keeps per-group accumulators (count, sum, min, ...) and folds each batch
  in: the cheap path for decomposable aggregates.
- :class:`Recompute` keeps its inputs (as multisets) and its output, keyed; for a batch it
  recomputes the output of the keys the batch touched with one DuckDB query and emits the
  difference. It maintains anything deterministic per key: joins of every kind, Top-N,
  DISTINCT, and aggregates that are not decomposable (DISTINCT aggregates, string_agg, min/max
  under retractions, ...).
- :class:`DeltaJoin` joins two append-only inputs by their deltas (new left rows against the
  right's state and vice versa) and drops rows behind the watermark for interval joins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sqlstream.types import Column


@dataclass(frozen=True)
class TimeColumn:
    """An output column carrying event time: the event time itself, or a window bound."""

    kind: str  # 'event' | 'window_start' | 'window_end'
    #: SQL interval added to a window_start to reach the window's end
    size_sql: str | None = None

    def end_sql(self, column_sql: str) -> str | None:
        """SQL giving the end of the window a row belongs to (None for plain event time)."""
        if self.kind == "window_end":
            return column_sql
        if self.kind == "window_start" and self.size_sql:
            return f"({column_sql} + {self.size_sql})"
        return None


@dataclass(eq=False)
class Node:
    columns: list[Column]
    retracting: bool
    inputs: list[Node] = field(default_factory=list)
    #: physical column -> event-time meaning
    times: dict[str, TimeColumn] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def label(self) -> str:
        return type(self).__name__


@dataclass(eq=False)
class Scan(Node):
    relation: str = ""
    kind: str = "source"  # 'source' | 'view'
    watermark_sql: str | None = None

    def label(self) -> str:
        wm = f"watermark {self.watermark_sql}" if self.watermark_sql else "no watermark"
        return f"Scan {self.relation} ({self.kind}, {wm})"


@dataclass(frozen=True)
class Hop:
    """A HOP window assignment: its time column (SQL), slide, size and origin (SQL)."""

    time_sql: str
    slide_sql: str
    size_sql: str
    origin_sql: str

    def windows_of(self, t: str) -> str:
        """SQL: the window starts of time ``t`` (a list; its filter is ``covers``)."""
        return (
            f"generate_series(time_bucket({self.slide_sql}, {t} - {self.size_sql}, "
            f"{self.origin_sql}), time_bucket({self.slide_sql}, {t}, {self.origin_sql}), "
            f"{self.slide_sql})"
        )

    def covers(self, start: str, t: str) -> str:
        """SQL: whether the window starting at ``start`` holds time ``t``."""
        return f"{start} + {self.size_sql} > {t}"


@dataclass(eq=False)
class Stateless(Node):
    """SQL over ``__in`` (carrying ``__weight`` through when the input retracts)."""

    sql: str = ""
    what: str = "Filter/Project"
    #: set on a HOP window assignment (an aggregate over it may fold in panes)
    hop: Hop | None = None
    #: a projection of plain columns, as (input column, output name): done on the Arrow
    #: batch, without DuckDB (unset once fused with another step)
    renames: list[tuple[str, str]] | None = None

    def label(self) -> str:
        if self.renames is not None:
            return f"{self.what} (columns selected from the batch, no DuckDB statement)"
        return f"{self.what} (one DuckDB statement per batch)"


@dataclass(eq=False)
class Accumulator:
    """One state column of an aggregate and how a batch's partial merges into it."""

    name: str
    duck_type: str
    partial_sql: str  # over the pre-projection of a batch
    merge_sql: str  # combines o.<name> (old) and p.<name> (partial); NULL-safe
    #: the aggregate combining many partials at once ('sum', 'min' or 'max')
    combine: str = "sum"
    #: a ``count(DISTINCT ...)``: its partial is the change in distinct values per group,
    #: which the operator derives from a :class:`Distinct` value table, not ``partial_sql``
    distinct: bool = False


@dataclass
class Distinct:
    """The values of one ``count(DISTINCT arg)`` argument per group, with a count per
    FILTER: ``members`` are (accumulator, FILTER column or None) sharing the argument."""

    arg: str  # pre-projected column
    arg_type: str
    members: list[tuple[str, str | None]] = field(default_factory=list)


@dataclass(eq=False)
class Aggregate(Node):
    """Per-group accumulators; ``pre_sql`` (over ``__in``) yields keys and arguments,
    ``project_sql`` (over state rows ``__st``) the output."""

    keys: list[tuple[str, str]] = field(default_factory=list)  # (state column, DuckDB type)
    accumulators: list[Accumulator] = field(default_factory=list)
    pre_sql: str = ""
    project_sql: str = ""
    window_end_sql: str | None = None  # over state rows (alias s)
    emit_on_window_close: bool = False
    calls: list[str] = field(default_factory=list)
    #: the stateless steps fused into ``pre_sql`` (see :mod:`sqlstream.plan.fuse`)
    fused: str | None = None
    distincts: list[Distinct] = field(default_factory=list)
    #: folded in panes of a HOP window (:mod:`sqlstream.plan.panes`): the SQL turning a
    #: batch's per-pane partials into per-window partials
    expand_sql: str | None = None
    #: what makes two aggregates the same fold (input, keys, accumulators, window bound)
    share_key: str | None = None
    #: the earlier aggregate whose state this one projects (:mod:`sqlstream.plan.share`)
    leader: Aggregate | None = None
    #: a GROUP BY without aggregate functions over append-only input, emitting on update:
    #: a group's row never changes once it exists, so the output is append-only (each
    #: group's row once, when it first appears)
    new_groups_only: bool = False
    #: keys kept as a truncated timestamp and formatted when projected (key -> format;
    #: :mod:`sqlstream.plan.group_keys`)
    formatted_keys: dict[str, str] = field(default_factory=dict)

    @property
    def is_global(self) -> bool:
        return not self.keys

    def label(self) -> str:
        keys = ", ".join(
            f"{k} (a {t}, formatted '{self.formatted_keys[k]}')" if k in self.formatted_keys else k
            for k, t in self.keys
        ) or "(global)"
        emit = "on window close" if self.emit_on_window_close else "on update"
        if self.new_groups_only:
            emit = "new groups (append-only)"
        state = f"state: {len(self.accumulators)} accumulators per group"
        if self.distincts:
            state += f", distinct values of {len(self.distincts)} argument(s)"
        if self.window_end_sql:
            state += ", dropped when the watermark passes the window end"
        fused = f" over {self.fused}" if self.fused else ""
        if self.leader is not None:
            state = "state: shared with the same aggregate above (computed once)"
        return (
            f"Aggregate keys=[{keys}] calls=[{', '.join(self.calls)}] emit={emit}{fused} [{state}]"
        )


def rank_pattern(rank_sql: str) -> re.Pattern[str]:
    """Where a ranking expression is used in a query: whole, not as the tail of another
    (``RANK() OVER (...)`` inside ``DENSE_RANK() OVER (...)``)."""
    return re.compile(r"(?<![\w.])" + re.escape(rank_sql))


@dataclass(eq=False)
class Recompute(Node):
    """Keyed recomputation (see the module docstring).

    ``key_sql[i]`` computes the key from a row of input i (over ``__in``); ``query_sql`` reads
    the inputs as ``__r0``, ``__r1``, ... (restricted to the touched keys) and yields the key
    columns ``__k0..`` followed by the output columns.
    """

    what: str = "Recompute"
    key_sql: list[list[str]] = field(default_factory=list)
    key_types: list[str] = field(default_factory=list)
    query_sql: str = ""
    #: index of the key column holding a window bound, and its end SQL (over key alias k)
    window_end_sql: str | None = None
    emit_on_window_close: bool = False
    #: Over: output column -> its ranking function (row_number, rank, dense_rank) over
    #: ``__in``, when every window function of the query level is one, all in one order
    ranking_sql: dict[str, str] = field(default_factory=dict)
    #: Top-N over append-only input: which input rows to keep per touched key (a condition
    #: over ``__in``, the stored input rows); the others can never rank high enough again,
    #: since nothing above them is ever deleted
    keep_sql: str | None = None
    #: every window function of the query ranks in the order ``keep_sql`` bounds (or the
    #: query is an ORDER BY ... LIMIT): every row ahead of a kept row is kept, so its ranks
    #: among the kept rows are its ranks among all, and the query over the kept rows alone
    #: is the query over all of them
    top_only: bool = False
    #: ``keep_sql`` is ``rank_sql <= n`` and ``rank_sql`` appears in ``query_sql``: the rank
    #: computed to decide what to keep is the query's, and the query over the kept rows
    #: reads it as a column (``RANK_COLUMN``) instead of ranking them again
    rank_sql: str | None = None
    #: ``rank_sql`` is the query's only window function: each output row follows from one
    #: input row and its rank, so the output's change is found from (row id, rank) pairs
    by_rank: bool = False

    def label(self) -> str:
        keys = len(self.key_types)
        state = "state: inputs and output, keyed" if keys else "state: inputs and output"
        if self.window_end_sql:
            state += ", dropped when the watermark passes the window end"
        if self.keep_sql:
            state = "state: the top rows only" + (", keyed" if keys else "")
        emit = " emit=on window close" if self.emit_on_window_close else ""
        by = f" by {keys} key column{'s' if keys != 1 else ''}" if keys else " (whole input)"
        return f"{self.what}, recomputed per key{by}{emit} [{state}]"


@dataclass(eq=False)
class DeltaJoin(Node):
    """Inner equi-join by deltas: ΔL ⋈ R + L' ⋈ ΔR; retracting when an input is (its sides
    then multisets, weights multiplied)."""

    left_keys: list[str] = field(default_factory=list)  # SQL over a left row (alias l)
    right_keys: list[str] = field(default_factory=list)  # SQL over a right row (alias r)
    select_sql: str = ""  # output columns over l and r
    residual_sql: str | None = None
    #: per side, SQL over that side's rows (alias s) giving the event time, in epoch
    #: microseconds, after which the row can no longer match (dropped once the other side's
    #: watermark passes it)
    expiry_sql: list[str | None] = field(default_factory=lambda: [None, None])
    #: whether that expiry is the end of the windows the join key names (else an interval)
    by_window: bool = False

    def label(self) -> str:
        if self.retracting:
            kinds = ["multiset" if i.retracting else "log" for i in self.inputs]
            state = (
                "state: both inputs as multisets"
                if kinds == ["multiset", "multiset"]
                else f"state: left as a {kinds[0]}, right as a {kinds[1]}"
            )
            if all(self.expiry_sql):
                state += ", dropped once the watermark closes their windows"
            elif any(self.expiry_sql):
                side = "left" if self.expiry_sql[0] else "right"
                state += f", the {side} one's dropped once the watermark closes their windows"
            return f"DeltaJoin (inner join of retracting inputs, weights multiplied) [{state}]"
        kind = "interval join" if any(self.expiry_sql) and not self.by_window else "inner join"
        state = "state: both inputs"
        if self.by_window:
            state += ", dropped once the watermark closes their windows"
        elif any(self.expiry_sql):
            state += ", rows dropped once the watermark passes the interval"
        return f"DeltaJoin ({kind} of append-only inputs) [{state}]"


@dataclass(eq=False)
class TemporalJoin(Node):
    """A stream looks up the current rows of a table-like input (FOR SYSTEM_TIME AS OF
    PROCTIME()): output append-only; changes of the table do not revise earlier output."""

    left_keys: list[str] = field(default_factory=list)
    right_keys: list[str] = field(default_factory=list)
    select_sql: str = ""
    residual_sql: str | None = None
    outer: bool = False

    def label(self) -> str:
        kind = "left outer" if self.outer else "inner"
        return f"TemporalJoin ({kind} lookup) [state: the lookup side, keyed]"


@dataclass(eq=False)
class Union(Node):
    """UNION ALL: each input's batches pass through (aligned to the first input's names)."""

    def label(self) -> str:
        return f"Union of {len(self.inputs)} inputs"


@dataclass(eq=False)
class QueryPlan:
    name: str
    root: Node
    fingerprint: str = ""

    @property
    def schema(self) -> list[Column]:
        return self.root.columns

    @property
    def retracting(self) -> bool:
        return self.root.retracting

    def scans(self) -> list[Scan]:
        out: list[Scan] = []

        def walk(n: Node) -> None:
            if isinstance(n, Scan):
                out.append(n)
            for i in n.inputs:
                walk(i)

        walk(self.root)
        return out
