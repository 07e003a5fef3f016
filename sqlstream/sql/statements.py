"""Typed statements: what :func:`sqlstream.sql.parser.parse` returns.

Every statement carries ``text`` (its exact SQL, without the trailing ``;``) and ``line`` (the
1-based line where it starts in the parsed input). Names follow Postgres: lower-cased unless
quoted. Queries stay sqlglot ASTs (the binder and planner consume them).

>>> from sqlstream.sql.parser import parse_one
>>> s = parse_one("DROP SOURCE IF EXISTS a, b CASCADE")
>>> s.kind, s.names, s.if_exists, s.cascade
('source', ['a', 'b'], True, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import exp

from sqlstream.connectors.base import Format
from sqlstream.types import Column


@dataclass
class Watermark:
    """``WATERMARK FOR column AS expr``; ``expr`` is the sqlglot AST of the bound."""

    column: str
    expr: exp.Expression


@dataclass(kw_only=True)
class Statement:
    """Base class: the statement's SQL text and the line it starts on (keyword-only fields,
    so subclasses take their own fields positionally: ``Show("sources", text="SHOW SOURCES")``).
    """

    text: str = ""
    line: int = 1


@dataclass
class CreateSource(Statement):
    name: str
    columns: list[Column]
    watermark: Watermark | None = None
    options: dict[str, str] = field(default_factory=dict)
    format: Format | None = None
    if_not_exists: bool = False


@dataclass
class CreateTable(Statement):
    name: str
    columns: list[Column]
    primary_key: list[str] = field(default_factory=list)
    watermark: Watermark | None = None
    options: dict[str, str] = field(default_factory=dict)
    format: Format | None = None
    if_not_exists: bool = False


@dataclass
class CreateMaterializedView(Statement):
    name: str
    query: exp.Query
    emit_on_window_close: bool = False
    if_not_exists: bool = False


@dataclass
class CreateSink(Statement):
    """A sink reads either a named relation (``FROM name``) or a query (``AS query``)."""

    name: str
    from_name: str | None = None
    query: exp.Query | None = None
    options: dict[str, str] = field(default_factory=dict)
    format: Format | None = None
    if_not_exists: bool = False


@dataclass
class Drop(Statement):
    kind: str  # 'source' | 'table' | 'materialized view' | 'sink' | 'view'
    names: list[str]
    if_exists: bool = False
    cascade: bool = False


@dataclass
class Show(Statement):
    """``what``: 'sources', 'tables', 'materialized views', 'sinks', 'jobs', 'checkpoints',
    'all' or a setting name (lower-case)."""

    what: str


@dataclass
class Describe(Statement):
    name: str


@dataclass
class Explain(Statement):
    statement: Statement


@dataclass
class Flush(Statement):
    pass


@dataclass
class SetVariable(Statement):
    """``SET name = value``; the value as text (``DEFAULT`` is 'default')."""

    name: str
    value: str


@dataclass
class Transaction(Statement):
    action: str  # 'begin' | 'commit' | 'rollback'


@dataclass
class Query(Statement):
    """SELECT, WITH ..., UNION/INTERSECT/EXCEPT, VALUES, TABLE name."""

    query: exp.Query


@dataclass
class Insert(Statement):
    ast: exp.Insert


@dataclass
class Update(Statement):
    ast: exp.Update


@dataclass
class Delete(Statement):
    ast: exp.Delete
