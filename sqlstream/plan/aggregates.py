"""Which aggregates can be folded into accumulators, and how.

``count``, ``sum`` and ``avg`` are sums of weights and values, so they survive retractions;
``min`` and ``max`` fold only over append-only input (deleting the current extreme needs the
other values). ``count(DISTINCT x)`` folds too: the operator keeps each group's values of
``x`` with a count, and a batch's partial is how many values appeared minus how many
disappeared. Each may carry ``FILTER (WHERE ...)``. Everything else — other DISTINCT
aggregates, ``string_agg``, ``array_agg``, ``bool_and``/``bool_or``, ``min``/``max`` under
retractions — is maintained by recomputing the touched groups
(:class:`~sqlstream.plan.nodes.Recompute`).

>>> import sqlglot
>>> call = sqlglot.parse_one("sum(x)")
>>> accs, final = accumulators(call, 0, "__a0", None, "BIGINT", weighted=False)
>>> [a.name for a in accs], final
(['_sum0', '_nonnull0'], 'CASE WHEN "_nonnull0" > 0 THEN "_sum0" END')
"""

from __future__ import annotations

import duckdb
from sqlglot import exp

from sqlstream.plan.nodes import Accumulator
from sqlstream.plan.scope import q

FOLDABLE = (exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max)
#: aggregates whose value depends on the order rows happen to arrive in: refused in views
NONDETERMINISTIC = tuple(
    getattr(exp, n) for n in ("AnyValue", "First", "Last") if hasattr(exp, n)
)


def unwrap(call: exp.Expression) -> tuple[exp.Expression, exp.Expression | None]:
    """(the aggregate call, its FILTER condition or None)."""
    if isinstance(call, exp.Filter):
        return call.this, call.expression.this
    return call, None


def is_distinct(call: exp.Expression) -> bool:
    return bool(call.args.get("distinct")) or isinstance(call.this, exp.Distinct)


def distinct_args(call: exp.Expression) -> list[exp.Expression]:
    arg = call.this
    return list(arg.expressions) if isinstance(arg, exp.Distinct) else [arg]


def foldable(calls: list[exp.Expression], weighted: bool) -> bool:
    """Whether all calls can be kept as accumulators over this input."""
    for c in calls:
        inner, _ = unwrap(c)
        if is_distinct(inner):
            if not (isinstance(inner, exp.Count) and len(distinct_args(inner)) == 1):
                return False
            continue
        if not isinstance(inner, FOLDABLE):
            return False
        if weighted and isinstance(inner, exp.Min | exp.Max):
            return False
    return True


def accumulators(
    call: exp.Expression,
    i: int,
    arg: str | None,
    cond: str | None,
    arg_type: str | None,
    *,
    weighted: bool,
) -> tuple[list[Accumulator], str]:
    """State columns of one foldable call and the SQL computing its value from them.

    ``arg`` and ``cond`` name pre-projected columns (the argument and the FILTER condition).
    """
    w = "__weight" if weighted else "1"
    live = f"{cond} AND {arg} IS NOT NULL" if cond and arg else (cond or f"{arg} IS NOT NULL")

    def counter(name: str) -> Accumulator:
        # over append-only input a plain count (DuckDB's native one is ~25 % faster)
        partial = (
            f"sum(CASE WHEN {live} THEN {w} ELSE 0 END)"
            if weighted
            else f"count({arg or '*'})" + (f" FILTER (WHERE {cond})" if cond else "")
        )
        return Accumulator(name, "BIGINT", partial, add_counts(name))

    if isinstance(call, exp.Count) and arg is None:
        if cond is None:
            return [], '"_rows"'
        return [counter(f"_count{i}")], q(f"_count{i}")
    if isinstance(call, exp.Count):
        n = f"_count{i}"
        return [counter(n)], q(n)
    nn = f"_nonnull{i}"
    nonnull = counter(nn)
    value = f"CASE WHEN {cond} THEN {arg} END" if cond else arg
    if isinstance(call, exp.Sum | exp.Avg):
        s = f"_sum{i}"
        sum_type = duckdb.sql(f"SELECT typeof(sum(NULL::{arg_type}))").fetchall()[0][0]
        partial = f"sum({value} * __weight)" if weighted else f"sum({value})"
        merge = (
            f"CASE WHEN o.{q(s)} IS NULL THEN p.{q(s)} WHEN p.{q(s)} IS NULL THEN o.{q(s)} "
            f"ELSE o.{q(s)} + p.{q(s)} END"
        )
        acc = Accumulator(s, sum_type, partial, merge)
        if isinstance(call, exp.Sum):
            return [acc, nonnull], f"CASE WHEN {q(nn)} > 0 THEN {q(s)} END"
        return [acc, nonnull], f"CASE WHEN {q(nn)} > 0 THEN {q(s)}::DOUBLE / {q(nn)} END"
    m = f"_{call.key}{i}"
    fn = "least" if isinstance(call, exp.Min) else "greatest"
    return [
        Accumulator(
            m, arg_type or "VARCHAR", f"{call.key}({value})", f"{fn}(o.{q(m)}, p.{q(m)})",
            combine=call.key,
        )
    ], q(m)


def add_counts(name: str) -> str:
    """Merge SQL of a counter: old plus partial, NULL counting as 0."""
    return f"coalesce(o.{q(name)}, 0) + coalesce(p.{q(name)}, 0)"


def deterministic(call: exp.Expression) -> exp.Expression:
    """``string_agg``/``array_agg`` without ORDER BY get one (their argument), so recomputing
    a group yields exactly the value emitted before and its retraction matches."""
    inner, _ = unwrap(call)
    if isinstance(inner, exp.GroupConcat | exp.ArrayAgg) and not isinstance(inner.this, exp.Order):
        arg = inner.this
        target = arg.this if isinstance(arg, exp.Distinct) else arg
        if isinstance(arg, exp.Distinct):
            return call  # DISTINCT with ORDER BY must order by the argument: DuckDB sorts anyway
        inner.set("this", exp.Order(this=target.copy(), expressions=[exp.Ordered(this=target.copy())]))
    return call
