"""From a bound SELECT to a :class:`~sqlstream.plan.nodes.QueryPlan`.

The planner splits a query at its aggregate: everything below it (window assignment, WHERE,
the group keys and aggregate arguments) becomes one stateless DuckDB statement per batch;
the aggregate keeps accumulators per group; the select list and HAVING are evaluated over the
accumulators. Anything it cannot maintain is refused here with SQLSTATE 0A000, naming the
construct, so no view is accepted that would later be wrong.

>>> from sqlstream.types import Column
>>> src = RelationInfo("bids", [Column("auction", "bigint"), Column("price", "bigint")], True)
>>> q = sqlglot.parse_one('SELECT "bids"."auction" AS "auction", count(*) AS "count" '
...                       'FROM "bids" AS "bids" GROUP BY "bids"."auction"', read="postgres")
>>> p = plan_query("v", q, [Column("auction", "bigint"), Column("count", "bigint")],
...                lambda n: src)
>>> [k for k, _ in p.aggregate.keys], p.retracting
(['auction'], True)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import sqlglot
from sqlglot import exp

from sqlstream.errors import FeatureNotSupported
from sqlstream.plan.nodes import (
    Accumulator,
    Aggregate,
    Project,
    QueryPlan,
    Scan,
    Stateless,
    WindowAssign,
)
from sqlstream.types import Column, Schema, duckdb_type, from_duckdb

D = "duckdb"


@dataclass
class RelationInfo:
    """What the planner needs to know about an input relation."""

    name: str
    schema: Schema
    append_only: bool
    watermark_column: str | None = None
    watermark_sql: str | None = None  # DuckDB SQL over the relation's columns


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _refuse(what: str) -> FeatureNotSupported:
    return FeatureNotSupported(f"{what} is not supported in a continuous query yet")


def _interval_us(interval_sql: str) -> int:
    us = duckdb.sql(f"SELECT epoch_us(TIMESTAMP '1970-01-01' + {interval_sql})").fetchall()[0][0]
    if us <= 0:
        raise FeatureNotSupported("a window size must be a positive interval")
    return int(us)


def _check_shape(select: exp.Select) -> None:
    if not isinstance(select, exp.Select):
        raise _refuse(f"{type(select).__name__.upper()} (only SELECT)")
    for arg, what in [
        ("joins", "JOIN"),
        ("with_", "WITH"),
        ("order", "ORDER BY"),
        ("limit", "LIMIT"),
        ("offset", "OFFSET"),
        ("distinct", "SELECT DISTINCT"),
        ("qualify", "QUALIFY"),
        ("windows", "WINDOW"),
    ]:
        if select.args.get(arg):
            raise _refuse(what)
    for node in select.find_all(exp.Subquery, exp.Window, exp.Exists, exp.Union):
        raise _refuse(f"{node.key.upper()} ({node.sql('postgres')[:60]})")
    for node in select.find_all(exp.Anonymous, exp.Rand, exp.CurrentTimestamp):
        name = node.name.lower() if isinstance(node, exp.Anonymous) else node.key
        if name in {"random", "rand", "now", "current_timestamp", "gen_random_uuid", "uuid"}:
            raise FeatureNotSupported(
                f"non-deterministic function {name}() cannot be maintained in a view"
            )


def _from(select: exp.Select) -> tuple[exp.Table, str, exp.Anonymous | None]:
    source = select.args.get("from_") or select.args.get("from")
    if source is None:
        raise _refuse("a query without FROM")
    table = source.this
    if not isinstance(table, exp.Table):
        raise _refuse(f"FROM {table.sql('postgres')[:60]}")
    alias = table.alias_or_name
    func = table.this if isinstance(table.this, exp.Anonymous) else None
    return table, alias, func


def _window(func: exp.Anonymous, info: RelationInfo) -> tuple[str, WindowAssign]:
    name = func.name.lower()
    if name != "tumble":
        raise _refuse(f"the {name.upper()} window")
    args = func.expressions
    if len(args) != 3:
        raise FeatureNotSupported("TUMBLE takes (relation, time column, interval)")
    relation, time_col, size = args
    col = time_col.name
    types = {c.name: c.type for c in info.schema}
    if types.get(col) not in ("timestamp", "timestamptz"):
        raise FeatureNotSupported(f'TUMBLE needs a timestamp column, "{col}" is {types.get(col)}')
    size_sql = size.sql(D)
    return relation.name, WindowAssign("tumble", col, size_sql, _interval_us(size_sql), types[col])


def _window_sql(w: WindowAssign) -> str:
    origin = (
        "TIMESTAMPTZ '1970-01-01 00:00:00+00'"
        if w.time_type == "timestamptz"
        else "TIMESTAMP '1970-01-01 00:00:00'"
    )
    # Windows align to the Unix epoch, as in RisingWave and Flink (DuckDB's default origin
    # is 2000-01-03, which shifts windows whose size does not divide a week).
    start = f"time_bucket({w.size_sql}, {_q(w.time_column)}, {origin})"
    return f"(SELECT *, {start} AS window_start, {start} + {w.size_sql} AS window_end FROM __in)"


_AGGS = (exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max)


def _accumulators(
    call: exp.AggFunc, i: int, arg: str | None, arg_type: str | None, weighted: bool
) -> tuple[list[Accumulator], str]:
    """State columns of one aggregate call and the SQL computing its value from them."""
    w = "__weight" if weighted else None

    def counter(name: str) -> Accumulator:
        partial = f"sum(CASE WHEN {arg} IS NOT NULL THEN {w} ELSE 0 END)" if w else f"count({arg})"
        return Accumulator(
            name, "BIGINT", partial, f"coalesce(o.{_q(name)}, 0) + coalesce(p.{_q(name)}, 0)"
        )

    if isinstance(call, exp.Count) and arg is None:
        return [], '"_rows"'
    if isinstance(call, exp.Count):
        n = f"_count{i}"
        return [counter(n)], _q(n)
    nn = f"_nonnull{i}"
    nonnull = counter(nn)
    if isinstance(call, exp.Sum | exp.Avg):
        s = f"_sum{i}"
        sum_type = duckdb.sql(f"SELECT typeof(sum(NULL::{arg_type}))").fetchall()[0][0]
        acc = Accumulator(
            s,
            sum_type,
            f"sum({arg} * {w})" if w else f"sum({arg})",
            f"CASE WHEN o.{_q(s)} IS NULL THEN p.{_q(s)} WHEN p.{_q(s)} IS NULL THEN o.{_q(s)} "
            f"ELSE o.{_q(s)} + p.{_q(s)} END",
        )
        if isinstance(call, exp.Sum):
            return [acc, nonnull], f"CASE WHEN {_q(nn)} > 0 THEN {_q(s)} END"
        return [acc, nonnull], f"CASE WHEN {_q(nn)} > 0 THEN {_q(s)}::DOUBLE / {_q(nn)} END"
    if weighted:
        raise FeatureNotSupported(
            f"{call.key}() over an input with updates or deletes is not supported yet"
        )
    m = f"_{call.key}{i}"
    fn = "least" if isinstance(call, exp.Min) else "greatest"
    return [
        Accumulator(m, arg_type or "VARCHAR", f"{call.key}({arg})", f"{fn}(o.{_q(m)}, p.{_q(m)})")
    ], _q(m)


def plan_query(
    name: str,
    query: exp.Query,
    schema: Schema,
    resolve: Callable[[str], RelationInfo],
    *,
    emit_on_window_close: bool = False,
) -> QueryPlan:
    """Plan a bound query (columns qualified, ``*`` expanded) for incremental maintenance."""
    select = query.copy()
    _check_shape(select)
    table, alias, func = _from(select)
    window = None
    if func is not None:
        relation = func.expressions[0].name
        info = resolve(relation)
        _, window = _window(func, info)
    else:
        info = resolve(table.name)
    if not info.append_only:
        raise FeatureNotSupported(
            f'reading "{info.name}", which has updates or deletes, is not supported yet'
        )
    weighted = not info.append_only
    scan = Scan(info.name, alias, info.schema, info.append_only, info.watermark_column, info.watermark_sql)
    from_sql = _window_sql(window) if window else "__in"
    where = select.args.get("where")
    where_sql = where.this.sql(D) if where else None
    tail = f" FROM {from_sql} AS {_q(alias)}" + (f" WHERE {where_sql}" if where_sql else "")

    group = select.args.get("group")
    aggs = [a for e in select.expressions for a in e.find_all(*_AGGS)]
    having = select.args.get("having")
    if having:
        aggs += list(having.find_all(*_AGGS))
    for node in select.find_all(exp.AggFunc):
        if not isinstance(node, _AGGS):
            raise _refuse(f"the aggregate {node.sql('postgres')[:60]}")

    outputs = [c.name for c in schema]
    if not group and not aggs:
        if emit_on_window_close:
            raise FeatureNotSupported("EMIT ON WINDOW CLOSE needs a windowed GROUP BY")
        cols = [
            f"{e.unalias().sql(D)} AS {_q(n)}" for e, n in zip(select.expressions, outputs, strict=True)
        ]
        sql = f"SELECT {', '.join(cols)}{', __weight' if weighted else ''}{tail}"
        return _finish(
            QueryPlan(name, scan, window, Stateless(sql, where_sql, outputs), None, None, schema, weighted),
            info,
        )

    # Group keys: state columns named after the grouped column where there is one.
    key_exprs = list(group.expressions) if group else []
    keys: list[tuple[str, exp.Expression]] = []
    used: set[str] = set()
    for i, k in enumerate(key_exprs):
        base = k.name if isinstance(k, exp.Column) else f"key{i}"
        kname = base if base not in used and not base.startswith("_") else f"{base}_{i}"
        used.add(kname)
        keys.append((kname, k))
    key_sql = {k.sql(D): kname for kname, k in keys}

    # Aggregate arguments, computed in the stateless statement.
    pre_cols = [f"{k.sql(D)} AS {_q(kname)}" for kname, k in keys]
    accs: list[Accumulator] = [
        Accumulator(
            "_rows",
            "BIGINT",
            "sum(__weight)" if weighted else "count(*)",
            'coalesce(o."_rows", 0) + coalesce(p."_rows", 0)',
        )
    ]
    finals: dict[int, str] = {}
    describe = []
    seen_calls: dict[str, int] = {}
    for call in aggs:
        if call.args.get("distinct") or isinstance(call.this, exp.Distinct):
            raise _refuse(f"{call.sql('postgres')} (DISTINCT aggregates)")
        text = call.sql(D)
        if text in seen_calls:
            finals[id(call)] = finals[seen_calls[text]]
            continue
        i = len(seen_calls)
        seen_calls[text] = id(call)
        arg = None
        arg_type = None
        if not isinstance(call.this, exp.Star):
            arg = f"__a{i}"
            pre_cols.append(f"{call.this.sql(D)} AS {arg}")
            arg_type = _expr_type(call.this, from_sql, alias, info)
        new_accs, final = _accumulators(call, i, arg, arg_type, weighted)
        accs += new_accs
        finals[id(call)] = final
        describe.append(
            call.transform(
                lambda n: exp.column(n.name) if isinstance(n, exp.Column) else n
            ).sql("postgres")
        )
    if weighted:
        pre_cols.append("__weight")
    pre_sql = f"SELECT {', '.join(pre_cols) or 'TRUE AS __none'}{tail}"

    # The select list over state rows: group keys and aggregate calls replaced.
    def over_state(node: exp.Expression) -> exp.Expression:
        if isinstance(node, _AGGS) and id(node) in finals:
            return sqlglot.parse_one(finals[id(node)], read=D)
        kname = key_sql.get(node.sql(D)) if not isinstance(node, exp.Literal) else None
        if kname:
            return exp.column(kname, quoted=True)
        return node

    def rewrite(e: exp.Expression) -> str:
        # In place (copy=False): the aggregate calls are recognised by identity.
        out = e.transform(over_state, copy=False)
        for col in out.find_all(exp.Column):
            if col.table:
                raise FeatureNotSupported(
                    f'column "{col.name}" must appear in the GROUP BY clause or be used in an '
                    "aggregate function"
                )
        return out.sql(D)

    post_cols = [
        f"{rewrite(e.unalias())} AS {_q(n)}" for e, n in zip(select.expressions, outputs, strict=True)
    ]
    post_sql = f"SELECT {', '.join(post_cols)} FROM __st AS s"
    if having:
        post_sql += f" WHERE {rewrite(having.this)}"

    key_types = _key_types(pre_sql, [k for k, _ in keys], info, window)
    window_end_sql = None
    if window:
        for kname, k in keys:
            if isinstance(k, exp.Column) and k.name == "window_end":
                window_end_sql = f"s.{_q(kname)}"
            elif isinstance(k, exp.Column) and k.name == "window_start" and window_end_sql is None:
                window_end_sql = f"(s.{_q(kname)} + {window.size_sql})"
    if emit_on_window_close:
        if window_end_sql is None:
            raise FeatureNotSupported(
                "EMIT ON WINDOW CLOSE needs window_start or window_end in the GROUP BY"
            )
        if info.watermark_column is None:
            raise FeatureNotSupported(
                f'EMIT ON WINDOW CLOSE needs a WATERMARK FOR on "{info.name}"'
            )
    agg = Aggregate(
        keys=list(zip([k for k, _ in keys], key_types, strict=True)),
        accumulators=accs,
        window_end_sql=window_end_sql if info.watermark_column else None,
        emit_on_window_close=emit_on_window_close,
        describe=describe,
    )
    plan = QueryPlan(
        name,
        scan,
        window,
        Stateless(pre_sql, where_sql, [c.split(" AS ")[-1] for c in pre_cols]),
        agg,
        Project(post_sql),
        schema,
        retracting=not emit_on_window_close,
    )
    return _finish(plan, info)


def _on_empty_input(sql: str, info: RelationInfo) -> str:
    return re.sub(r"\b__in\b", lambda _: _empty_input(info), sql)


def _empty_input(info: RelationInfo) -> str:
    cols = ", ".join(f"NULL::{duckdb_type(c.type)} AS {_q(c.name)}" for c in info.schema)
    return f"(SELECT {cols} LIMIT 0)"


def _expr_type(expr: exp.Expression, from_sql: str, alias: str, info: RelationInfo) -> str:
    """DuckDB's type for an expression over the input, found by describing it on no rows."""
    src = _on_empty_input(from_sql, info)
    return str(duckdb.sql(f"SELECT {expr.sql(D)} FROM {src} AS {_q(alias)}").types[0])


def _key_types(
    pre_sql: str, keys: list[str], info: RelationInfo, window: WindowAssign | None
) -> list[str]:
    if not keys:
        return []
    rel = duckdb.sql(_on_empty_input(pre_sql, info))
    types = dict(zip(rel.columns, [str(t) for t in rel.types], strict=True))
    return [types[k] for k in keys]


def _output_schema(plan: QueryPlan, info: RelationInfo) -> Schema:
    """The output columns with the types DuckDB actually produces (``sum(bigint)`` is a
    HUGEINT there, so ``numeric(38,0)``, as Postgres' ``numeric``), found by running the
    plan's SQL over no rows."""
    if plan.aggregate is None:
        rel = duckdb.sql(_on_empty_input(plan.stateless.sql, info))
    else:
        assert plan.project is not None
        state_cols = plan.aggregate.keys + [(a.name, a.duck_type) for a in plan.aggregate.accumulators]
        empty = ", ".join(f"NULL::{t} AS {_q(n)}" for n, t in state_cols)
        rel = duckdb.sql(plan.project.sql.replace("__st", f"(SELECT {empty} LIMIT 0)"))
    types = dict(zip(rel.columns, [str(t) for t in rel.types], strict=True))
    return [Column(c.name, from_duckdb(types[c.name])) for c in plan.schema]


def _finish(plan: QueryPlan, info: RelationInfo) -> QueryPlan:
    plan.schema = _output_schema(plan, info)
    text = "\n".join(
        [plan.stateless.sql, plan.project.sql if plan.project else ""]
        + [f"{a.name}:{a.duck_type}:{a.partial_sql}" for a in (plan.aggregate.accumulators if plan.aggregate else [])]
    )
    plan.fingerprint = hashlib.sha256(text.encode()).hexdigest()[:16]
    return plan
