"""EXPLAIN: the plan as a tree, with how each step is maintained.

>>> from sqlstream.types import Column
>>> from sqlstream.plan.nodes import QueryPlan, Scan, Stateless
>>> p = QueryPlan("v", Scan("s", "s", [Column("a", "bigint")], True), None,
...               Stateless('SELECT "a" FROM __in', None, ["a"]), None, None,
...               [Column("a", "bigint")], False)
>>> print(explain_plan(p, "Materialize"))
Materialize v [append-only]
└─ Filter/Project (one DuckDB statement per batch) [append-only]
   └─ Scan s [append-only, no watermark]
"""

from __future__ import annotations

from sqlstream.plan.nodes import QueryPlan


def _edge(retracting: bool) -> str:
    return "retracting" if retracting else "append-only"


def explain_plan(plan: QueryPlan, root: str) -> str:
    lines: list[str] = [f"{root} {plan.name} [{_edge(plan.retracting)}]"]
    agg = plan.aggregate
    if agg is not None:
        lines.append(f"Project {', '.join(c.name for c in plan.schema)} [{_edge(plan.retracting)}]")
        keys = ", ".join(k for k, _ in agg.keys) or "(global)"
        state = f"state: {len(agg.accumulators)} accumulators per group"
        if agg.window_end_sql:
            state += ", dropped when the watermark passes the window end"
        emit = "on window close" if agg.emit_on_window_close else "on update"
        lines.append(
            f"Aggregate keys=[{keys}] calls=[{', '.join(agg.describe) or 'count(*)'}] "
            f"emit={emit} [{state}]"
        )
    stateless = "Filter/Project (one DuckDB statement per batch)"
    if plan.stateless.filter_sql:
        stateless += f" where {plan.stateless.filter_sql}"
    lines.append(f"{stateless} [{_edge(not plan.scan.append_only)}]")
    if plan.window:
        w = plan.window
        lines.append(f"WindowAssign TUMBLE({w.time_column}, {w.size_sql}) [append-only]")
    s = plan.scan
    wm = f"watermark {s.watermark_sql}" if s.watermark_sql else "no watermark"
    lines.append(f"Scan {s.source} [{_edge(not s.append_only)}, {wm}]")
    out = [lines[0]]
    for depth, line in enumerate(lines[1:]):
        out.append("   " * depth + "└─ " + line)
    return "\n".join(out)
