"""EXPLAIN: the plan as a tree, with how each step is maintained.

>>> from sqlstream.types import Column
>>> from sqlstream.plan.nodes import QueryPlan, Scan, Stateless
>>> cols = [Column("a", "bigint")]
>>> p = QueryPlan("v", Stateless(cols, False, [Scan(cols, False, relation="s")],
...               sql='SELECT "a" FROM __in', what="Project"))
>>> print(explain_plan(p, "Materialize"))
Materialize v [append-only]
└─ Project (one DuckDB statement per batch) [append-only]
   └─ Scan s (source, no watermark) [append-only]
"""

from __future__ import annotations

from sqlstream.plan.nodes import Node, QueryPlan


def _edge(node: Node) -> str:
    return "retracting" if node.retracting else "append-only"


def explain_plan(plan: QueryPlan, root: str) -> str:
    lines = [f"{root} {plan.name} [{_edge(plan.root)}]"]

    def walk(node: Node, prefix: str, last: bool) -> None:
        lines.append(f"{prefix}{'└─ ' if last else '├─ '}{node.label()} [{_edge(node)}]")
        child_prefix = prefix + ("   " if last else "│  ")
        for i, child in enumerate(node.inputs):
            walk(child, child_prefix, i == len(node.inputs) - 1)

    walk(plan.root, "", True)
    return "\n".join(lines)
