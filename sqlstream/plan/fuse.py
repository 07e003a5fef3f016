"""Fusing adjacent stateless steps into one DuckDB statement.

A filter over a window assignment over a projection is one statement per batch, not three:
each step's ``__in`` becomes the step below it as a subquery, and DuckDB's optimizer does
the rest. The steps under an aggregate go into its pre-projection the same way, so a batch
is folded into partial aggregates by one statement, without materialising the filtered and
windowed rows in between.

>>> from sqlstream.types import Column
>>> from sqlstream.plan.nodes import Scan, Stateless
>>> cols = [Column("a", "bigint")]
>>> inner = Stateless(cols, False, [Scan(cols, False, relation="s")], sql="SELECT * FROM __in WHERE a > 1")
>>> outer = Stateless(cols, False, [inner], sql="SELECT a * 2 AS a FROM __in")
>>> fused = fuse(outer)
>>> fused.sql, type(fused.inputs[0]).__name__
('SELECT a * 2 AS a FROM (SELECT * FROM __in WHERE a > 1) AS __in', 'Scan')
"""

from __future__ import annotations

import re

from sqlstream.plan.nodes import Aggregate, Node, Stateless


def fuse(node: Node) -> Node:
    node.inputs = [fuse(i) for i in node.inputs]
    if not node.inputs or not isinstance(node.inputs[0], Stateless):
        return node
    inner = node.inputs[0]
    if isinstance(node, Stateless) and _reads_in_once(node.sql):
        node.sql = _substitute_from(node.sql, inner.sql)
        node.what = f"{inner.what} + {node.what}"
        node.inputs = inner.inputs
        node.renames = None  # one statement now, not a selection of the input's columns
    elif isinstance(node, Aggregate) and _reads_in_once(node.pre_sql):
        node.pre_sql = _substitute_from(node.pre_sql, inner.sql)
        node.fused = inner.what
        node.inputs = inner.inputs
    return node


def _reads_in_once(sql: str) -> bool:
    return len(re.findall(r"\bFROM __in\b", sql)) == 1


def _substitute_from(outer_sql: str, inner_sql: str) -> str:
    return re.sub(r"\bFROM __in\b", lambda _: f"FROM ({inner_sql}) AS __in", outer_sql, count=1)
