"""Relations under construction: a plan node plus how the query's names reach its columns.

After binding, every column reference is qualified (``"alias"."col"``). A :class:`Rel` maps
each (alias, column) pair visible at a point of the query to the physical column of the node
computing it, and :func:`compile_expr` rewrites an expression accordingly, for a given table
alias of the node's rows (``__in`` for a batch, ``l``/``r`` in a join).

>>> from sqlstream.types import Column
>>> from sqlstream.plan.nodes import Scan
>>> rel = Rel(Scan([Column("x", "bigint")], False, relation="s"), {("s", "x"): "x"})
>>> compile_expr(sqlglot.parse_one('"s"."x" + 1'), rel)
'"__in"."x" + 1'
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlglot
from sqlglot import exp

from sqlstream.errors import FeatureNotSupported
from sqlstream.plan.nodes import Node

D = "duckdb"


def q(name: str) -> str:
    """A DuckDB-quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


@dataclass
class Rel:
    node: Node
    #: (alias, column) -> physical column of node
    bindings: dict[tuple[str, str], str]

    @property
    def aliases(self) -> set[str]:
        return {a for a, _ in self.bindings}

    def physical(self, column: exp.Column) -> str | None:
        phys = self.bindings.get((column.table, column.name))
        if phys is None and not column.table:
            # Unqualified (sqlglot's rewrites produce a few): unique by column name.
            found = {p for (_, c), p in self.bindings.items() if c == column.name}
            phys = found.pop() if len(found) == 1 else None
        return phys


def compile_expr(expr: exp.Expression, rel: Rel, table: str = "__in") -> str:
    """DuckDB SQL of ``expr`` over rows of ``rel.node`` aliased ``table``."""

    def rewrite(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Column) and not isinstance(node.this, exp.Star):
            phys = rel.physical(node)
            if phys is None:
                raise FeatureNotSupported(
                    f'cannot resolve column "{node.sql("postgres")}" at this point of the query'
                )
            return exp.column(phys, table=table, quoted=True)
        return node

    return expr.copy().transform(rewrite).sql(D)


def references(expr: exp.Expression) -> set[str]:
    """Table aliases an expression's columns refer to."""
    return {c.table for c in expr.find_all(exp.Column)}


def parse(sql: str) -> exp.Expression:
    return sqlglot.parse_one(sql, read=D)
