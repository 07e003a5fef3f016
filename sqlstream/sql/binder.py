"""Binding: resolve a query's relations and columns against the catalog and type its output.

sqlglot's optimizer does the work (``qualify`` for names, ``annotate_types`` for types, with
DuckDB's typing rules since DuckDB runs the query); this module feeds it the catalog through
``resolve`` and turns its failures into Postgres errors with positions.

The windowing table functions ``TUMBLE(rel, ts, size)`` and ``HOP(rel, ts, slide, size)`` act as
a relation with ``rel``'s columns plus ``window_start`` and ``window_end`` (of ``ts``'s type).
Without an alias they are named after ``rel``. The bound query keeps the function node (aliased)
for the planner.

>>> from sqlstream.sql.parser import parse_one
>>> catalog = {"bids": [Column("price", "bigint"), Column("ts", "timestamp")]}
>>> q = parse_one("SELECT count(*), max(price) AS top, window_start "
...               "FROM TUMBLE(bids, ts, INTERVAL '1' MINUTE) GROUP BY window_start").query
>>> b = bind_query(q, catalog.get)
>>> [(c.name, c.type) for c in b.schema], b.relations
([('count', 'bigint'), ('top', 'bigint'), ('window_start', 'timestamp')], ['bids'])
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.annotate_types import annotate_types
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope
from sqlglot.schema import MappingSchema

from sqlstream.errors import (
    FeatureNotSupported,
    SqlStreamError,
    UndefinedColumn,
    UndefinedTable,
)
from sqlstream.sql.dialect import WINDOW_FUNCTIONS, SqlStream
from sqlstream.types import Column, duckdb_type, normalize_type

Resolver = Callable[[str], "list[Column] | None"]

_DIALECT = SqlStream()
_PLACEHOLDER = "__sqlstream_window_"
# (minimum, maximum) arguments: TUMBLE(rel, ts, size[, offset]), HOP(rel, ts, slide, size[, offset])
_ARITY = {"TUMBLE": (3, 4), "HOP": (4, 5)}


@dataclass
class BoundQuery:
    """A qualified query (every column carries its table alias, ``*`` expanded, outputs aliased
    with their Postgres names), its output schema and the catalog relations it reads."""

    query: exp.Query
    schema: list[Column]
    relations: list[str]


def located(
    cls: type[SqlStreamError], message: str, node: exp.Expr | None, **kw: Any
) -> SqlStreamError:
    """An error at the first parsed token inside ``node`` (when the parser recorded one)."""
    metas = [n.meta for n in node.walk() if n.meta.get("start") is not None] if node else []
    if not metas:
        return cls(message, **kw)
    meta = min(metas, key=lambda m: m["start"])
    col = meta["col"] - (meta["end"] - meta["start"])  # the meta's col is the token's last char
    return cls(message, line=meta["line"], col=col, position=meta["start"] + 1, **kw)


def _name(node: exp.Expr) -> str:
    """Normalised dotted name of a table or column reference."""
    return (
        ".".join(p.name for p in node.parts)
        if isinstance(node, (exp.Table, exp.Column))
        else node.name
    )


# -- relations ------------------------------------------------------------------------------


class _Catalog:
    """What the query reads: sqlglot schema entries, relations in order, window placeholders."""

    def __init__(self, resolve: Resolver) -> None:
        self.resolve = resolve
        self.schema: dict[str, dict[str, str]] = {}
        self.relations: list[str] = []
        self.windows: dict[str, exp.Anonymous] = {}

    def columns(self, name: str, node: exp.Expr) -> list[Column]:
        cols = self.resolve(name)
        if cols is None:
            raise located(UndefinedTable, f'relation "{name}" does not exist', node)
        if name not in self.relations:
            self.relations.append(name)
        self.schema[name] = {c.name: c.type for c in cols}
        return cols


def _position(node: exp.Expr) -> int:
    starts = [n.meta["start"] for n in node.walk() if n.meta.get("start") is not None]
    return min(starts) if starts else 1 << 62


def _bind_relations(query: exp.Query, catalog: _Catalog) -> None:
    """Resolve every table reference; replace window functions by placeholder tables."""
    ctes = {cte.alias_or_name: cte for cte in query.find_all(exp.CTE)}
    tables = sorted(query.find_all(exp.Table), key=_position)
    for table in tables:
        if isinstance(table.this, exp.Anonymous) and table.this.name.upper() in WINDOW_FUNCTIONS:
            _bind_window(table, catalog, ctes)
        elif not isinstance(table.this, exp.Identifier):
            raise located(
                FeatureNotSupported,
                f"table function {table.this.sql(_DIALECT)} is not supported in FROM",
                table,
            )
        elif table.name in ctes and not table.db:
            continue
        else:
            name = _name(table)
            catalog.columns(name, table)
            if table.db:  # flatten "schema.name" to the catalog's one-level namespace
                table.set("this", exp.to_identifier(name, quoted=True))
                table.set("db", None)
                table.set("catalog", None)


def _bind_window(table: exp.Table, catalog: _Catalog, ctes: dict[str, exp.CTE]) -> None:
    fn: exp.Anonymous = table.this
    kind = fn.name.upper()
    low, high = _ARITY[kind]
    args = fn.expressions
    if not low <= len(args) <= high or not all(isinstance(a, exp.Column) for a in args[:2]):
        usage = (
            "relation, time column, size"
            if kind == "TUMBLE"
            else "relation, time column, slide, size"
        )
        raise located(SqlStreamError, f"{kind} takes ({usage}[, offset])", fn, sqlstate="42883")
    rel, ts = args[0], args[1]
    rel_name = _name(rel)
    if rel_name in ctes and not rel.table:
        cols = _cte_columns(ctes[rel_name], catalog.resolve)
    else:
        cols = catalog.columns(rel_name, rel)
    ts_col = next((c for c in cols if c.name == ts.name), None)
    if ts_col is None or ts.table:
        raise located(UndefinedColumn, f'column "{_name(ts)}" does not exist', ts)
    if ts_col.type not in ("timestamp", "timestamptz", "date"):
        raise located(
            SqlStreamError,
            f'{kind} time column "{ts.name}" must be a timestamp, not {ts_col.type}',
            ts,
            sqlstate="42804",
        )
    placeholder = f"{_PLACEHOLDER}{len(catalog.windows)}"
    catalog.schema[placeholder] = {
        **{c.name: c.type for c in cols},
        "window_start": ts_col.type,
        "window_end": ts_col.type,
    }
    call = exp.Anonymous(
        this=kind,
        expressions=[
            exp.column(rel_name, quoted=True),  # the catalog's (or CTE's) name
            exp.column(ts.name, quoted=True),
            *args[2:],
        ],
    )
    catalog.windows[placeholder] = call
    alias = table.args.get("alias") or exp.TableAlias(this=exp.to_identifier(rel.name))
    table.replace(exp.Table(this=exp.to_identifier(placeholder), alias=alias))


def _cte_columns(cte: exp.CTE, resolve: Resolver) -> list[Column]:
    """Output schema of a CTE (bound with the CTEs before it), for a window over it."""
    with_ = cte.parent
    earlier = with_.expressions[: with_.expressions.index(cte)] if with_ else []
    body = cte.this.copy()
    if earlier:
        body.set("with_", exp.With(expressions=[c.copy() for c in earlier]))
    schema = bind_query(body, resolve).schema
    names = [c.name for c in cte.args["alias"].columns] if cte.args["alias"].columns else []
    return [Column(n, c.type) for n, c in zip(names, schema, strict=False)] + schema[len(names) :]


# -- columns --------------------------------------------------------------------------------


def _source_columns(source: Any, catalog: _Catalog) -> list[str] | None:
    if isinstance(source, exp.Table):
        cols = catalog.schema.get(source.name)
        return list(cols) if cols is not None else None
    if isinstance(source, Scope) and isinstance(source.expression, exp.Query):
        return list(source.expression.named_selects)
    return None  # VALUES, UNNEST, ...: not checked here


def _check_columns(query: exp.Query, catalog: _Catalog) -> None:
    """Every column must name a column of a visible source (sqlglot leaves unknown ones
    unqualified rather than failing)."""
    for scope in traverse_scope(query):
        if not isinstance(scope.expression, exp.Select):
            continue  # a set operation's ORDER BY names its outputs
        for col in scope.columns:
            if isinstance(col.this, exp.Star):
                continue
            if not col.table:
                owners = [
                    n
                    for n, s in scope.sources.items()
                    if col.name in (_source_columns(s, catalog) or ())
                ]
                if len(owners) > 1:
                    raise located(
                        SqlStreamError,
                        f'column reference "{col.name}" is ambiguous',
                        col,
                        sqlstate="42702",
                    )
                raise located(UndefinedColumn, f'column "{col.name}" does not exist', col)
            source, outer = None, scope
            while outer is not None and source is None:
                source, outer = outer.sources.get(col.table), outer.parent
            if source is None:
                raise located(
                    UndefinedTable, f'missing FROM-clause entry for table "{col.table}"', col
                )
            names = _source_columns(source, catalog)
            if names is not None and col.name not in names:
                raise located(UndefinedColumn, f"column {col.table}.{col.name} does not exist", col)


def _unknown_column(error: OptimizeError, query: exp.Query) -> SqlStreamError:
    match = re.search(r"Unknown column: (\S+)", str(error))
    if not match:
        return FeatureNotSupported(str(error).splitlines()[0])
    name = match.group(1)
    node = next((c for c in query.find_all(exp.Column) if c.name == name), None)
    table = f"{node.table}." if node is not None and node.table else ""
    return located(UndefinedColumn, f"column {table}{name} does not exist", node)


# -- output names and types -----------------------------------------------------------------

# Postgres names a cast's column after the type when the operand has no name.
_PG_TYPE_NAMES = {
    "INT": "int4",
    "BIGINT": "int8",
    "SMALLINT": "int2",
    "BOOLEAN": "bool",
    "DOUBLE": "float8",
    "FLOAT": "float4",
    "DECIMAL": "numeric",
    "TEXT": "text",
    "VARCHAR": "varchar",
    "CHAR": "bpchar",
    "JSON": "json",
    "JSONB": "jsonb",
    "VARBINARY": "bytea",
}
_FUNC_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(\(|$)")


def pg_name(node: exp.Expr) -> str | None:
    """The output column name Postgres gives ``node`` (None for ``?column?``).

    >>> import sqlglot
    >>> [pg_name(e) for e in sqlglot.parse_one(
    ...     "SELECT count(*), a.b, x + 1, sum(y) FILTER (WHERE y > 0), c::int, 1::int, true, "
    ...     "CASE WHEN a THEN 1 END, (SELECT max(z) FROM t)", read="postgres").selects]
    ['count', 'b', None, 'sum', 'c', 'int4', 'bool', 'case', 'max']
    """
    if isinstance(node, exp.Alias):
        return node.alias
    if isinstance(node, (exp.Column, exp.Dot)):
        return node.name if not isinstance(node.this, exp.Star) else None
    if isinstance(node, (exp.Paren, exp.Filter, exp.Window, exp.WithinGroup, exp.Bracket)):
        return pg_name(node.this)
    if isinstance(node, (exp.Cast, exp.TryCast)):
        to = node.to.this.name
        return pg_name(node.this) or _PG_TYPE_NAMES.get(to, to.lower())
    if isinstance(node, exp.Subquery):
        selects = node.this.selects if isinstance(node.this, exp.Query) else []
        return pg_name(selects[0]) if selects else None
    simple = {
        exp.Boolean: "bool",
        exp.Interval: "interval",
        exp.Case: "case",
        exp.Exists: "exists",
        exp.Array: "array",
        exp.Coalesce: "coalesce",
        exp.Nullif: "nullif",
        exp.Greatest: "greatest",
        exp.Least: "least",
    }
    if type(node) in simple:
        return simple[type(node)]
    if isinstance(node, exp.Anonymous):
        return node.name.lower()
    if isinstance(node, exp.Func):
        match = _FUNC_NAME.match(node.sql("postgres"))
        return match.group(1).lower() if match else None
    return None


def _mark_names(query: exp.Query) -> None:
    for select in query.selects:
        if not select.is_star:
            select.meta["pg_name"] = pg_name(select) or "?column?"


def _output_names(query: exp.Query) -> list[str]:
    names = []
    for select in query.selects:
        if isinstance(select, exp.Star) or select.is_star:
            raise located(FeatureNotSupported, "* cannot be expanded here", select)
        inner = select.this if isinstance(select, exp.Alias) else select
        marked = select.meta.pop("pg_name", None) or inner.meta.pop("pg_name", None)
        names.append(marked or select.alias_or_name)
    return names


def _rename_outputs(query: exp.Query, names: list[str]) -> None:
    """Alias the outputs with ``names``; ORDER BY references to the old aliases (qualify turns
    ``ORDER BY 2`` into ``ORDER BY "_col_1"``) follow, by name when unique, else by position."""
    renamed: dict[str, exp.Expr] = {}
    for i, (select, name) in enumerate(zip(list(query.selects), names, strict=True)):
        old = select.alias_or_name
        if old != name:
            unique = names.count(name) == 1
            renamed[old] = exp.column(name, quoted=True) if unique else exp.Literal.number(i + 1)
        alias = exp.to_identifier(name, quoted=True)
        if isinstance(select, exp.Alias):
            select.set("alias", alias)
        else:
            select.replace(exp.Alias(this=select.copy(), alias=alias))
    order = query.args.get("order")
    for ordered in order.expressions if order and renamed else []:
        ref = ordered.this
        if isinstance(ref, exp.Column) and not ref.table and ref.name in renamed:
            ref.replace(renamed[ref.name].copy())


def _canonical(dtype: exp.DataType) -> str:
    """normalize_type, plus DuckDB's spelling of a plain TIMESTAMP (TIMESTAMPNTZ in sqlglot)."""
    if dtype.this == exp.DataType.Type.TIMESTAMPNTZ:
        return "timestamp"
    return normalize_type(dtype)


def _branches(query: exp.Expr) -> list[exp.Query]:
    """The SELECTs of a set operation (the query itself otherwise)."""
    if isinstance(query, exp.SetOperation):
        return _branches(query.left) + _branches(query.right)
    return _branches(query.this) if isinstance(query, exp.Subquery) else [query]


def _branch_types(select_list: list[exp.Expr], names: list[str]) -> list[str | None]:
    """Canonical types of one SELECT's outputs: None when unknown, "null" for a bare NULL."""
    types: list[str | None] = []
    for select, name in zip(select_list, names, strict=True):
        dtype = select.type or exp.DataType.build("unknown")
        if dtype.this == exp.DataType.Type.NULL or isinstance(select.unalias(), exp.Null):
            types.append("null")
            continue
        try:
            types.append(_canonical(dtype))
        except FeatureNotSupported:
            if dtype.this != exp.DataType.Type.UNKNOWN:
                raise located(
                    FeatureNotSupported,
                    f'type {dtype.sql("postgres")} of column "{name}" is not supported',
                    select,
                ) from None
            types.append(None)
    return types


def _types(
    query: exp.Query, names: list[str], schema: MappingSchema, catalog: _Catalog
) -> list[str]:
    """Output types by sqlglot's inference (DuckDB's rules); DuckDB itself settles the columns
    sqlglot cannot type and those whose set-operation branches disagree."""
    annotate_types(query, schema=schema, dialect="duckdb")
    per_branch = [_branch_types(b.selects, names) for b in _branches(query)]
    types: list[str | None] = []
    for column in zip(*per_branch, strict=True):
        known = {t for t in column if t != "null"}
        if not known:
            types.append("varchar")  # Postgres types a bare NULL as text
        else:
            types.append(known.pop() if len(known) == 1 and None not in known else None)
    if None in types:
        exact = _duckdb_types(query, catalog)
        types = [t if t is not None else exact[i] for i, t in enumerate(types)]
    return types  # type: ignore[return-value]


def _duckdb_types(query: exp.Query, catalog: _Catalog) -> list[str]:
    """Ask DuckDB (over empty tables) for the output types sqlglot could not infer."""
    import duckdb

    con = duckdb.connect()
    try:
        for table, cols in catalog.schema.items():
            defs = ", ".join(f'"{c}" {duckdb_type(t)}' for c, t in cols.items())
            con.execute(f'CREATE TABLE "{table}" ({defs})')
        try:
            # Neutral output names: DuckDB resolves e.g. CURRENT_DATE to an output column of
            # that name (lateral aliases).
            probe = query.copy()
            _rename_outputs(probe, [f"_c{i}" for i in range(len(probe.selects))])
            types = con.sql(probe.sql("duckdb")).types
        except duckdb.Error as e:
            message = str(e).splitlines()[0]
            state = "42883" if "function" in message.lower() else "42804"
            raise SqlStreamError(message, sqlstate=state) from None
        return [_canonical(exp.DataType.build(str(t), dialect="duckdb")) for t in types]
    finally:
        con.close()


# -- entry point ----------------------------------------------------------------------------


def bind_query(query: exp.Query, resolve: Resolver) -> BoundQuery:
    """Resolve, qualify and type ``query``; ``resolve(name)`` gives a relation's columns or
    None. The input AST is not modified.

    Errors: UndefinedTable (42P01), UndefinedColumn (42703), ambiguous column (42702), each with
    the line/col/position of the name when the parser recorded it.
    """
    q = normalize_identifiers(query.copy(), dialect=_DIALECT)
    catalog = _Catalog(resolve)
    _bind_relations(q, catalog)
    _mark_names(q)
    schema = MappingSchema(catalog.schema, dialect=_DIALECT, normalize=False)
    try:
        q = qualify(q, schema=schema, dialect=_DIALECT, validate_qualify_columns=False)
    except OptimizeError as e:
        raise _unknown_column(e, q) from None
    _check_columns(q, catalog)
    names = _output_names(q)
    _rename_outputs(q, names)
    types = _types(q, names, schema, catalog)
    for table in list(q.find_all(exp.Table)):
        if table.name in catalog.windows:
            table.set("this", catalog.windows[table.name].copy())
    return BoundQuery(
        q, [Column(n, t) for n, t in zip(names, types, strict=True)], catalog.relations
    )
