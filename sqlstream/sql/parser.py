"""SQL text -> typed statements (:mod:`sqlstream.sql.statements`).

The input is tokenized once with the :class:`~sqlstream.sql.dialect.SqlStream` dialect and cut at
``;``; each statement is parsed on its own and converted into a dataclass. Errors read like
Postgres's and carry ``line``/``col`` (1-based), ``token`` and ``position`` (1-based character
offset into the whole input, as Postgres reports it): 42601 for syntax errors, 0A000 for
statements that are recognised but not supported.

>>> [type(s).__name__ for s in parse("SELECT 1; -- nothing\\n; FLUSH;")]
['Query', 'Flush']
>>> parse_one("SHOW MATERIALIZED VIEWS").what
'materialized views'
>>> try:
...     parse("SELECT 1;\\nSELECT * FROMM t")
... except SqlSyntaxError as e:
...     print(e.message, e.line, e.col, e.position)
syntax error at or near "FROMM" 2 10 20
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from sqlstream.connectors.base import Format
from sqlstream.errors import FeatureNotSupported, SqlStreamError, SqlSyntaxError, UndefinedColumn
from sqlstream.sql import dialect as d
from sqlstream.sql import statements as st
from sqlstream.types import Column, normalize_type

_DIALECT = d.SqlStream()
E = TypeVar("E", bound=SqlStreamError)


# -- positions ------------------------------------------------------------------------------


def line_col(sql: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a 0-based character offset.

    >>> line_col("ab\\ncd", 3)
    (2, 1)
    """
    line = sql.count("\n", 0, offset) + 1
    return line, offset - (sql.rfind("\n", 0, offset) + 1) + 1


def _error(
    cls: type[E],
    message: str,
    sql: str,
    offset: int,
    token: str | None = None,
    **kw: str,
) -> E:
    line, col = line_col(sql, offset)
    return cls(message, line=line, col=col, token=token, position=offset + 1, **kw)


def _error_at(
    cls: type[SqlStreamError],
    message: str,
    sql: str,
    node: exp.Expr | None,
    fallback: Token,
    **kw: str,
) -> SqlStreamError:
    """An error located at ``node`` (its first identifier with a position) or ``fallback``."""
    start = node_start(node) if node is not None else None
    if start is None:
        return _error(cls, message, sql, fallback.start, _raw(sql, fallback), **kw)
    return _error(cls, message, sql, start, None, **kw)


def node_start(node: exp.Expr) -> int | None:
    """0-based offset of the earliest positioned token inside ``node`` (parser meta)."""
    starts = [n.meta["start"] for n in node.walk() if n.meta.get("start") is not None]
    return min(starts) if starts else None


def _raw(sql: str, token: Token) -> str:
    return sql[token.start : token.end + 1]


def _syntax_error(
    sql: str, token: Token | None, chunk: list[Token], terminator: Token | None
) -> SqlSyntaxError:
    token = token or terminator
    if token is None:  # the input ended inside the statement
        offset = chunk[-1].end + 1
        line, col = line_col(sql, offset)
        return SqlSyntaxError(
            "syntax error at end of input", line=line, col=col, position=offset + 1
        )
    raw = _raw(sql, token)
    return _error(SqlSyntaxError, f'syntax error at or near "{raw}"', sql, token.start, raw)


# -- tokenizing and splitting ---------------------------------------------------------------

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$")


def _unterminated(sql: str) -> SqlSyntaxError:
    """The 42601 error for the literal or comment the input leaves open (as Postgres words it).

    >>> print(_unterminated("SELECT 1, 'ab").message)
    unterminated quoted string at or near "'ab"
    """
    i = 0
    while i < len(sql):
        end, what, start = None, "", i
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            end = len(sql) if end < 0 else end
        elif sql.startswith("/*", i):
            what, end = "unterminated /* comment", sql.find("*/", i + 2)
            end = end + 2 if end >= 0 else None
        elif sql[i] in "'\"":
            quote = sql[i]
            what = "unterminated quoted " + ("string" if quote == "'" else "identifier")
            backslash = quote == "'" and i > 0 and sql[i - 1] in "eE"
            start = i - 1 if backslash else i
            j = i + 1
            while (j := sql.find(quote, j)) >= 0:
                if backslash and sql[j - 1] == "\\":
                    j += 1
                elif sql.startswith(quote * 2, j):
                    j += 2
                else:
                    break
            end = j + 1 if j >= 0 else None
        elif (m := _DOLLAR_TAG.match(sql, i)) and not (
            i and (sql[i - 1].isalnum() or sql[i - 1] == "_")
        ):
            what, end = "unterminated dollar-quoted string", sql.find(m.group(), m.end())
            end = end + len(m.group()) if end >= 0 else None
        else:
            end = i + 1
        if end is None:
            near = sql[start:]
            line, col = line_col(sql, start)
            return SqlSyntaxError(
                f'{what} at or near "{near}"', line=line, col=col, token=near, position=start + 1
            )
        i = end
    line, col = line_col(sql, len(sql))
    return SqlSyntaxError("syntax error at end of input", line=line, col=col, position=len(sql) + 1)


def tokenize(sql: str) -> list[Token]:
    """Tokens of the whole input; an unterminated literal or comment is a 42601 error."""
    try:
        return _DIALECT.tokenize(sql)
    except TokenError:
        raise _unterminated(sql) from None


def split(tokens: list[Token]) -> list[tuple[list[Token], Token | None]]:
    """Non-empty statements as (tokens, terminating ``;`` or None)."""
    chunks: list[tuple[list[Token], Token | None]] = []
    current: list[Token] = []
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            if current:
                chunks.append((current, token))
            current = []
        else:
            current.append(token)
    if current:
        chunks.append((current, None))
    return chunks


# -- entry points ---------------------------------------------------------------------------


def parse(sql: str) -> list[st.Statement]:
    """Parse ``;``-separated statements (comments allowed, empty statements ignored)."""
    out = []
    for chunk, terminator in split(tokenize(sql)):
        parser = _DIALECT.parser()
        try:
            trees = parser.parse(chunk, sql)
        except ParseError as e:
            token = getattr(e, "token", None) if hasattr(e, "token") else _guess(e, chunk, sql)
            raise _syntax_error(sql, token, chunk, terminator) from None
        tree = trees[0]
        assert tree is not None
        out.append(_convert(tree, _Ctx(sql, chunk)))
    return out


def parse_one(sql: str) -> st.Statement:
    """Parse exactly one statement.

    >>> parse_one("SET application_name TO 'psql'")
    SetVariable(text="SET application_name TO 'psql'", line=1, name='application_name', value='psql')
    """
    statements = parse(sql)
    if len(statements) != 1:
        offset = len(sql) if not statements else tokenize(sql)[0].start
        kind = "an empty" if not statements else "more than one"
        raise _error(SqlSyntaxError, f"expected one statement, got {kind} input", sql, offset)
    return statements[0]


def _guess(error: ParseError, chunk: list[Token], sql: str) -> Token | None:
    """The token a ParseError raised outside ``raise_error`` points at (by line and column)."""
    info = error.errors[0] if error.errors else {}
    for token in chunk:
        if (token.line, token.col) == (info.get("line"), info.get("col")):
            return token
    return chunk[-1]


# -- AST -> statements ----------------------------------------------------------------------


class _Ctx:
    """The input and one statement's tokens, for its text and error positions."""

    def __init__(self, sql: str, tokens: list[Token]) -> None:
        self.sql = sql
        self.tokens = tokens

    @property
    def text(self) -> str:
        return self.sql[self.tokens[0].start : self.tokens[-1].end + 1]

    @property
    def line(self) -> int:
        return line_col(self.sql, self.tokens[0].start)[0]

    def unsupported(self, what: str, node: exp.Expr | None = None) -> SqlStreamError:
        return _error_at(
            FeatureNotSupported, f"{what} is not supported", self.sql, node, self.tokens[0]
        )

    def error(
        self, cls: type[SqlStreamError], message: str, node: exp.Expr | None, **kw: str
    ) -> SqlStreamError:
        return _error_at(cls, message, self.sql, node, self.tokens[0], **kw)


def _convert(tree: exp.Expr, ctx: _Ctx) -> st.Statement:
    for types, convert in _CONVERTERS:
        if isinstance(tree, types):
            statement = convert(tree, ctx)
            statement.text, statement.line = ctx.text, ctx.line
            return statement
    if isinstance(tree, exp.Command):
        raise ctx.unsupported(str(tree.this).upper())
    words = [t.text.upper() for t in ctx.tokens[:2]]
    two = len(words) == 2 and words[0] in ("CREATE", "ALTER", "DROP")
    raise ctx.unsupported(" ".join(words) if two else words[0])


def ident(node: exp.Expr) -> str:
    """A name by Postgres rules: lower-cased unless quoted.

    >>> ident(exp.to_identifier("Foo")), ident(exp.to_identifier("Foo", quoted=True))
    ('foo', 'Foo')
    """
    if isinstance(node, exp.Identifier):
        return node.this if node.quoted else node.this.lower()
    if isinstance(node, (exp.Table, exp.Column)):
        return ".".join(ident(p) for p in node.parts)
    if isinstance(node, exp.Dot):
        return ".".join(ident(p) for p in node.flatten())
    return node.name.lower()


def _value(node: exp.Expr) -> str:
    if isinstance(node, exp.Boolean):
        return "true" if node.this else "false"
    if isinstance(node, (exp.Literal, exp.Var)):
        return node.name
    if isinstance(node, exp.Tuple):
        return ", ".join(_value(e) for e in node.expressions)
    return node.sql(_DIALECT)


def _properties(
    create: exp.Create, ctx: _Ctx, allowed: tuple[type, ...] = ()
) -> tuple[dict[str, str], Format | None]:
    """Options of ``WITH (...)`` and the ``FORMAT ... ENCODE ...`` clause."""
    options: dict[str, str] = {}
    fmt = encode = None
    props = create.args.get("properties")
    for prop in props.expressions if props else []:
        if type(prop) is exp.Property:
            key = prop.name
            if key in options:
                raise ctx.error(SqlSyntaxError, f'option "{key}" specified more than once', prop)
            options[key] = _value(prop.args["value"])
        elif isinstance(prop, exp.FileFormatProperty):
            fmt = prop.name.lower()
        elif isinstance(prop, exp.EncodeProperty):
            encode = prop
        elif not isinstance(prop, allowed):
            raise ctx.unsupported(prop.sql(_DIALECT), prop)
    if fmt is None or encode is None:
        return options, None
    enc_opts = encode.args.get("properties")
    enc_options = (
        {p.name: _value(p.args["value"]) for p in enc_opts.expressions} if enc_opts else {}
    )
    return options, Format(fmt, encode.name.lower(), enc_options)


_FLAGS = ("replace", "refresh", "unique", "concurrently", "clone", "indexes", "begin")


def _check_create(create: exp.Create, ctx: _Ctx) -> None:
    for flag in _FLAGS:
        if create.args.get(flag):
            raise ctx.unsupported(f"CREATE with {flag.upper()}")


def _schema(
    create: exp.Create, ctx: _Ctx, table: bool
) -> tuple[list[Column], list[str], st.Watermark | None]:
    """Columns, primary key and watermark of ``CREATE SOURCE|TABLE name (...)``."""
    columns: list[Column] = []
    primary_key: list[str] = []
    pk_clauses: list[exp.Expr] = []
    watermark, watermark_node = None, None
    schema = create.this
    for item in schema.expressions if isinstance(schema, exp.Schema) else []:
        if isinstance(item, exp.ColumnDef):
            name = ident(item.this)
            if any(c.name == name for c in columns):
                raise ctx.error(
                    SqlStreamError,
                    f'column "{name}" specified more than once',
                    item.this,
                    sqlstate="42701",
                )
            kind = item.args.get("kind")
            if kind is None:
                raise ctx.error(SqlSyntaxError, f'column "{name}" has no type', item.this)
            try:
                columns.append(Column(name, normalize_type(kind)))
            except FeatureNotSupported as e:
                raise ctx.error(FeatureNotSupported, e.message, item.this) from None
            for constraint in item.constraints:
                kind_ = constraint.args.get("kind")
                if isinstance(kind_, exp.PrimaryKeyColumnConstraint) and table:
                    primary_key.append(name)
                    pk_clauses.append(item.this)
                elif not isinstance(kind_, exp.NotNullColumnConstraint):
                    raise ctx.unsupported(
                        f"column constraint {constraint.sql(_DIALECT)}", item.this
                    )
        elif isinstance(item, exp.WatermarkColumnConstraint):
            if watermark is not None:
                raise ctx.unsupported("more than one WATERMARK", item.this)
            watermark = st.Watermark(ident(item.this), item.expression)
            watermark_node = item.this
        elif isinstance(item, exp.PrimaryKey) and table:
            primary_key = [ident(e) for e in item.expressions]
            pk_clauses.append(item)
        else:
            raise ctx.unsupported(item.sql(_DIALECT), item)
    if len(pk_clauses) > 1:
        raise ctx.error(
            SqlStreamError, "multiple primary keys are not allowed", pk_clauses[1], sqlstate="42P16"
        )
    names = {c.name for c in columns}
    keys = [(k, pk_clauses[0]) for k in primary_key]
    keys += [(watermark.column, watermark_node)] if watermark else []
    for key, node in keys:
        if key not in names:
            raise ctx.error(UndefinedColumn, f'column "{key}" does not exist', node)
    return columns, primary_key, watermark


def _create(create: exp.Create, ctx: _Ctx) -> st.Statement:
    _check_create(create, ctx)
    kind = str(create.kind).upper()
    name_node = create.this.this if isinstance(create.this, exp.Schema) else create.this
    name = ident(name_node)
    exists = bool(create.args.get("exists"))
    if kind in ("SOURCE", "TABLE"):
        if create.expression is not None:
            raise ctx.unsupported(f"CREATE {kind} ... AS", create.expression)
        columns, pk, watermark = _schema(create, ctx, table=kind == "TABLE")
        options, fmt = _properties(create, ctx)
        if kind == "SOURCE":
            return st.CreateSource(name, columns, watermark, options, fmt, exists)
        return st.CreateTable(name, columns, pk, watermark, options, fmt, exists)
    props = create.args.get("properties")
    prop_types = {type(p) for p in props.expressions} if props else set()
    if kind == "VIEW" and exp.MaterializedProperty in prop_types:
        bad = prop_types - {exp.MaterializedProperty, d.EmitOnWindowCloseProperty}
        if bad:
            raise ctx.unsupported(f"CREATE MATERIALIZED VIEW with {bad.pop().__name__}")
        return st.CreateMaterializedView(
            name, _query(create.expression, ctx), d.EmitOnWindowCloseProperty in prop_types, exists
        )
    if kind == "SINK":
        options, fmt = _properties(create, ctx)
        source = create.expression
        if isinstance(source, exp.Table):
            return st.CreateSink(name, ident(source), None, options, fmt, exists)
        return st.CreateSink(name, None, _query(source, ctx), options, fmt, exists)
    raise ctx.unsupported(f"CREATE {kind}")


def _query(tree: exp.Expr, ctx: _Ctx) -> exp.Query:
    """A query AST; a bare VALUES list becomes ``SELECT * FROM (VALUES ...)`` named as Postgres
    names it (column1, column2, ...)."""
    if isinstance(tree, exp.Subquery) and not any(v for k, v in tree.args.items() if k != "this"):
        return _query(tree.this, ctx)
    if isinstance(tree, exp.Values):
        width = len(tree.expressions[0].expressions) if tree.expressions else 0
        alias = exp.TableAlias(
            this=exp.to_identifier("*VALUES*", quoted=True),
            columns=[exp.to_identifier(f"column{i + 1}") for i in range(width)],
        )
        tree.set("alias", alias)
        return exp.select("*").from_(tree)
    if not isinstance(tree, exp.Query):
        raise ctx.unsupported(type(tree).__name__.upper(), tree)
    return tree


_DROP_KINDS = {"SOURCE": "source", "TABLE": "table", "SINK": "sink", "VIEW": "view"}


def _drop(drop: exp.Drop, ctx: _Ctx) -> st.Statement:
    kind = _DROP_KINDS.get(str(drop.kind).upper())
    if kind is None:
        raise ctx.unsupported(f"DROP {drop.kind}")
    if drop.args.get("materialized"):
        kind = "materialized view"
    return st.Drop(
        kind,
        [ident(t) for t in drop.args.get("tables") or []],
        bool(drop.args.get("exists")),
        bool(drop.args.get("cascade")),
    )


def _describe(node: exp.Describe, ctx: _Ctx) -> st.Statement:
    if not isinstance(node.this, exp.Table) or not isinstance(node.this.this, exp.Identifier):
        raise ctx.unsupported("DESCRIBE of anything but a relation", node.this)
    return st.Describe(ident(node.this))


def _explain(node: d.Explain, ctx: _Ctx) -> st.Statement:
    inner = _Ctx(ctx.sql, ctx.tokens[1:])
    if isinstance(node.this, d.Explain):
        raise inner.unsupported("EXPLAIN EXPLAIN")
    return st.Explain(_convert(node.this, inner))


def _set(node: exp.Set, ctx: _Ctx) -> st.Statement:
    item = node.expressions[0]
    assignment = item.this
    return st.SetVariable(assignment.this.name, _value(assignment.expression))


def _rollback(node: exp.Rollback, ctx: _Ctx) -> st.Statement:
    if node.args.get("savepoint"):
        raise ctx.unsupported("ROLLBACK TO SAVEPOINT")
    return st.Transaction("rollback")


_Converter = Callable[[exp.Expr, _Ctx], st.Statement]
_CONVERTERS: list[tuple[type | tuple[type, ...], _Converter]] = [
    (exp.Create, _create),  # type: ignore[list-item]
    (exp.Drop, _drop),  # type: ignore[list-item]
    ((exp.Query, exp.Values), lambda t, c: st.Query(_query(t, c))),
    (exp.Insert, lambda t, c: st.Insert(t)),  # type: ignore[arg-type]
    (exp.Update, lambda t, c: st.Update(t)),  # type: ignore[arg-type]
    (exp.Delete, lambda t, c: st.Delete(t)),  # type: ignore[arg-type]
    (exp.Show, lambda t, c: st.Show(t.name)),
    (exp.Describe, _describe),  # type: ignore[list-item]
    (d.Explain, _explain),  # type: ignore[list-item]
    (d.Flush, lambda t, c: st.Flush()),
    (exp.Set, _set),  # type: ignore[list-item]
    (exp.Transaction, lambda t, c: st.Transaction("begin")),
    (exp.Commit, lambda t, c: st.Transaction("commit")),
    (exp.Rollback, _rollback),  # type: ignore[list-item]
]
