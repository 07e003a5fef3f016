"""Catalog and system queries: ``pg_catalog``, ``information_schema``, the ``sqlstream``
system schema, and server functions such as ``version()``.

These never reach the engine. They run on their own thread, against the catalog database
(read-only) and a private DuckDB database that mirrors the engine's relations as empty
tables in schema ``public`` (so DuckDB's own ``information_schema`` and ``pg_catalog``
describe them to generic tools) and holds the system tables in schema ``sqlstream``,
refreshed from the catalog and the engine's metrics when a query reads them:

=========================  ==================================================================
``sqlstream.objects``      every source, table, materialized view and sink (secrets hidden)
``sqlstream.jobs``         every running view/sink: rows in and out, state rows, watermark
``sqlstream.checkpoints``  committed checkpoints: epoch, time, duration, rows, bytes
``sqlstream.source_offsets`` per reader and partition: committed offset, watermark and lag
``sqlstream.sinks``        rows delivered, rows pending, last committed epoch per sink
``sqlstream.dead_letters`` records a source could not decode, with the reason
=========================  ==================================================================

psql's meta-commands are answered by :mod:`sqlstream.server.psql`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import datetime as dt
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import sqlglot
from sqlglot import exp

from sqlstream.errors import CatalogError
from sqlstream.server import psql
from sqlstream.server.catalog import CatalogObject, read_objects, redact_sql
from sqlstream.server.errors import from_exception
from sqlstream.server.outcome import Outcome
from sqlstream.server.sqltext import code_only, first_words
from sqlstream.types import Column, duckdb_type, from_duckdb

log = logging.getLogger("sqlstream.server")

_SYSTEM_REF = re.compile(
    r"\b(pg_catalog|information_schema|sqlstream)\s*\.|\bpg_[a-z_]+\b|\bhas_\w+_privilege\b"
    r"|\b(current_setting|set_config|version|current_database|current_schemas?|current_user|"
    r"session_user|obj_description|col_description|format_type)\b",
    re.I,
)
# names the catalog (not just a server function such as pg_backend_pid())
_CATALOG_REF = re.compile(r"\b(pg_catalog|information_schema|sqlstream)\b|\bpg_\w+\b(?!\s*\()", re.I)
_SYSTEM_TABLE = re.compile(r"\bsqlstream\s*\.\s*\"?(\w+)", re.I)
_FROM = re.compile(r"\bfrom\b", re.I)

SYSTEM_TABLES = ("objects", "jobs", "checkpoints", "source_offsets", "sinks", "dead_letters")


@dataclass
class SessionContext:
    """What server functions need from the session that asks."""

    user: str
    database: str
    pid: int
    params: dict[str, str] = field(default_factory=dict)


def is_system_query(sql: str) -> bool:
    """True for a query that reads the catalog or the server rather than user relations:
    it names a system schema or function, or reads no relation at all (``SELECT 1``).

    >>> is_system_query("SELECT * FROM pg_catalog.pg_class"), is_system_query("SELECT 1")
    (True, True)
    >>> is_system_query("SELECT count(*) FROM orders_per_minute"), is_system_query("SHOW JOBS")
    (False, False)
    """
    if first_words(sql, 1) not in (["SELECT"], ["WITH"], ["VALUES"], ["TABLE"]):
        return False
    code = code_only(sql)
    return bool(_SYSTEM_REF.search(code)) or not _FROM.search(code) and first_words(sql, 1) != ["TABLE"]


class Introspection:
    """Runs catalog queries on a dedicated thread (its DuckDB and psycopg connections are
    used by that thread only)."""

    def __init__(
        self,
        catalog_dsn: str,
        *,
        version: str,
        engine_metrics: Callable[[], dict[str, Any] | None],
        started_at: dt.datetime | None = None,
    ) -> None:
        self.catalog_dsn = catalog_dsn
        self.version = version
        self.engine_metrics = engine_metrics
        self.started_at = started_at or dt.datetime.now(dt.UTC)
        self._executor = cf.ThreadPoolExecutor(1, thread_name_prefix="sqlstream-introspection")
        self._conn: psycopg.Connection | None = None
        self._duck: duckdb.DuckDBPyConnection | None = None
        self._shadow: dict[str, str] = {}  # relation name -> DDL of its shadow table

    # -- asyncio side -------------------------------------------------------------------------

    async def run(self, sql: str, ctx: SessionContext) -> Outcome:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.answer, sql, ctx)

    async def call(self, fn: Callable[[Introspection], Any]) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._conn is not None:
            self._conn.close()
        if self._duck is not None:
            self._duck.close()

    # -- the thread -----------------------------------------------------------------------------

    def catalog(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self.catalog_dsn, autocommit=True, connect_timeout=10)
            except psycopg.OperationalError as e:
                raise CatalogError(f"catalog database unavailable: {e}") from e
        return self._conn

    def _query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        for attempt in (1, 2):
            try:
                return self.catalog().execute(sql, params).fetchall()
            except psycopg.errors.UndefinedTable:
                return []  # the catalog is not migrated yet
            except psycopg.OperationalError as e:
                self._conn = None  # reconnect once: the catalog may have restarted
                if attempt == 2:
                    raise CatalogError(f"catalog database unavailable: {e}") from e
        return []

    def objects(self) -> list[CatalogObject]:
        for attempt in (1, 2):
            try:
                return read_objects(self.catalog())
            except psycopg.OperationalError as e:
                self._conn = None
                if attempt == 2:
                    raise CatalogError(f"catalog database unavailable: {e}") from e
        return []

    def duck(self) -> duckdb.DuckDBPyConnection:
        if self._duck is None:
            self._duck = duckdb.connect()
            self._duck.execute("CREATE SCHEMA public; CREATE SCHEMA sqlstream; SET search_path = 'public'")
        return self._duck

    def answer(self, sql: str, ctx: SessionContext) -> Outcome:
        code = code_only(sql)
        if not _CATALOG_REF.search(code):
            # SELECT 1, SELECT version(): nothing to read from the catalog.
            return self._duckdb_query(sql, ctx, None)
        objects = self.objects()
        answer = psql.answer(sql, objects, psql.Context(ctx.user, ctx.database))
        if answer is not None:
            return answer
        return self._duckdb_query(sql, ctx, objects)

    def _duckdb_query(
        self, sql: str, ctx: SessionContext, objects: list[CatalogObject] | None
    ) -> Outcome:
        text = rewrite_for_duckdb(sql, ctx, self.version, self.started_at)
        con = self.duck()
        if objects is not None:
            self._sync_shadow(con, objects)
            for name in {m.lower() for m in _SYSTEM_TABLE.findall(code_only(sql))}:
                if name in SYSTEM_TABLES:
                    self._refresh(con, name, objects)
        try:
            rel = con.sql(text)
        except duckdb.Error as e:
            raise from_exception(e) from None
        if rel is None:
            return Outcome("SELECT 0", [], [])
        columns = [Column(n, _canonical(str(t))) for n, t in zip(rel.columns, rel.types, strict=True)]
        try:
            rows = rel.fetchall()
        except duckdb.Error as e:
            raise from_exception(e) from None
        return Outcome(f"SELECT {len(rows)}", columns, rows)

    def _sync_shadow(self, con: duckdb.DuckDBPyConnection, objects: list[CatalogObject]) -> None:
        """Keep one empty table per relation in schema public, so DuckDB's own
        information_schema and pg_catalog describe the engine's relations."""
        wanted: dict[str, str] = {}
        for o in objects:
            if o.relkind is None:
                continue
            cols = ", ".join(f'"{_q(c.name)}" {_duck_type(c.type)}' for c in o.columns)
            wanted[o.name] = f'CREATE TABLE public."{_q(o.name)}" ({cols or "_ INTEGER"})'
        for name, ddl in list(self._shadow.items()):
            if wanted.get(name) != ddl:
                con.execute(f'DROP TABLE IF EXISTS public."{_q(name)}"')
                del self._shadow[name]
        for name, ddl in wanted.items():
            if name not in self._shadow:
                con.execute(ddl)
                self._shadow[name] = ddl

    # -- system tables ----------------------------------------------------------------------------

    def _refresh(self, con: duckdb.DuckDBPyConnection, name: str, objects: list[CatalogObject]) -> None:
        schema, rows = getattr(self, f"_rows_{name}")(objects)
        arrays = {c: [r[i] for r in rows] for i, (c, _) in enumerate(schema)}
        table = pa.table({c: pa.array(arrays[c], type=t) for c, t in schema})
        con.register("__sys", table)
        try:
            con.execute(f"CREATE OR REPLACE TABLE sqlstream.{name} AS SELECT * FROM __sys")
        finally:
            con.unregister("__sys")

    def _rows_objects(self, objects: list[CatalogObject]) -> tuple[list[tuple[str, pa.DataType]], list[tuple]]:
        schema = [("name", pa.string()), ("kind", pa.string()), ("connector", pa.string()),
                  ("columns", pa.string()), ("depends_on", pa.list_(pa.string())),
                  ("definition", pa.string()), ("created_at", pa.timestamp("us", tz="UTC"))]
        rows = [
            (o.name, o.kind, o.connector or None,
             ", ".join(f"{c.name} {c.type}" for c in o.columns), o.depends_on,
             redact_sql(o.sql), o.created_at)
            for o in objects
        ]
        return schema, rows

    def _rows_jobs(self, objects: list[CatalogObject]) -> tuple[list[tuple[str, pa.DataType]], list[tuple]]:
        schema = [("name", pa.string()), ("kind", pa.string()), ("rows_in", pa.int64()),
                  ("rows_out", pa.int64()), ("state_rows", pa.int64()),
                  ("late_rows", pa.int64()), ("watermark", pa.timestamp("us"))]
        m = self.engine_metrics() or {}
        readers: dict[str, list[dict[str, Any]]] = {}
        for r in m.get("readers", []):
            readers.setdefault(r["object"], []).append(r)
        rows = []
        for p in m.get("pipelines", []):
            rs = readers.get(p["object"], [])
            marks = [r["watermark_us"] for r in rs if r.get("watermark_us") is not None]
            rows.append((
                p["object"], p["kind"], sum(r["rows"] for r in rs), p["rows_out"],
                sum((p.get("state_rows") or {}).values()), sum(r["late_rows"] for r in rs),
                _us_to_ts(min(marks)) if marks else None,
            ))
        return schema, rows

    def _rows_checkpoints(self, objects: list[CatalogObject]) -> tuple[list[tuple[str, pa.DataType]], list[tuple]]:
        schema = [("epoch", pa.int64()), ("committed_at", pa.timestamp("us", tz="UTC")),
                  ("duration_ms", pa.float64()), ("rows_in", pa.int64()), ("rows_out", pa.int64()),
                  ("state_rows", pa.int64()), ("bytes", pa.int64())]
        rows = self._query(
            "SELECT epoch, committed_at, duration_ms, rows_in, rows_out, state_rows, bytes "
            "FROM sqlstream.checkpoints ORDER BY epoch DESC LIMIT 10000"
        )
        return schema, rows

    def _rows_source_offsets(self, objects: list[CatalogObject]) -> tuple[list[tuple[str, pa.DataType]], list[tuple]]:
        schema = [("object", pa.string()), ("source", pa.string()), ("partition", pa.string()),
                  ("offset", pa.string()), ("epoch", pa.int64()), ("watermark", pa.timestamp("us")),
                  ("rows_read", pa.int64()), ("late_rows", pa.int64()),
                  ("lag_seconds", pa.float64())]
        committed = self._query(
            'SELECT o.object, o.source, o.partition, o."offset"::text, o.epoch, w.watermark '
            "FROM sqlstream.source_offsets o LEFT JOIN sqlstream.watermarks w "
            "ON w.object = o.object AND w.source = o.source ORDER BY 1, 2, 3"
        )
        live = {(r["object"], r["source"]): r for r in (self.engine_metrics() or {}).get("readers", [])}
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        rows = []
        for obj, src, part, offset, epoch, mark in committed:
            r = live.get((obj, src), {})
            mark_now = _us_to_ts(r["watermark_us"]) if r.get("watermark_us") is not None else mark
            if isinstance(mark_now, dt.datetime) and mark_now.year >= 9999:
                mark_now = None  # a bounded source that has ended: its watermark is infinite
            lag = (now - mark_now).total_seconds() if isinstance(mark_now, dt.datetime) else None
            rows.append((obj, src, part, offset, epoch, mark_now if isinstance(mark_now, dt.datetime) else None,
                         r.get("rows"), r.get("late_rows"), lag))
        return schema, rows

    def _rows_sinks(self, objects: list[CatalogObject]) -> tuple[list[tuple[str, pa.DataType]], list[tuple]]:
        schema = [("name", pa.string()), ("connector", pa.string()), ("rows", pa.int64()),
                  ("pending_rows", pa.int64()), ("last_epoch", pa.int64()),
                  ("committed_rows", pa.int64())]
        commits = {n: (e, r) for n, e, r in self._query(
            "SELECT sink, max(epoch), sum(rows)::bigint FROM sqlstream.sink_commits GROUP BY sink"
        )}
        live = {s["sink"]: s for s in (self.engine_metrics() or {}).get("sinks", [])}
        rows = []
        for o in objects:
            if o.kind != "sink":
                continue
            s = live.get(o.name, {})
            e, r = commits.get(o.name, (None, None))
            rows.append((o.name, o.connector or None, s.get("rows"), s.get("pending"), e, r))
        return schema, rows

    def _rows_dead_letters(self, objects: list[CatalogObject]) -> tuple[list[tuple[str, pa.DataType]], list[tuple]]:
        schema = [("id", pa.int64()), ("source", pa.string()), ("partition", pa.string()),
                  ("offset", pa.string()), ("raw", pa.binary()), ("reason", pa.string()),
                  ("epoch", pa.int64()), ("created_at", pa.timestamp("us", tz="UTC"))]
        rows = self._query(
            'SELECT id, source, partition, "offset"::text, raw, reason, epoch, created_at '
            "FROM sqlstream.dead_letters ORDER BY id DESC LIMIT 100000"
        )
        return schema, [(i, s, p, o, bytes(r) if r is not None else None, re_, e, c)
                        for i, s, p, o, r, re_, e, c in rows]

    def dead_letter_counts(self) -> dict[str, int]:
        """Committed dead letters per source (for /metrics)."""
        return {s: int(n) for s, n in self._query(
            "SELECT source, count(*) FROM sqlstream.dead_letters GROUP BY source"
        )}


def _q(name: str) -> str:
    return name.replace('"', '""')


def _duck_type(type_: str) -> str:
    try:
        return duckdb_type(type_)
    except (KeyError, ValueError):
        return "VARCHAR"


def _canonical(duck_type: str) -> str:
    try:
        return from_duckdb(duck_type)
    except Exception:  # noqa: BLE001 - DuckDB-only types (STRUCT, MAP, ...) travel as text
        return "varchar"


def _us_to_ts(us: int) -> dt.datetime | None:
    try:
        return dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=us)
    except OverflowError:
        return dt.datetime.max


# -- server functions ------------------------------------------------------------------------------


def rewrite_for_duckdb(sql: str, ctx: SessionContext, version: str, started_at: dt.datetime) -> str:
    """The query in DuckDB's dialect, with Postgres server functions answered for this
    server (``version()``, ``current_database()``, ``current_setting('x')``, ...).

    >>> ctx = SessionContext("alice", "sqlstream", 7, {"application_name": "psql"})
    >>> print(rewrite_for_duckdb("SELECT version(), current_user, current_setting('application_name')",
    ...                          ctx, "PostgreSQL 15.0", dt.datetime(2024, 1, 1)))
    SELECT 'PostgreSQL 15.0' AS "version", 'alice' AS "current_user", 'psql' AS "current_setting"
    """
    try:
        tree = sqlglot.parse_one(sql, read="postgres")
    except sqlglot.errors.ParseError:
        return sql  # let DuckDB try it as written

    def literal(value: Any) -> exp.Expression:
        if value is None:
            return exp.Null()
        if isinstance(value, bool):
            return exp.Boolean(this=value)
        if isinstance(value, int):
            return exp.Literal.number(value)
        return exp.Literal.string(str(value))

    def fn(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func) and node.this.name.lower() == "pg_catalog":
            return fn(node.expression)
        if isinstance(node, exp.CurrentVersion):
            return literal(version)
        if isinstance(node, exp.CurrentDatabase):
            return literal(ctx.database)
        if isinstance(node, exp.CurrentSchema):
            return literal("public")
        if isinstance(node, exp.CurrentUser | exp.SessionUser):
            return literal(ctx.user)
        name = node.name.lower() if isinstance(node, exp.Anonymous) else ""
        args = node.expressions if isinstance(node, exp.Anonymous) else []
        if name == "version":
            return literal(version)
        if name in ("current_setting", "set_config") and args and isinstance(args[0], exp.Literal):
            key = args[0].name.lower()
            if name == "set_config" and len(args) > 1 and isinstance(args[1], exp.Literal):
                return literal(args[1].name)
            return literal(ctx.params.get(key))
        constant = {
            "pg_backend_pid": ctx.pid, "pg_is_in_recovery": False, "pg_advisory_unlock_all": None,
            "inet_server_addr": None, "inet_client_addr": None, "txid_current": 1,
            "pg_postmaster_start_time": started_at.isoformat(sep=" "),
            "obj_description": None, "col_description": None, "shobj_description": None,
            "pg_get_userbyid": ctx.user, "pg_encoding_to_char": "UTF8", "current_schemas": None,
        }
        if name in constant:
            return literal(constant[name])
        if name.startswith("has_") and name.endswith("_privilege"):
            return literal(True)
        return node

    if isinstance(tree, exp.Select):
        # Keep Postgres's output names (a function's column is named after it).
        for i, item in enumerate(list(tree.expressions)):
            name = _output_name(item)
            if name and fn(item.copy()) is not item and not isinstance(item, exp.Alias):
                tree.expressions[i] = exp.alias_(item, name, quoted=True)
    tree = tree.transform(fn)
    return tree.sql(dialect="duckdb")


def _output_name(item: exp.Expression) -> str | None:
    if isinstance(item, exp.Dot):
        item = item.expression
    names = {exp.CurrentVersion: "version", exp.CurrentDatabase: "current_database",
             exp.CurrentSchema: "current_schema", exp.CurrentUser: "current_user",
             exp.SessionUser: "session_user"}
    for cls, name in names.items():
        if isinstance(item, cls):
            return name
    return item.name.lower() if isinstance(item, exp.Anonymous) else None
