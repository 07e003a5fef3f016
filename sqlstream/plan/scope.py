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

    return expr.copy().transform(rewrite).transform(_split_once).sql(D)


def _split_once(node: exp.Expression) -> exp.Expression:
    """``split_part(s, 'd', n)`` as the n-th item of ``string_split(s, 'd')``: DuckDB's
    split_part splits the string anew at every call, while several items of one split are
    one split for its optimizer (common subexpressions; three parts of one URL, as in Nexmark
    q22: 2.6x faster). Only for a literal, non-empty delimiter and a literal, non-zero
    position, where the two agree (also with Postgres): '' past the last field, NULL for a
    NULL string.

    >>> _split_once(sqlglot.parse_one("split_part(u, '/', -2)", read=D)).sql(D)
    "COALESCE(STR_SPLIT(u, '/')[-2], CASE WHEN NOT u IS NULL THEN '' END)"
    """
    if not isinstance(node, exp.SplitPart):
        return node
    delimiter, index = node.args.get("delimiter"), node.args.get("part_index")
    sign = 1
    if isinstance(index, exp.Neg):
        index, sign = index.this, -1
    if not (
        isinstance(delimiter, exp.Literal) and delimiter.is_string and delimiter.this
        and isinstance(index, exp.Literal) and not index.is_string and index.this.isdigit()
        and int(index.this) != 0
    ):  # fmt: skip
        return node
    text = node.this.transform(_split_once).sql(D)  # a split_part inside is not visited
    return sqlglot.parse_one(
        f"coalesce(string_split({text}, {delimiter.sql(D)})[{sign * int(index.this)}], "
        f"CASE WHEN {text} IS NOT NULL THEN '' END)",
        read=D,
    )


def references(expr: exp.Expression) -> set[str]:
    """Table aliases an expression's columns refer to."""
    return {c.table for c in expr.find_all(exp.Column)}


def parse(sql: str) -> exp.Expression:
    return sqlglot.parse_one(sql, read=D)
