"""Bound parameters: their types, and their values written into the statement as literals.

sqlstream's engine takes SQL text, so a bound statement is the prepared text with each
``$n`` replaced by a literal of the parameter's value: numbers are validated and written
back from their parsed value, everything else is a quoted string literal (with a cast to
the parameter's type), so a value can never become SQL.

A parameter the client did not type (OID 0) gets the type of what it is compared with,
cast to, or used as (``LIMIT $1`` is a bigint), as Postgres infers it; otherwise text.

>>> from sqlstream.sql.parser import parse_one
>>> q = parse_one("SELECT * FROM v WHERE k = $1 AND name = $2 LIMIT $3").query
>>> infer_types(q, {"v": [Column("k", "integer"), Column("name", "varchar")]}, [0, 0, 0])
[23, 1043, 20]
>>> bind_text("SELECT * FROM v WHERE k = $1", [b"5"], [0], [23])
'SELECT * FROM v WHERE k = 5'
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlglot import exp

from sqlstream.errors import SqlStreamError
from sqlstream.server.sqltext import placeholders, substitute
from sqlstream.server.values import BASE_OIDS, decode_param, to_literal, type_oid
from sqlstream.types import Column, normalize_type

UNTYPED = (0, 705)


def param_count(text: str, declared: Sequence[int]) -> int:
    used = placeholders(text)
    return max([len(declared), *used]) if used else len(declared)


def _type_of(node: exp.Expression, columns: dict[str, str]) -> str | None:
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Column):
        return columns.get(node.name)
    if isinstance(node, exp.Cast):
        try:
            return normalize_type(node.to)
        except SqlStreamError:
            return None
    if isinstance(node, exp.Literal):
        if node.is_string:
            return "varchar"
        return "bigint" if node.name.lstrip("-").isdigit() else "numeric"
    return None


def infer_types(
    query: exp.Expression, schemas: dict[str, list[Column]], declared: Sequence[int]
) -> list[int]:
    """The OID of each parameter: as declared, else inferred from its context, else text."""
    count = max([len(declared)] + [int(p.name) for p in query.find_all(exp.Parameter) if p.name.isdigit()])
    oids = list(declared) + [0] * (count - len(declared))
    columns: dict[str, str] = {}
    for table in query.find_all(exp.Table):
        for c in schemas.get(table.name, []):
            columns.setdefault(c.name, c.type)
    for p in query.find_all(exp.Parameter):
        if not p.name.isdigit():
            continue
        n = int(p.name)
        if oids[n - 1] not in UNTYPED:
            continue
        node: exp.Expression = p
        parent = p.parent
        while isinstance(parent, exp.Paren):
            node, parent = parent, parent.parent
        found: str | None = None
        if isinstance(parent, exp.Cast):
            found = _type_of(parent, columns)
        elif isinstance(parent, exp.Limit | exp.Offset | exp.Fetch):
            found = "bigint"
        elif isinstance(parent, exp.In | exp.Between):
            found = _type_of(parent.this, columns)
        elif isinstance(parent, exp.Binary) and not isinstance(parent, exp.And | exp.Or):
            other = parent.expression if parent.this is node else parent.this
            found = _type_of(other, columns)
        if found:
            oids[n - 1] = type_oid(found)
    return [25 if o in UNTYPED else o for o in oids]


def null_literals(oids: Sequence[int]) -> dict[int, str]:
    """Typed NULLs for every parameter: how a statement is described before it is bound."""
    return {i + 1: to_literal(None, oid if oid not in UNTYPED else BASE_OIDS["varchar"])
            for i, oid in enumerate(oids)}


def bind_text(
    text: str,
    values: Sequence[bytes | None],
    formats: Sequence[int],
    oids: Sequence[int],
) -> str:
    """The statement text with its parameters' values in place of ``$n``."""
    if len(values) != len(oids) and placeholders(text):
        needed = max(placeholders(text))
        if len(values) < needed:
            raise SqlStreamError(
                f"bind message supplies {len(values)} parameters, but prepared statement "
                f"requires {needed}", sqlstate="08P01",
            )
    if formats and len(formats) not in (1, len(values)):
        raise SqlStreamError(
            f"bind message has {len(formats)} parameter formats but {len(values)} parameters",
            sqlstate="08P01",
        )
    literals: dict[int, str] = {}
    for i, raw in enumerate(values):
        fmt = formats[0] if len(formats) == 1 else (formats[i] if formats else 0)
        oid = oids[i] if i < len(oids) else 0
        value = None if raw is None else decode_param(raw, fmt, oid)
        literals[i + 1] = to_literal(value, oid)
    for n in placeholders(text):
        if n not in literals:
            raise SqlStreamError(f"there is no parameter ${n}", sqlstate="42P02")
    return substitute(text, literals)
