"""From a bound query to a :class:`~sqlstream.plan.nodes.QueryPlan`: a tree of incremental
operators, each with the decisions of how it is maintained.

The planner walks the query the way SQL evaluates it — FROM (scans, windows, subqueries,
CTEs, joins), WHERE, GROUP BY/aggregates or window functions, the select list, DISTINCT,
ORDER BY ... LIMIT, UNION — and picks for each step the cheapest operator that stays exact:

- filters, projections and window assignment are stateless SQL, fused per query level;
- aggregates are folded into accumulators when they can be (:mod:`.aggregates`), and
  recomputed per touched group otherwise;
- an inner join of two append-only inputs is a delta join; a lookup ``FOR SYSTEM_TIME AS OF
  PROCTIME()`` a temporal join; every other join, Top-N and DISTINCT are recomputed per
  touched key.

Anything it cannot maintain exactly is refused here with SQLSTATE 0A000, naming the
construct — never accepted and later wrong.

>>> from sqlstream.types import Column
>>> src = RelationInfo("bids", [Column("auction", "bigint"), Column("price", "bigint")])
>>> q = sqlglot.parse_one('SELECT "bids"."auction" AS "auction", count(*) AS "count" '
...                       'FROM "bids" AS "bids" GROUP BY "bids"."auction"', read="postgres")
>>> p = plan_query("v", q, lambda n: src)
>>> type(p.root).__name__, [k for k, _ in p.root.keys], p.retracting
('Aggregate', ['auction'], True)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb
import sqlglot
from sqlglot import exp
from sqlglot.optimizer.pushdown_projections import pushdown_projections
from sqlglot.optimizer.unnest_subqueries import unnest_subqueries

from sqlstream.errors import FeatureNotSupported
from sqlstream.plan.aggregates import (
    FOLDABLE,
    NONDETERMINISTIC,
    accumulators,
    add_counts,
    deterministic,
    distinct_args,
    foldable,
    is_distinct,
    unwrap,
)
from sqlstream.plan.group_keys import format_key, truncated_time_key
from sqlstream.plan.intervals import epoch_us_sql
from sqlstream.plan.nodes import (
    Accumulator,
    Aggregate,
    DeltaJoin,
    Distinct,
    Hop,
    Node,
    QueryPlan,
    Recompute,
    Scan,
    Stateless,
    TemporalJoin,
    TimeColumn,
    Union,
    rank_pattern,
)
from sqlstream.plan.panes import expand_sql, pane_assign_sql, pane_width_us
from sqlstream.plan.scope import D, Rel, compile_expr, q, references
from sqlstream.plan.share import share_aggregates
from sqlstream.state.table import ROW_ID, STATE_LAYOUT
from sqlstream.types import Column, Schema, duckdb_type, from_duckdb

_NONDETERMINISTIC_FUNCS = {
    "random", "rand", "now", "current_timestamp", "gen_random_uuid", "uuid", "clock_timestamp",
    "statement_timestamp", "transaction_timestamp", "localtimestamp", "current_time",
    "current_date", "proctime",
}  # fmt: skip


@dataclass
class RelationInfo:
    """What the planner needs to know about a relation a query reads."""

    name: str
    schema: Schema
    kind: str = "source"  # 'source' | 'view'
    retracting: bool = False
    watermark_column: str | None = None
    watermark_sql: str | None = None  # DuckDB SQL over the relation's columns
    times: dict[str, TimeColumn] = field(default_factory=dict)


def _refuse(what: str) -> FeatureNotSupported:
    return FeatureNotSupported(f"{what} is not supported in a continuous query")


# -- types by running SQL over no rows ---------------------------------------------------------


def _empty(columns: list[Column], weighted: bool = False, extra: list[tuple[str, str]] = ()) -> str:
    cols = [f"NULL::{t} AS {q(n)}" for n, t in extra]
    cols += [f"NULL::{duckdb_type(c.type)} AS {q(c.name)}" for c in columns]
    if weighted:
        cols.append("NULL::BIGINT AS __weight")
    return f"(SELECT {', '.join(cols) or 'NULL AS __none'} LIMIT 0)"


def _substitute(sql: str, relations: dict[str, str]) -> str:
    """Replace relation tokens (``__in``, ``__r0``, ``__st``) by subqueries; ``__in`` stays
    the alias, as expressions refer to ``"__in"."col"``."""
    for token, replacement in relations.items():
        if token == "__in":
            sql = re.sub(r"\bFROM __in\b", lambda _, r=replacement: f"FROM {r} AS __in", sql)
        else:
            sql = re.sub(rf"\b{token}\b", lambda _, r=replacement: r, sql)
    return sql


def describe(sql: str, relations: dict[str, str]) -> list[Column]:
    """Output columns of ``sql`` over empty inputs (key and weight columns left out)."""
    rel = duckdb.sql(_substitute(sql, relations))
    return [
        Column(n, from_duckdb(str(t)))
        for n, t in zip(rel.columns, rel.types, strict=True)
        if n != "__weight" and not re.fullmatch(r"__k\d+", n)
    ]


def _duck_types(sql: str, relations: dict[str, str]) -> dict[str, str]:
    rel = duckdb.sql(_substitute(sql, relations))
    return dict(zip(rel.columns, [str(t) for t in rel.types], strict=True))


# -- the planner -----------------------------------------------------------------------------


class Planner:
    def __init__(
        self, name: str, resolve: Callable[[str], RelationInfo], emit_on_window_close: bool
    ) -> None:
        self.name = name
        self.resolve = resolve
        self.eowc = emit_on_window_close
        self.ctes: dict[str, exp.Expression] = {}
        #: the columns the query reads anywhere, as (table alias, name), and the names read
        #: unqualified (see ``_read_only``)
        self.reads: set[tuple[str, str]] | None = None
        self.reads_unqualified: set[str] = set()

    # -- query expressions ---------------------------------------------------------------

    def query(self, node: exp.Expression) -> Node:
        if isinstance(node, exp.Subquery):
            return self.query(node.this)
        if isinstance(node, exp.Union):
            return self.union(node)
        if isinstance(node, exp.Select):
            return self.select(node)
        raise _refuse(type(node).__name__.upper())

    def union(self, node: exp.Union) -> Node:
        if isinstance(node, exp.Intersect | exp.Except):
            raise _refuse(node.key.upper())
        left, right = self.query(node.this), self.query(node.expression)
        if len(left.columns) != len(right.columns):
            raise FeatureNotSupported("each UNION query must have the same number of columns")
        out: Node = Union(
            left.columns,
            left.retracting or right.retracting,
            [left, right],
            {n: t for n, t in left.times.items()},
        )
        if node.args.get("distinct"):
            out = self.distinct(out)
        return out

    def select(self, sel: exp.Select) -> Node:
        for cte in (sel.args.get("with_") or exp.With()).expressions:
            self.ctes[cte.alias_or_name] = cte.this
        for arg, what in [("qualify", "QUALIFY"), ("windows", "WINDOW clauses")]:
            if sel.args.get(arg):
                raise _refuse(what)
        rel, where = self.from_(sel)
        if where is not None:
            topn = self._topn_filter(rel, where)
            rel = topn or self._filter(rel, where)
        calls = [a for e in sel.expressions for a in _aggregates(e)]
        having = sel.args.get("having")
        if having is not None:
            calls += _aggregates(having.this)
        windows = [w for e in sel.expressions for w in e.find_all(exp.Window)]
        distinct = sel.args.get("distinct")
        if (
            distinct is not None
            and not distinct.args.get("on")
            and not (sel.args.get("group") or calls or windows or self.eowc)
            and not rel.node.retracting
            and not any(isinstance(e, exp.Star) for e in sel.expressions)
        ):
            # over append-only input, DISTINCT is a GROUP BY of the select list, whose
            # output is append-only (each row once, when it first appears)
            sel = sel.copy()
            sel.set("distinct", None)
            sel.set("group", exp.Group(expressions=[e.unalias().copy() for e in sel.expressions]))
        if sel.args.get("group") or calls:
            if windows:
                raise _refuse("a window function over an aggregate in the same query level")
            node = self.aggregate(rel, sel, calls)
        elif windows:
            node = self.over(rel, sel, windows)
        else:
            if self.eowc:
                raise FeatureNotSupported("EMIT ON WINDOW CLOSE needs a windowed GROUP BY")
            node = self.project(rel, sel)
        if sel.args.get("distinct"):
            node = self.distinct(node)
        order, limit = sel.args.get("order"), sel.args.get("limit")
        if limit is not None or sel.args.get("offset") is not None:
            if order is None:
                raise FeatureNotSupported(
                    "LIMIT without ORDER BY picks arbitrary rows, which a view cannot maintain"
                )
            node = self.top_n(node, sel, order, limit, sel.args.get("offset"))
        return node

    # -- FROM ----------------------------------------------------------------------------

    def from_(self, sel: exp.Select) -> tuple[Rel, exp.Expression | None]:
        """The FROM clause's relation, and what is left of the WHERE condition.

        When every join is inner, WHERE conditions over two sides become that join's ON
        condition (``FROM a, b WHERE a.id = b.id`` is the equi-join it means, not a cross
        join filtered afterwards). Under an outer join they stay where they are: there a WHERE
        condition also removes NULL-padded rows, which an ON condition would not.
        """
        source = sel.args.get("from_")
        if source is None:
            raise _refuse("a query without FROM")
        where = sel.args.get("where")
        rest = _conjuncts(where.this) if where is not None else []
        joins = sel.args.get("joins") or []
        inner = all((j.side or "") == "" and (j.kind or "").lower() in ("", "inner", "cross") for j in joins)
        rel = self.table(source.this)
        for join in joins:
            if inner and rest and not join.this.args.get("version"):
                join, rest = _push_into_join(join, rel.aliases, rest)
            rel = self.join(rel, join)
        return rel, exp.and_(*rest) if rest else None

    def table(self, t: exp.Expression) -> Rel:
        if isinstance(t, exp.Subquery):
            node = self.query(t.this)
            return Rel(node, {(t.alias_or_name, c): c for c in node.names})
        if not isinstance(t, exp.Table):
            raise _refuse(f"FROM {t.sql('postgres')[:60]}")
        alias = t.alias_or_name
        if isinstance(t.this, exp.Anonymous):
            return self.window(t.this, alias)
        if not isinstance(t.this, exp.Identifier):
            raise _refuse(f"FROM {t.sql('postgres')[:60]}")
        name = t.name
        if name in self.ctes and not t.args.get("db"):
            node = self.query(self.ctes[name])
            return Rel(node, {(alias, c): c for c in node.names})
        return self.scan(name, alias)

    def scan(self, name: str, alias: str) -> Rel:
        info = self.resolve(name)
        times = dict(info.times)
        if info.watermark_column:
            times[info.watermark_column] = TimeColumn("event")
        node = Scan(
            list(info.schema), info.retracting, [], times,
            relation=info.name, kind=info.kind, watermark_sql=info.watermark_sql,
        )  # fmt: skip
        return Rel(node, {(alias, c.name): c.name for c in info.schema})

    def window(self, func: exp.Anonymous, alias: str) -> Rel:
        kind = func.name.lower()
        args = func.expressions
        if kind not in ("tumble", "hop") or len(args) != (3 if kind == "tumble" else 4):
            raise FeatureNotSupported(
                "window functions in FROM are TUMBLE(relation, time_column, size) and "
                "HOP(relation, time_column, slide, size)"
            )
        base = self.scan(args[0].name, alias)
        col = args[1].name
        types = {c.name: c.type for c in base.node.columns}
        if types.get(col) not in ("timestamp", "timestamptz"):
            raise FeatureNotSupported(f'{kind.upper()} needs a timestamp column, "{col}" is not one')
        size = args[-1].sql(D)
        origin = (
            "TIMESTAMPTZ '1970-01-01 00:00:00+00'"
            if types[col] == "timestamptz"
            else "TIMESTAMP '1970-01-01 00:00:00'"
        )
        tc = q(col)
        # Windows align to the Unix epoch, as in RisingWave and Flink (DuckDB's default
        # origin for time_bucket is 2000-01-03).
        if kind == "tumble":
            start = f"time_bucket({size}, {tc}, {origin})"
            sql = f"SELECT *, {start} AS window_start, {start} + {size} AS window_end FROM __in"
            hop = None
        else:
            slide = args[2].sql(D)
            _positive(slide)
            hop = Hop(tc, slide, size, origin)
            sql = (
                "SELECT * EXCLUDE (__ws), __ws AS window_start, __ws + " + size + " AS window_end "
                f"FROM (SELECT *, unnest({hop.windows_of(tc)}) AS __ws FROM __in) "
                f"WHERE {hop.covers('__ws', tc)}"
            )
        _positive(size)
        node = Stateless(
            base.node.columns + [Column("window_start", types[col]), Column("window_end", types[col])],
            base.node.retracting,
            [base.node],
            {
                **base.node.times,
                "window_start": TimeColumn("window_start", size),
                "window_end": TimeColumn("window_end"),
            },
            sql=sql,
            what=f"WindowAssign {kind.upper()}({col}, {size}"
            + (f", slide {args[2].sql(D)})" if kind == "hop" else ")"),
            hop=hop,
        )
        bindings = dict(base.bindings)
        bindings[(alias, "window_start")] = "window_start"
        bindings[(alias, "window_end")] = "window_end"
        return Rel(node, bindings)

    # -- joins ---------------------------------------------------------------------------

    def join(self, left: Rel, join: exp.Join) -> Rel:
        right_table = join.this
        temporal = isinstance(right_table, exp.Table) and right_table.args.get("version")
        if temporal:
            right_table = right_table.copy()
            right_table.set("version", None)
        right = self.table(right_table)
        side = (join.side or "").lower()
        kind = (join.kind or "").lower()
        if kind in ("semi", "anti", "natural", "asof") or join.args.get("using"):
            raise _refuse(f"{kind.upper() or 'USING'} joins")
        if kind == "cross":
            side = ""
        on = join.args.get("on")
        conjuncts = _conjuncts(on) if on is not None else []
        lkeys, rkeys, residual = [], [], []
        la, ra = left.aliases, right.aliases
        for c in conjuncts:
            if isinstance(c, exp.EQ):
                lr, rr = references(c.this), references(c.expression)
                if lr and rr and lr <= la and rr <= ra:
                    lkeys.append(c.this)
                    rkeys.append(c.expression)
                    continue
                if lr and rr and lr <= ra and rr <= la:
                    lkeys.append(c.expression)
                    rkeys.append(c.this)
                    continue
            residual.append(c)
        if side == "" and not temporal:
            # a condition on one side of an inner join filters that side before it is joined
            # (and kept as join state)
            left, right, residual = _filter_sides(self, left, right, residual)
        left, right = self._read_only(left), self._read_only(right)

        # Output columns: the left's, then the right's (renamed where a name repeats).
        names = list(left.node.names)
        right_phys: dict[str, str] = {}
        for c in right.node.names:
            n = c
            i = 1
            while n in names:
                n = f"{c}_{i}"
                i += 1
            names.append(n)
            right_phys[c] = n
        bindings = dict(left.bindings)
        bindings.update({k: right_phys[v] for k, v in right.bindings.items()})
        times = dict(left.node.times)
        times.update({right_phys[c]: t for c, t in right.node.times.items()})
        def both(expr: exp.Expression, lt: str, rt: str) -> str:
            """An expression over a joined row: left columns from lt, right ones from rt."""

            def rewrite(node: exp.Expression) -> exp.Expression:
                if isinstance(node, exp.Column) and not isinstance(node.this, exp.Star):
                    if node.table in la or (not node.table and left.physical(node)):
                        return exp.column(left.physical(node), table=lt, quoted=True)
                    return exp.column(right.physical(node), table=rt, quoted=True)
                return node

            return expr.copy().transform(rewrite).sql(D)

        select_cols = [f"l.{q(c)} AS {q(c)}" for c in left.node.names] + [
            f"r.{q(c)} AS {q(right_phys[c])}" for c in right.node.names
        ]
        residual_sql = " AND ".join(both(c, "l", "r") for c in residual) or None
        columns = [Column(n, c.type) for n, c in zip(names, left.node.columns + right.node.columns, strict=True)]

        if temporal:
            if side not in ("", "left") or not lkeys:
                raise FeatureNotSupported(
                    "a temporal join (FOR SYSTEM_TIME AS OF PROCTIME()) is an inner or left "
                    "join on equality conditions"
                )
            if left.node.retracting:
                raise FeatureNotSupported(
                    "a temporal join needs an append-only stream on its left side"
                )
            node: Node = TemporalJoin(
                columns, False, [left.node, right.node], dict(left.node.times),
                left_keys=[compile_expr(k, left, "__in") for k in lkeys],
                right_keys=[compile_expr(k, right, "__in") for k in rkeys],
                select_sql=", ".join(select_cols), residual_sql=residual_sql, outer=side == "left",
            )  # fmt: skip
            return Rel(node, bindings)

        if side == "" and lkeys:
            retracting = left.node.retracting or right.node.retracting
            # State is dropped once no new row, and no change of a stored row, can meet it:
            # by a window key (a closed window gets no more rows or changes on either side,
            # append-only or not: rows behind the watermark are dropped as late), else
            # by an interval condition over event times (of append-only sides) and window
            # bounds (of retracting ones).
            expiry = _window_expiry(lkeys, rkeys, left, right)
            by_window = expiry != [None, None]
            if not by_window:
                expiry = _expiry(residual, left, right, la)
            node = DeltaJoin(
                columns, retracting, [left.node, right.node], times,
                left_keys=[compile_expr(k, left, "__in") for k in lkeys],
                right_keys=[compile_expr(k, right, "__in") for k in rkeys],
                select_sql=", ".join(select_cols), residual_sql=residual_sql,
                expiry_sql=expiry, by_window=by_window,
            )  # fmt: skip
            return Rel(node, bindings)

        # Every other join: recomputed per join key.
        nkeys = len(lkeys)
        key_of = {"": "l", "left": "l", "right": "r"}.get(side)
        key_cols = [
            f"{key_of}.__k{i}" if key_of else f"coalesce(l.__k{i}, r.__k{i})" for i in range(nkeys)
        ]
        on_sql = " AND ".join(
            [f"l.__k{i} = r.__k{i}" for i in range(nkeys)] + ([residual_sql] if residual_sql else [])
        ) or "TRUE"
        join_sql = {"": "JOIN", "left": "LEFT JOIN", "right": "RIGHT JOIN", "full": "FULL JOIN"}[side]
        query = (
            f"SELECT {', '.join(f'{k} AS __k{i}' for i, k in enumerate(key_cols))}"
            f"{', ' if key_cols else ''}{', '.join(select_cols)} "
            f"FROM __r0 AS l {join_sql} __r1 AS r ON {on_sql}"
        )
        key_sql = [
            [compile_expr(k, left, "__in") for k in lkeys],
            [compile_expr(k, right, "__in") for k in rkeys],
        ]
        node = Recompute(
            columns, True, [left.node, right.node], times,
            what=f"Join {join_sql.replace(' JOIN', '').replace('JOIN', 'INNER')}",
            key_sql=key_sql, key_types=_key_types(key_sql, [left.node, right.node]),
            query_sql=query,
        )  # fmt: skip
        return Rel(node, bindings)

    def _read_only(self, rel: Rel) -> Rel:
        """A join side cut to the columns the query reads, so the join stores no others
        (Nexmark q7 keeps every bid for its window: 4 columns instead of 7, +11 %).

        Deliberately coarse, so that it can only keep too much: a column counts as read if
        its alias and name are read anywhere in the query, in any scope, or its name is read
        unqualified."""
        if self.reads is None:
            return rel
        read = {
            p
            for (alias, name), p in rel.bindings.items()
            if (alias, name) in self.reads or name in self.reads_unqualified
        }
        keep = [c for c in rel.node.columns if c.name in read] or rel.node.columns[:1]
        if len(keep) == len(rel.node.columns):
            return rel
        kept = {c.name for c in keep}
        weight = ", __weight" if rel.node.retracting else ""
        node = Stateless(
            keep, rel.node.retracting, [rel.node],
            {c: t for c, t in rel.node.times.items() if c in kept},
            sql=f"SELECT {', '.join(q(c.name) for c in keep)}{weight} FROM __in",
            what="Project", renames=[(c.name, c.name) for c in keep],
        )  # fmt: skip
        return Rel(node, {k: p for k, p in rel.bindings.items() if p in kept})

    # -- WHERE, projections --------------------------------------------------------------

    def _filter(self, rel: Rel, cond: exp.Expression) -> Rel:
        _check_expr(cond)
        node = Stateless(
            rel.node.columns, rel.node.retracting, [rel.node], dict(rel.node.times),
            sql=f"SELECT * FROM __in WHERE {compile_expr(cond, rel)}", what="Filter",
        )  # fmt: skip
        return Rel(node, rel.bindings)

    def project(self, rel: Rel, sel: exp.Select) -> Node:
        cols = []
        times = {}
        for e in sel.expressions:
            _check_expr(e)
            name = e.alias_or_name
            inner = e.unalias()
            cols.append(f"{compile_expr(inner, rel)} AS {q(name)}")
            if isinstance(inner, exp.Column):
                phys = rel.physical(inner)
                if phys in rel.node.times:
                    times[name] = rel.node.times[phys]
        weight = ", __weight" if rel.node.retracting else ""
        sql = f"SELECT {', '.join(cols)}{weight} FROM __in"
        columns = describe(sql, {"__in": _empty(rel.node.columns, rel.node.retracting)})
        plain = [e.unalias() for e in sel.expressions]
        renames = None
        if all(isinstance(e, exp.Column) and rel.physical(e) for e in plain):
            renames = [
                (rel.physical(e), e2.alias_or_name)  # type: ignore[misc]
                for e, e2 in zip(plain, sel.expressions, strict=True)
            ]
        return Stateless(
            columns, rel.node.retracting, [rel.node], times, sql=sql, what="Project",
            renames=renames,
        )  # fmt: skip

    # -- aggregates ----------------------------------------------------------------------

    def aggregate(self, rel: Rel, sel: exp.Select, calls: list[exp.Expression]) -> Node:
        group = sel.args.get("group")
        key_exprs = list(group.expressions) if group else []
        for e in [*sel.expressions, *key_exprs]:
            _check_expr(e)
        for c in calls:
            inner, _ = unwrap(c)
            if isinstance(inner, NONDETERMINISTIC):
                raise FeatureNotSupported(
                    f"{inner.sql('postgres')} depends on the order rows arrive in; a view "
                    "cannot maintain it"
                )
        if foldable(calls, rel.node.retracting):
            return self._fold(rel, sel, key_exprs, calls)
        return self._recompute_aggregate(rel, sel, key_exprs)

    def _window_key(self, rel: Rel, key: exp.Expression) -> TimeColumn | None:
        if isinstance(key, exp.Column):
            phys = rel.physical(key)
            t = rel.node.times.get(phys) if phys else None
            if t and t.kind in ("window_start", "window_end"):
                return t
        return None

    def _fold(
        self, rel: Rel, sel: exp.Select, key_exprs: list[exp.Expression], calls: list[exp.Expression]
    ) -> Node:
        weighted = rel.node.retracting
        keys: list[tuple[str, exp.Expression]] = []
        used: set[str] = set()
        for i, k in enumerate(key_exprs):
            base = k.name if isinstance(k, exp.Column) else f"key{i}"
            kname = base if base not in used and not base.startswith("_") else f"{base}_{i}"
            used.add(kname)
            keys.append((kname, k))
        key_by_sql = {k.sql(D): kname for kname, k in keys}
        empty_in = {"__in": _empty(rel.node.columns, weighted)}

        def type_of(e: exp.Expression) -> str:
            return _duck_types(f"SELECT {compile_expr(e, rel)} AS t FROM __in", empty_in)["t"]

        # keys grouped by a cheaper form of themselves (a truncated timestamp for a date
        # string), formatted when the state is projected
        formatted: dict[str, str] = {}
        pre_cols = []
        for kname, k in keys:
            cheaper = truncated_time_key(k, type_of)
            if cheaper:
                k, formatted[kname] = cheaper
            pre_cols.append(f"{compile_expr(k, rel)} AS {q(kname)}")
        accs = [
            Accumulator(
                "_rows", "BIGINT", "sum(__weight)" if weighted else "count(*)",
                'coalesce(o."_rows", 0) + coalesce(p."_rows", 0)',
            )
        ]  # fmt: skip
        finals: dict[str, str] = {}
        described: list[str] = []
        distinct_by_arg: dict[str, Distinct] = {}
        # Calls share what they compute alike: avg(x) and sum(x) one argument column and one
        # sum and count of it, three FILTERs on the same condition one condition column.
        args: dict[str, tuple[str, str]] = {}  # argument SQL -> (column, type)
        conds: dict[str, str] = {}  # FILTER SQL -> column
        by_partial: dict[tuple[str, str, str], str] = {}  # (partial, type, combine) -> name
        for call in calls:
            text = call.sql(D)
            if text in finals:
                continue
            i = len(finals)
            inner, cond = unwrap(call)
            arg = arg_type = cond_col = None
            arg_expr = distinct_args(inner)[0] if is_distinct(inner) else inner.this
            if not isinstance(arg_expr, exp.Star) and arg_expr is not None:
                arg_sql = compile_expr(arg_expr, rel)
                if arg_sql not in args:
                    args[arg_sql] = (
                        f"__a{i}",
                        _duck_types(f"SELECT {arg_sql} AS t FROM __in", empty_in)["t"],
                    )
                    pre_cols.append(f"{arg_sql} AS __a{i}")
                arg, arg_type = args[arg_sql]
            if cond is not None:
                cond_sql = compile_expr(cond, rel)
                if cond_sql not in conds:
                    conds[cond_sql] = f"__c{i}"
                    pre_cols.append(f"{cond_sql} AS __c{i}")
                cond_col = conds[cond_sql]
            if is_distinct(inner):
                # one value table per argument, whatever the FILTERs
                assert arg is not None and arg_type is not None
                name = f"_count_distinct{i}"
                spec = distinct_by_arg.get(arg_sql)
                if spec is None:
                    spec = distinct_by_arg[arg_sql] = Distinct(arg, arg_type)
                spec.members.append((name, cond_col))
                accs.append(Accumulator(name, "BIGINT", "", add_counts(name), distinct=True))
                finals[text] = q(name)
                described.append(_plain(call))
                continue
            new, final = accumulators(inner, i, arg, cond_col, arg_type, weighted=weighted)
            for a in new:
                same = by_partial.setdefault((a.partial_sql, a.duck_type, a.combine), a.name)
                if same == a.name:
                    accs.append(a)
                else:  # names are "_<kind><call index>", unique as quoted identifiers
                    final = final.replace(q(a.name), q(same))
            finals[text] = final
            described.append(_plain(call))
        if weighted:
            pre_cols.append("__weight")
        pre_sql = f"SELECT {', '.join(pre_cols) or 'TRUE AS __none'} FROM __in"
        key_types = _duck_types(pre_sql, empty_in)

        def over_state(node: exp.Expression) -> exp.Expression:
            if isinstance(node, (*FOLDABLE, exp.Filter)) and node.sql(D) in finals:
                return sqlglot.parse_one(finals[node.sql(D)], read=D)
            kname = key_by_sql.get(node.sql(D)) if not isinstance(node, exp.Literal) else None
            if kname:
                column = exp.column(kname, quoted=True)
                return format_key(column, formatted[kname]) if kname in formatted else column
            return node

        def rewrite(e: exp.Expression) -> str:
            out = e.copy().transform(over_state)
            for col in out.find_all(exp.Column):
                if col.table:
                    raise FeatureNotSupported(
                        f'column "{col.name}" must appear in the GROUP BY clause or be used in '
                        "an aggregate function"
                    )
            return out.sql(D)

        names = [e.alias_or_name for e in sel.expressions]
        project = f"SELECT {', '.join(f'{rewrite(e.unalias())} AS {q(n)}' for e, n in zip(sel.expressions, names, strict=True))} FROM __st AS s"
        having = sel.args.get("having")
        if having is not None:
            project += f" WHERE {rewrite(having.this)}"
        window_end = None
        times = {}
        for kname, k in keys:
            t = self._window_key(rel, k)
            if t and window_end is None and t.end_sql(f"s.{q(kname)}"):
                window_end = t.end_sql(f"s.{q(kname)}")
        for e, n in zip(sel.expressions, names, strict=True):
            kname = key_by_sql.get(e.unalias().sql(D))
            if kname:
                t = self._window_key(rel, dict(keys)[kname])
                if t:
                    times[n] = t
        self._check_eowc(window_end)
        state_cols = [(k, key_types[k]) for k, _ in keys] + [(a.name, a.duck_type) for a in accs]
        columns = describe(project, {"__st": _empty([], False, state_cols)})
        # no aggregate function and no retractions: a group's row is fixed once it exists
        new_groups_only = bool(not calls and keys and not weighted and not self.eowc)
        node = Aggregate(
            columns, not self.eowc and not new_groups_only, [rel.node], times,
            keys=[(k, key_types[k]) for k, _ in keys], accumulators=accs, pre_sql=pre_sql,
            project_sql=project, window_end_sql=window_end if _has_watermark(rel) else None,
            emit_on_window_close=self.eowc, calls=described,
            distincts=list(distinct_by_arg.values()), new_groups_only=new_groups_only,
            formatted_keys=formatted,
        )  # fmt: skip
        if not distinct_by_arg:
            self._fold_in_panes(node, rel, keys, calls)
        node.share_key = "\n".join(
            [
                _fingerprint_text(node.inputs[0]),
                *sorted(pre_cols),  # keys and arguments, each with its SQL
                *(f"{a.name} {a.duck_type} {a.partial_sql} {a.merge_sql}" for a in accs),
                str(node.window_end_sql),
            ]
        )
        return node

    def _fold_in_panes(
        self,
        node: Aggregate,
        rel: Rel,
        keys: list[tuple[str, exp.Expression]],
        calls: list[exp.Expression],
    ) -> None:
        """Fold an aggregate directly over a HOP window in panes, where that gives the same
        result (:mod:`sqlstream.plan.panes`): its input becomes the pane assignment."""
        hop = rel.node.hop if isinstance(rel.node, Stateless) else None
        width = pane_width_us(hop) if hop is not None else None
        if hop is None or width is None:
            return
        # the bounds this HOP adds (its last two columns), not window bounds of the relation
        # it reads (a view's window_start is a plain column of each row here)
        start, end = (c.name for c in rel.node.columns[-2:])
        bounds = {start: "window_start", end: "window_end"}

        def reads_window(e: exp.Expression) -> bool:
            return any(rel.physical(c) in bounds for c in e.find_all(exp.Column))

        window_keys = {}
        for kname, k in keys:
            if isinstance(k, exp.Column) and rel.physical(k) in bounds:
                window_keys[kname] = bounds[rel.physical(k)]  # type: ignore[index]
            elif reads_window(k):
                return
        if not window_keys or any(reads_window(c) for c in calls):
            return
        assert isinstance(rel.node, Stateless)
        panes = Stateless(
            rel.node.columns, rel.node.retracting, rel.node.inputs, dict(rel.node.times),
            sql=pane_assign_sql(hop, width), what=f"{rel.node.what} in panes",
        )  # fmt: skip
        node.inputs = [panes]
        node.expand_sql = expand_sql(hop, [k for k, _ in keys], window_keys, node.accumulators)

    def _check_eowc(self, window_end: str | None) -> None:
        if self.eowc and window_end is None:
            raise FeatureNotSupported(
                "EMIT ON WINDOW CLOSE needs window_start or window_end in the GROUP BY"
            )

    def _recompute_aggregate(
        self, rel: Rel, sel: exp.Select, key_exprs: list[exp.Expression]
    ) -> Node:
        keys = [compile_expr(k, rel) for k in key_exprs]
        names = [e.alias_or_name for e in sel.expressions]
        exprs = [
            compile_expr(e.unalias().copy().transform(deterministic), rel) for e in sel.expressions
        ]
        select = [f"{k} AS __k{i}" for i, k in enumerate(keys)]
        select += [f"{e} AS {q(n)}" for e, n in zip(exprs, names, strict=True)]
        query = f"SELECT {', '.join(select)} FROM __r0 AS __in"
        if keys:
            query += f" GROUP BY {', '.join(keys)}"
        having = sel.args.get("having")
        if having is not None:
            query += f" HAVING {compile_expr(having.this, rel)}"
        window_end = None
        times = {}
        for i, k in enumerate(key_exprs):
            t = self._window_key(rel, k)
            if t and window_end is None and t.end_sql(f"a.__k{i}"):
                window_end = t.end_sql(f"a.__k{i}")
        for e, n in zip(sel.expressions, names, strict=True):
            t = self._window_key(rel, e.unalias())
            if t:
                times[n] = t
        self._check_eowc(window_end)
        key_sql = [keys]
        columns = describe(
            query, {"__r0": _empty(rel.node.columns, False, _key_cols(key_sql, [rel.node]))}
        )
        return Recompute(
            columns, not self.eowc, [rel.node], times, what="Aggregate",
            key_sql=key_sql, key_types=_key_types(key_sql, [rel.node]), query_sql=query,
            window_end_sql=window_end if _has_watermark(rel) else None,
            emit_on_window_close=self.eowc,
        )  # fmt: skip

    # -- window functions, DISTINCT, Top-N -----------------------------------------------

    def over(self, rel: Rel, sel: exp.Select, windows: list[exp.Window]) -> Node:
        if self.eowc:
            raise FeatureNotSupported("EMIT ON WINDOW CLOSE needs a windowed GROUP BY")
        partitions = {tuple(p.sql(D) for p in w.args.get("partition_by") or []) for w in windows}
        if len(partitions) != 1:
            raise _refuse("window functions with different PARTITION BY in one query level")
        partition = list(windows[0].args.get("partition_by") or [])
        keys = [compile_expr(p, rel) for p in partition]
        # Where the order among peers decides the result (row_number, lag, a ROWS frame...),
        # ties are broken the same way at every recomputation: over append-only input by
        # arrival (the append log's row id: one number to sort by, 35 % off ranking q19's
        # bids), otherwise by every column. Functions that treat peers alike (rank, a RANGE
        # frame) keep SQL's meaning of ties.
        tiebreak = [
            exp.Ordered(this=exp.column(c, table="__in", quoted=True))
            for c in _tiebreak_columns(rel.node)
        ]

        def peers_alike(w: exp.Window) -> bool:
            if isinstance(w.this, exp.Rank | exp.DenseRank | exp.PercentRank | exp.CumeDist):
                return True
            spec = w.args.get("spec")
            frame = (spec.args.get("kind") or "").upper() if spec is not None else "RANGE"
            return isinstance(w.this, exp.AggFunc) and frame in ("RANGE", "GROUPS")

        def with_tiebreak(node: exp.Expression) -> exp.Expression:
            if (
                isinstance(node, exp.Window)
                and node.args.get("order") is not None
                and not peers_alike(node)
            ):
                order = node.args["order"]
                order.set("expressions", [*order.expressions, *[t.copy() for t in tiebreak]])
            return node

        names = [e.alias_or_name for e in sel.expressions]
        exprs = []
        ranking: dict[str, str] = {}
        for e, n in zip(sel.expressions, names, strict=True):
            _check_expr(e, allow_window=True)
            compiled = sqlglot.parse_one(compile_expr(e.unalias(), rel), read=D)
            compiled_sql = compiled.transform(with_tiebreak).sql(D)
            exprs.append(f"{compiled_sql} AS {q(n)}")
            if isinstance(e.unalias(), exp.Window) and isinstance(
                e.unalias().this, exp.RowNumber | exp.Rank | exp.DenseRank
            ):
                ranking[n] = compiled_sql
        orders = {w.args["order"].sql(D) if w.args.get("order") else "" for w in windows}
        if len(ranking) != len(windows) or len(orders) != 1 or "" in orders:
            # another window function sees every row of its partition, or orders them
            # otherwise (a row below one ranking's top still counts for it), or there is no
            # order (row_number numbers rows anyhow: the old top cannot be recomputed)
            ranking = {}
        select = [f"{k} AS __k{i}" for i, k in enumerate(keys)] + exprs
        query = f"SELECT {', '.join(select)} FROM __r0 AS __in"
        key_sql = [keys]
        ids = [] if rel.node.retracting else [(ROW_ID, "BIGINT")]
        columns = describe(
            query, {"__r0": _empty(rel.node.columns, False, _key_cols(key_sql, [rel.node]) + ids)}
        )
        return Recompute(
            columns, True, [rel.node], {}, what="Over (window functions)",
            key_sql=key_sql, key_types=_key_types(key_sql, [rel.node]), query_sql=query,
            ranking_sql=ranking,
        )  # fmt: skip

    def _topn_filter(self, rel: Rel, cond: exp.Expression) -> Rel | None:
        """``WHERE rn <= N`` over a subquery of window functions: filter inside the recompute,
        so only the top rows are output (and, over append-only input, kept)."""
        node = rel.node
        if not (isinstance(node, Recompute) and node.what.startswith("Over")):
            return None
        filtered = f"SELECT * FROM ({node.query_sql}) AS __in WHERE {compile_expr(cond, rel)}"
        keep = rank = None
        bound = _rank_bound(cond, rel)
        if bound and bound[0] in node.ranking_sql and not node.inputs[0].retracting:
            rank = node.ranking_sql[bound[0]]
            keep = f"{rank} <= {bound[1]}"
        rank_sql = rank if rank and rank_pattern(rank).search(filtered) else None
        new = Recompute(
            node.columns, True, node.inputs, {}, what="TopN (row_number filter)",
            key_sql=node.key_sql, key_types=node.key_types, query_sql=filtered, keep_sql=keep,
            top_only=keep is not None, rank_sql=rank_sql,
            by_rank=rank_sql is not None and len(node.ranking_sql) == 1,
        )  # fmt: skip
        return Rel(new, rel.bindings)

    def distinct(self, node: Node) -> Node:
        keys = [f"__in.{q(c)}" for c in node.names]
        select = [f"{k} AS __k{i}" for i, k in enumerate(keys)] + [f"__in.{q(c)}" for c in node.names]
        key_sql = [keys]
        return Recompute(
            node.columns, True, [node], dict(node.times), what="Distinct",
            key_sql=key_sql, key_types=_key_types(key_sql, [node]),
            query_sql=f"SELECT DISTINCT {', '.join(select)} FROM __r0 AS __in",
        )  # fmt: skip

    def top_n(
        self, node: Node, sel: exp.Select, order: exp.Order, limit: exp.Expression | None,
        offset: exp.Expression | None,
    ) -> Node:  # fmt: skip
        names = set(node.names)
        by = []
        for o in order.expressions:
            e = o.this
            if isinstance(e, exp.Column) and e.name in names:
                ref = f"__in.{q(e.name)}"
            else:
                match = [x.alias_or_name for x in sel.expressions if x.unalias() == e]
                if not match:
                    raise _refuse("ORDER BY an expression that is not in the select list")
                ref = f"__in.{q(match[0])}"
            direction = " DESC" if o.args.get("desc") else ""
            nulls = " NULLS FIRST" if o.args.get("nulls_first") else " NULLS LAST"
            by.append(ref + direction + nulls)
        by += [f"__in.{q(c)}" for c in _tiebreak_columns(node)]  # the same way every time
        query = f"SELECT {', '.join(f'__in.{q(c)}' for c in node.names)} FROM __r0 AS __in ORDER BY {', '.join(by)}"
        if limit is not None:
            query += f" LIMIT {limit.expression.sql(D)}"
        if offset is not None:
            query += f" OFFSET {offset.expression.sql(D)}"
        # over append-only input only the first offset + limit rows can ever be output
        keep = None
        counts = [x.expression for x in (limit, offset) if x is not None]
        if limit is not None and not node.retracting and all(
            isinstance(c, exp.Literal) and not c.is_string and c.this.isdigit() for c in counts
        ):
            top = sum(int(c.this) for c in counts)
            keep = f"row_number() OVER (ORDER BY {', '.join(by)}) <= {top}"
        return Recompute(
            node.columns, True, [node], {}, what="TopN (ORDER BY ... LIMIT)",
            key_sql=[[]], key_types=[], query_sql=query, keep_sql=keep, top_only=True,
        )  # fmt: skip


# -- helpers ------------------------------------------------------------------------------------


def _tiebreak_columns(node: Node) -> list[str]:
    """What orders peers in a recomputed ranking: an append-only input is kept as an append
    log, whose row id numbers rows in arrival order; a retracting one has every column."""
    return node.names if node.retracting else [ROW_ID]


def _aggregates(e: exp.Expression) -> list[exp.Expression]:
    """Aggregate calls in an expression (with their FILTER), not inside window functions."""
    out: list[exp.Expression] = []

    def walk(node: exp.Expression) -> None:
        if isinstance(node, exp.Window):
            return
        if isinstance(node, exp.Filter) and isinstance(node.this, exp.AggFunc):
            out.append(node)
            return
        if isinstance(node, exp.AggFunc):
            out.append(node)
            return
        for child in node.iter_expressions():
            walk(child)

    walk(e)
    return out


def _plain(call: exp.Expression) -> str:
    return call.transform(
        lambda n: exp.column(n.name) if isinstance(n, exp.Column) else n
    ).sql("postgres")


def _check_expr(e: exp.Expression, allow_window: bool = False) -> None:
    for node in e.find_all(exp.Subquery, exp.Exists):
        raise _refuse(f"the subquery {node.sql('postgres')[:60]} (correlated or in this place)")
    if not allow_window:
        for node in e.find_all(exp.Window):
            raise _refuse(f"the window function {node.sql('postgres')[:60]} here")
    for node in e.find_all(exp.Func):
        name = node.name.lower() if isinstance(node, exp.Anonymous) else node.key.lower()
        sql_name = node.sql_name().lower() if hasattr(node, "sql_name") else name
        if name in _NONDETERMINISTIC_FUNCS or sql_name in _NONDETERMINISTIC_FUNCS or isinstance(
            node, exp.Rand | exp.CurrentTimestamp | exp.CurrentDate | exp.CurrentTime
        ):
            raise FeatureNotSupported(
                f"non-deterministic function {node.sql('postgres')} cannot be maintained in a view"
            )


def _positive(interval_sql: str) -> None:
    us = duckdb.sql(f"SELECT epoch_us(TIMESTAMP '1970-01-01' + {interval_sql})").fetchall()[0][0]
    if us <= 0:
        raise FeatureNotSupported("a window size must be a positive interval")


def _has_watermark(rel: Rel) -> bool:
    def walk(n: Node) -> bool:
        if isinstance(n, Scan):
            return bool(n.watermark_sql) or bool(n.times)
        return any(walk(i) for i in n.inputs)

    return walk(rel.node)


def _key_cols(key_sql: list[list[str]], inputs: list[Node]) -> list[tuple[str, str]]:
    return [(f"__k{i}", t) for i, t in enumerate(_key_types(key_sql, inputs))]


def _key_types(key_sql: list[list[str]], inputs: list[Node]) -> list[str]:
    """DuckDB types of the key columns (from the first input; the others are cast to them)."""
    if not key_sql or not key_sql[0]:
        return []
    node = inputs[0]
    select = ", ".join(f"{k} AS __k{i}" for i, k in enumerate(key_sql[0]))
    types = _duck_types(f"SELECT {select} FROM __in", {"__in": _empty(node.columns)})
    return [types[f"__k{i}"] for i in range(len(key_sql[0]))]


@dataclass
class _SideTime:
    side: int
    column: str  # the physical column of that side's rows
    type: str  # its type
    offset: str
    #: a retracting side's window bound: the end of its window (epoch microseconds), after
    #: which the row is final
    end: str | None = None
    #: what that end adds to the column (a window_start's size), else None
    size: str | None = None

    def epoch_us(self, *shifts: str | None) -> str:
        """SQL: the column's epoch microseconds plus the given intervals (over alias s)."""
        shift = " + ".join(f"({x})" for x in shifts if x) or None
        return epoch_us_sql(f"s.{q(self.column)}", self.column, self.type, shift)


def _column_type(rel: Rel, column: str) -> str:
    return next((c.type for c in rel.node.columns if c.name == column), "")


def _side_column(
    e: exp.Expression, left: Rel, right: Rel, la: set[str]
) -> tuple[int, Rel, str, str] | None:
    """``col [+-] INTERVAL`` over one side of a join: (side, its relation, the physical
    column, the interval as SQL); None for any other expression."""
    offset = "INTERVAL 0 SECOND"
    if isinstance(e, exp.Add | exp.Sub) and isinstance(e.expression, exp.Interval):
        offset = f"{'' if isinstance(e, exp.Add) else '-'}{e.expression.sql(D)}"
        e = e.this
    if not isinstance(e, exp.Column):
        return None
    side = 0 if e.table in la else 1
    rel = left if side == 0 else right
    phys = rel.physical(e)
    return None if phys is None else (side, rel, phys, offset)


def _side_time(e: exp.Expression, left: Rel, right: Rel, la: set[str]) -> _SideTime | None:
    """The side and time column of ``col [+-] INTERVAL``: an event-time column of an
    append-only side, or a window bound of a retracting one (a window's rows change only
    until the watermark passes its end; changes behind the watermark are dropped as late)."""
    found = _side_column(e, left, right, la)
    if found is None:
        return None
    side, rel, phys, offset = found
    t = rel.node.times.get(phys)
    if t is None:
        return None
    found_time = _SideTime(side, phys, _column_type(rel, phys), offset)
    if not rel.node.retracting:
        return found_time if t.kind == "event" else None
    if t.kind == "event" or t.end_sql("s") is None or not _has_watermark(rel):
        return None
    found_time.size = t.size_sql if t.kind == "window_start" else None
    found_time.end = found_time.epoch_us(found_time.size)
    return found_time


def _side_bound(e: exp.Expression, left: Rel, right: Rel, la: set[str]) -> _SideTime | None:
    """``col [+-] INTERVAL`` for a timestamp column of an append-only side that is not its
    event time (an auction's ``expires``): it bounds the event times of the other side's rows
    the row can meet, so the row goes once the watermark passes it."""
    found = _side_column(e, left, right, la)
    if found is None:
        return None
    side, rel, phys, offset = found
    type_ = _column_type(rel, phys)
    if rel.node.retracting or not type_.startswith("timestamp"):
        return None
    return _SideTime(side, phys, type_, offset)


def _expiry(residual: list[exp.Expression], left: Rel, right: Rel, la: set[str]) -> list[str | None]:
    """When a row of each side of an interval join can no longer match: from conditions like
    ``a.ts BETWEEN b.ts - INTERVAL '5' SECOND AND b.ts + INTERVAL '5' SECOND``, or
    ``b.ts BETWEEN w.window_end - INTERVAL '10' SECOND AND w.window_end`` against a windowed
    aggregate."""
    comparisons: list[tuple[exp.Expression, exp.Expression]] = []  # (smaller, larger)
    for c in residual:
        if isinstance(c, exp.Between):
            comparisons += [(c.args["low"], c.this), (c.this, c.args["high"])]
        elif isinstance(c, exp.LTE | exp.LT):
            comparisons.append((c.this, c.expression))
        elif isinstance(c, exp.GTE | exp.GT):
            comparisons.append((c.expression, c.this))
    out: list[list[str]] = [[], []]
    for small, large in comparisons:
        s = _side_time(small, left, right, la)
        # the larger side needs no event time of its own: future rows of the smaller side come
        # with event times past the watermark, which a row whose bound it passed cannot meet
        g = _side_time(large, left, right, la) or (s and _side_bound(large, left, right, la))
        if not s or not g or s.side == g.side:
            continue
        # small.t + so <= large.t + go: a row of small's side meets only rows of the other
        # side with t >= small.t + so - go, which future rows (t >= watermark) always are; a
        # row of large's side meets only rows with t <= large.t + go - so: once the
        # watermark passes that, it can never match a new row again. If small's side
        # retracts, its rows must also be final (their window closed) before then; if
        # large's side does, the row itself must be.
        expiry = g.epoch_us(g.offset, f"-({s.offset})", s.size)
        if g.end:
            expiry = f"greatest({expiry}, {g.end})"
        out[g.side].append(expiry)
    return [f"least({', '.join(x)})" if len(x) > 1 else (x[0] if x else None) for x in out]


def _window_expiry(
    lkeys: list[exp.Expression], rkeys: list[exp.Expression], left: Rel, right: Rel
) -> list[str | None]:
    """For a join on a window bound of both sides (``a.window_start = b.window_start``): the
    window's end (epoch microseconds), per side, after which neither side changes for that
    key again."""
    if not (_has_watermark(left) and _has_watermark(right)):
        return [None, None]
    for lk, rk in zip(lkeys, rkeys, strict=True):
        if not (isinstance(lk, exp.Column) and isinstance(rk, exp.Column)):
            continue
        lc, rc = left.physical(lk), right.physical(rk)
        lt, rt = left.node.times.get(lc or ""), right.node.times.get(rc or "")
        if lt and rt and lt.kind != "event" and rt.kind != "event":
            if lt.end_sql("s") and rt.end_sql("s"):
                return [
                    epoch_us_sql(
                        f"s.{q(c)}", c, _column_type(rel, c),
                        t.size_sql if t.kind == "window_start" else None,
                    )  # fmt: skip
                    for c, t, rel in ((lc, lt, left), (rc, rt, right))
                ]
    return [None, None]


def _rank_bound(cond: exp.Expression, rel: Rel) -> tuple[str, int] | None:
    """(column, n) when ``cond`` is ``column <= n`` (or ``< n + 1``, ``= 1``, mirrored): the
    only filters under which a row that fails once fails forever, as ranks only grow."""
    cond = cond.unnest()
    flip = {exp.GTE: exp.LTE, exp.GT: exp.LT}
    if type(cond) in flip and isinstance(cond.expression, exp.Column):
        cond = flip[type(cond)](this=cond.expression, expression=cond.this)
    if not (isinstance(cond.this, exp.Column) and isinstance(cond.expression, exp.Literal)):
        return None
    column, text = rel.physical(cond.this), cond.expression.this
    if column is None or cond.expression.is_string or not text.isdigit():
        return None
    n = int(text)
    if isinstance(cond, exp.LTE):
        return column, n
    if isinstance(cond, exp.LT):
        return column, n - 1
    if isinstance(cond, exp.EQ) and n == 1:
        return column, 1
    return None


def _conjuncts(condition: exp.Expression) -> list[exp.Expression]:
    condition = condition.unnest()
    return list(condition.flatten()) if isinstance(condition, exp.And) else [condition]


def _movable(condition: exp.Expression) -> set[str] | None:
    """The aliases a condition reads, when it may be moved to where they all are: it reads
    some, all qualified, and holds no subquery."""
    refs = references(condition)
    if not refs or "" in refs or condition.find(exp.Subquery, exp.Select) is not None:
        return None
    return refs


def _filter_sides(
    planner: Planner, left: Rel, right: Rel, conds: list[exp.Expression]
) -> tuple[Rel, Rel, list[exp.Expression]]:
    """Apply the conditions over one side only to that side; returns the rest."""
    rest: list[exp.Expression] = []
    only: tuple[list[exp.Expression], list[exp.Expression]] = ([], [])
    for c in conds:
        refs = _movable(c)
        if refs is None:
            rest.append(c)
        elif refs <= left.aliases:
            only[0].append(c)
        elif refs <= right.aliases:
            only[1].append(c)
        else:
            rest.append(c)
    if only[0]:
        left = planner._filter(left, exp.and_(*only[0]))
    if only[1]:
        right = planner._filter(right, exp.and_(*only[1]))
    return left, right, rest


def _push_into_join(
    join: exp.Join, left_aliases: set[str], conjuncts: list[exp.Expression]
) -> tuple[exp.Join, list[exp.Expression]]:
    """Move the conditions over the join's right side and the relations before it (and
    nothing else) into its ON condition; returns the join and the conditions left over."""
    right = join.this.alias_or_name
    moved, rest = [], []
    for c in conjuncts:
        refs = _movable(c)
        (moved if refs is not None and refs <= left_aliases | {right} else rest).append(c)
    if not moved:
        return join, conjuncts
    join = join.copy()
    on = join.args.get("on")
    join.set("on", exp.and_(*([on] if on is not None else []), *(m.copy() for m in moved)))
    if (join.kind or "").lower() == "cross":
        join.set("kind", None)
    return join, rest


def rewrite(query: exp.Expression) -> exp.Expression:
    """sqlglot's rewrites the planner relies on: IN/EXISTS become (semi/anti) joins and
    scalar subqueries cross joins; a subquery's columns that nothing above it reads are
    dropped, so that no operator stores them (``SELECT A.*`` under Nexmark q9's Top-N kept
    the auction's ``extra`` in the join and the ranking's state, which the view never shows)."""
    return pushdown_projections(unnest_subqueries(query.copy()))


def plan_query(
    name: str,
    query: exp.Query,
    resolve: Callable[[str], RelationInfo],
    *,
    emit_on_window_close: bool = False,
) -> QueryPlan:
    """Plan a bound query (columns qualified, ``*`` expanded) for incremental maintenance."""
    planner = Planner(name, resolve, emit_on_window_close)
    query = rewrite(query)
    columns = list(query.find_all(exp.Column))
    planner.reads = {(c.table, c.name) for c in columns if c.table}
    planner.reads_unqualified = {c.name for c in columns if not c.table}
    root = planner.query(query)
    from sqlstream.plan.fuse import fuse

    root = fuse(root)
    share_aggregates(root)
    plan = QueryPlan(name, root)
    text = f"state layout {STATE_LAYOUT}\n{_fingerprint_text(root)}"
    plan.fingerprint = hashlib.sha256(text.encode()).hexdigest()[:16]
    return plan


def _fingerprint_text(node: Node) -> str:
    parts = [type(node).__name__, repr([(c.name, c.type) for c in node.columns])]
    for attr in ("sql", "pre_sql", "expand_sql", "project_sql", "query_sql", "select_sql", "relation"):
        if hasattr(node, attr):
            parts.append(str(getattr(node, attr)))
    if isinstance(node, Aggregate):
        parts += [f"{a.name}:{a.duck_type}:{a.partial_sql}" for a in node.accumulators]
        if node.leader is not None:
            parts.append("state of an aggregate above")
    return "\n".join(parts + [_fingerprint_text(i) for i in node.inputs])
